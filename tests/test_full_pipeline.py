"""Every stage on the tiny model: train, evaluate, gap closed, decision, plots, model card."""

import json
import re

import pytest
from sentence_transformers import SentenceTransformer

from domain_embed.context import RunContext
from domain_embed.pipeline import run_pipeline


@pytest.fixture
def overrides(tiny_beir, tiny_model, tmp_path):
    return ["+domain=beir", f"data.path={tiny_beir}", f"model.path={tiny_model}", f"cache_dir={tmp_path / 'cache'}",
            "training.batch_size=4", "training.epochs=2", "training.eval_steps=2", "training.save_steps=2",
            "training.learning_rate=1e-3", "training.logging_steps=1"]


def test_full_pipeline_writes_model_report_and_plots(make_config, overrides, tmp_path, tiny_beir):
    run = tmp_path / "run"
    cfg = make_config(run, *overrides, "training.matryoshka_dims=[16]", f"eval.ood.path={tiny_beir}")
    report = run_pipeline(RunContext(cfg, run))
    assert report["run"]["ran_now"] == ["audit", "baseline", "mine", "triplets", "finetune", "evaluate", "reranker",
                                        "rerank"]
    # base once, the round-1 model once (round 2's mining), the final model once unless round 2 did not beat round 1
    # on dev (its vectors are then round 2's mining's); the OOD corpus is not ours
    assert report["cost"]["corpus_encodes"] == (2 if report["training"]["kept_round"] == 1 else 3)
    assert set(report["metrics"]) == {"baseline", "bm25", "tuned", "hybrid_base", "hybrid_tuned", "rerank(bm25)",
                                      "rerank(tuned)", "rerank(hybrid_tuned)"}
    for name in ("hybrid_base", "hybrid_tuned"):  # scored like every other system, fused as chosen on dev
        lo, hi = report["ci95"][name]["ndcg@10"]
        assert lo <= report["metrics"][name]["ndcg@10"] <= hi
        how = report["hybrid"][name]
        assert how["dev_split"] == "dev" and how["dev_value"] == max(g["value"] for g in how["grid"])
        assert (how["method"], how["alpha"]) in {(g["method"], g["alpha"]) for g in how["grid"]}
    for pair in ("hybrid_base-vs-baseline", "hybrid_base-vs-bm25", "hybrid_tuned-vs-tuned", "hybrid_tuned-vs-bm25",
                 "hybrid_tuned-vs-baseline", "hybrid_tuned-vs-hybrid_base", "hybrid_base-vs-tuned"):
        c = report["comparisons"][pair]["ndcg@10"]
        a, b = pair.split("-vs-")
        assert c["delta"] == pytest.approx(report["metrics"][a]["ndcg@10"] - report["metrics"][b]["ndcg@10"], abs=1e-9)
    per_query = json.loads((run / "evaluate" / "per_query.json").read_text())
    assert "hybrid_tuned" in per_query["systems"] and (run / "evaluate" / "ranking_hybrid_tuned.npz").exists()
    assert (run / "baseline" / "ranking_hybrid_base.npz").exists()
    # hybrid_base is scored once, by the baseline stage: the tuned systems are compared with its per-query values
    ev = json.loads((run / "evaluate" / "metrics.json").read_text())
    base = json.loads((run / "baseline" / "per_query.json").read_text())
    assert "hybrid_base" not in ev["systems"] and not (run / "evaluate" / "ranking_hybrid_base.npz").exists()
    assert base["qids"] == per_query["qids"]
    values = per_query["systems"]["hybrid_tuned"]["ndcg@10"], base["systems"]["hybrid_base"]["ndcg@10"]
    assert ev["comparisons"]["hybrid_tuned-vs-hybrid_base"]["ndcg@10"]["delta"] == pytest.approx(
        (sum(values[0]) - sum(values[1])) / len(values[0]), abs=1e-9)
    # and the dev split, where the recommendation is chosen, is written the same way
    dev = json.loads((run / "evaluate" / "dev" / "metrics.json").read_text())
    assert dev["split"] == "dev" and set(dev["systems"]) == {"baseline", "tuned", "bm25", "hybrid_tuned"}
    assert set(ev["comparisons"]) == set(dev["comparisons"]) and (run / "evaluate" / "dev" /
                                                                   "ranking_hybrid_tuned.npz").exists()
    gap = report["gap_closed"]["ndcg@10"]
    assert gap["delta"] == pytest.approx(report["metrics"]["tuned"]["ndcg@10"] - report["metrics"]["baseline"]
                                         ["ndcg@10"], abs=1e-9)
    assert gap["ci95"][0] <= gap["delta"] <= gap["ci95"][1] and 0 < gap["p_value"] <= 1
    # training.matryoshka_dims=[16]: the model's own 32 is trained and scored as well
    assert set(report["mrl"]) == {"32", "16"} and "delta" in report["ood"] and "not_run" not in report
    assert report["metrics"]["hybrid_base"] == json.loads((run / "baseline" / "metrics.json").read_text())[
        "systems"]["hybrid_base"]  # one hybrid_base, the baseline stage's
    # chosen on dev, with the decision; then reported once on test
    rec = report["recommendation"]
    pairs = {(e["a"], e["b"]) for e in rec["compared"]}
    assert rec["system"] in report["metrics"] and rec["split"] == "dev" and rec["decision"]["reason"]
    assert rec["decision"]["adopt"] == (rec["system"] in ("tuned", "hybrid_tuned", "rerank(tuned)",
                                                          "rerank(hybrid_tuned)"))
    assert rec["untuned"]["system"] in ("bm25", "baseline", "hybrid_base", "rerank(bm25)", "rerank(baseline)",
                                        "rerank(hybrid_base)")
    assert rec["test"]["mean"] == report["metrics"][rec["system"]]["recall@10"] and "agrees" in rec["test"]
    assert set(report["dev"]["metrics"]) == set(report["metrics"]) and rec["tuned_vs_bm25"]
    assert {("bm25", "baseline"), ("hybrid_tuned", "tuned")} <= pairs  # each question's own comparisons
    assert report["training"]["global_step"] > 0 and report["training"]["best_dev_ndcg@10"] is not None
    for name in ("before_after", "recall_at_k", "mrl"):
        assert (run / "plots" / f"{name}.png").stat().st_size > 1000
    assert (run / "finetune" / "training.png").exists()
    md = (run / "report.md").read_text()
    assert "Gap closed by fine-tuning" in md and "| tuned |" in md
    assert "## Decision\n\nRecommended: `" in md and "It decides nothing alone" in md
    assert md.index("**Recommendation: ") < md.index("## Retrieval quality")
    assert re.search(r"best dev nDCG@10 \d\.\d{4} \(", md)  # rounded, not 0.7980940976802945
    assert (f"{cfg.mining.num_negatives} negatives mined per pair" in md
            and f"{cfg.training.num_negatives} used per training row" in md)
    model = SentenceTransformer(str(run / "finetune" / "model"), device="cpu")
    assert model.encode(["capital requirements"]).shape == (1, 32)
    card = (run / "finetune" / "model" / "README.md").read_text()
    assert "| tuned |" in card and "| baseline |" in card and '"loss": "mnrl"' in card
    assert not (run / "checkpoints").exists() or not any((run / "checkpoints").iterdir())  # gone once published


def test_checkpoints_kept_on_request_and_dev_queries_capped(make_config, overrides, tmp_path):
    run = tmp_path / "run"
    cfg = make_config(run, *overrides, "stages=[finetune]", "training.keep_checkpoints=true",
                      "training.dev_max_queries=2")
    report = run_pipeline(RunContext(cfg, run))
    assert report["training"]["dev_queries"] == 2
    assert list((run / "checkpoints").glob("*/checkpoints/checkpoint-*"))
    log = json.loads((run / "finetune" / "train_log.json").read_text())
    assert any("loss" in r for r in log["log_history"])


def test_tuned_model_is_cached_apart_from_the_base(make_config, overrides, tmp_path):
    run = tmp_path / "run"
    report = run_pipeline(RunContext(make_config(run, *overrides), run))
    assert report["metrics"]["tuned"] != report["metrics"]["baseline"]
    assert set(report["not_run"]) == {"mrl", "ood"} and "mrl" not in report and "ood" not in report
    md = (run / "report.md").read_text()
    assert "## Matryoshka dimensions\n\nNot run: `training.matryoshka_dims` is empty" in md
    assert "## Forgetting check (another domain)\n\nNot run: `eval.ood.path` is not set" in md
    again = run_pipeline(RunContext(make_config(run, *overrides), run))
    assert again["run"]["ran_now"] == [] and again["metrics"] == report["metrics"]
