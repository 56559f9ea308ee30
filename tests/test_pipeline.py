import json

import pytest

from domain_embed.context import RunContext
from domain_embed.errors import ConfigError, TruncationError
from domain_embed.pipeline import plan, run_pipeline


@pytest.fixture
def overrides(tiny_beir, tiny_model, tmp_path):
    return ["+domain=beir", f"data.path={tiny_beir}", f"model.path={tiny_model}", "eval.batch_size=16",
            f"cache_dir={tmp_path / 'cache'}", "stages=[audit,baseline]"]


def _run(make_config, run_dir, *overrides):
    run_dir = run_dir / "run"
    return run_pipeline(RunContext(make_config(run_dir, *overrides), run_dir))


def test_audit_and_baseline_write_the_report(make_config, overrides, tmp_path):
    report = _run(make_config, tmp_path, *overrides)
    assert set(report["metrics"]) == {"baseline", "bm25", "hybrid_base"}
    for system in ("baseline", "bm25", "hybrid_base"):
        for metric in ("ndcg@10", "recall@10", "mrr@10", "recall@100", "map@10", "precision@1"):
            assert 0.0 <= report["metrics"][system][metric] <= 1.0
        lo, hi = report["ci95"][system]["ndcg@10"]
        assert lo <= report["metrics"][system]["ndcg@10"] <= hi
    # the synthetic queries share rare words with their positive: BM25 must find them
    assert report["metrics"]["bm25"]["recall@10"] > 0.9
    assert report["cost"]["corpus_encodes"] == 1
    assert report["eval"]["n_queries"] == 10 and report["eval"]["split"] == "test"
    audit = report["audit"]
    assert audit["max_seq_length"] == 64 and audit["corpus"]["over_limit"] == 1
    assert audit["chunking"]["documents_split"] == 1 and audit["chunking"]["windows_over_limit"] == 0
    assert audit["worst_offenders"][0]["id"] == "d7"
    on_disk = json.loads((tmp_path / "run" / "report.json").read_text())
    assert on_disk["metrics"] == report["metrics"]
    md = (tmp_path / "run" / "report.md").read_text()
    assert "| baseline |" in md and "| bm25 |" in md and "Token-length audit" in md
    # no tuned model: the recommendation weighs BM25 against the (random) base model, from the comparison stored
    # for the dev split, then reports BM25's test figures once
    rec, stored = report["recommendation"], report["dev"]["comparisons"]["bm25-vs-baseline"]["recall@10"]
    assert rec["system"] == "bm25" and rec["split"] == "dev" and rec["compared"][0] == {
        "a": "bm25", "b": "baseline", "metric": "recall@10", "delta": stored["delta"], "ci95": stored["ci95"],
        "p": stored["p_value"]}
    assert report["dev"]["metrics"]["bm25"] != report["metrics"]["bm25"]  # other queries
    assert (rec["test"]["split"], rec["test"]["mean"], rec["test"]["ci95"]) == (
        "test", report["metrics"]["bm25"]["recall@10"], report["ci95"]["bm25"]["recall@10"])
    assert rec["test"]["agrees"] == (rec["test"]["pick"] == "bm25")
    assert {(e["a"], e["b"]) for e in rec["compared"][1:]} == {("hybrid_base", "baseline"), ("hybrid_base", "bm25")}
    # the hybrid's fusion was chosen on dev (queries only: the corpus encode above stays 1), among RRF and the grid
    how = report["hybrid"]["hybrid_base"]
    assert how["dev_split"] == "dev" and how["dev_metric"] == "ndcg@10" and len(how["grid"]) == 10
    assert how["dev_value"] == max(g["value"] for g in how["grid"]) and how["method"] in ("rrf", "convex")
    assert "## Hybrid retrieval (BM25 + dense model)" in md and "| hybrid_base |" in md
    # every system is scored on dev too (where the recommendation is chosen), written as for the evaluated split
    for split, folder in (("test", tmp_path / "run" / "baseline"), ("dev", tmp_path / "run" / "baseline" / "dev")):
        metrics = json.loads((folder / "metrics.json").read_text())
        per_query = json.loads((folder / "per_query.json").read_text())
        assert metrics["split"] == split and set(metrics["systems"]) == {"baseline", "bm25", "hybrid_base"}
        assert {"bm25-vs-baseline", "hybrid_base-vs-baseline", "hybrid_base-vs-bm25"} == set(metrics["comparisons"])
        assert len(per_query["qids"]) == metrics["n_queries"] and set(per_query["systems"]) == set(metrics["systems"])
        assert all((folder / f"ranking_{s}.npz").exists() for s in metrics["systems"])
    assert not (tmp_path / "run" / "baseline" / "dev" / "dev").exists()
    assert md.splitlines()[2].startswith("**Recommendation: BM25** (`bm25`), chosen on the dev split. The best system "
                                         f"without fine-tuning is BM25 (`bm25`). {rec['reason'].capitalize()}. ")
    assert "bm25 on the test split, reported once: recall@10 " in md.split("## Decision")[1]


def test_rerun_skips_finished_stages_and_force_redoes_them(make_config, overrides, tmp_path):
    _run(make_config, tmp_path, *overrides)
    again = _run(make_config, tmp_path, *overrides)
    assert again["run"]["ran_now"] == [] and again["cost"]["corpus_encodes"] == 1
    changed = _run(make_config, tmp_path, *overrides, "eval.k_values=[1,3,10]")
    assert changed["run"]["ran_now"] == ["baseline"] and "ndcg@3" in changed["metrics"]["baseline"]
    forced = _run(make_config, tmp_path, *overrides, "eval.k_values=[1,3,10]", "force=true")
    assert forced["run"]["ran_now"] == ["audit", "baseline"]
    assert forced["cost"]["corpus_encodes"] == 0  # embeddings came from the cache


def test_a_run_directory_made_in_one_encode_dtype_is_not_reused_in_another(make_config, overrides, tmp_path):
    """CPU fp32 results must not pass for a GPU's bf16 ones (or back): the resolved dtype keys the stages."""
    _run(make_config, tmp_path, *overrides)
    bf16 = _run(make_config, tmp_path, *overrides, "model.encode_dtype=bf16")
    assert bf16["run"]["ran_now"] == ["baseline"] and bf16["cost"]["corpus_encodes"] == 1


def test_selecting_a_stage_runs_its_missing_upstream():
    assert plan(["baseline"]) == ["audit", "baseline"]
    with pytest.raises(ConfigError, match="unknown stage"):
        plan(["audit", "tune"])


def test_truncation_error_refuses_and_lists_offenders(make_config, overrides, tmp_path):
    with pytest.raises(TruncationError, match="d7"):
        _run(make_config, tmp_path, *overrides, "data.truncation=error")
    assert not (tmp_path / "run" / "audit").exists()


def test_truncation_warn_reports_what_is_lost(make_config, overrides, tmp_path):
    report = _run(make_config, tmp_path, *overrides, "data.truncation=warn")
    assert report["audit"]["truncated"]["documents"] == 1
    assert "1 documents" in report["audit"]["truncated"]["note"] and report["warnings"]
    assert "chunking" not in report["audit"]


def test_chunk_mode_scores_the_long_document_by_its_best_window(make_config, overrides, tmp_path):
    _run(make_config, tmp_path, *overrides, "eval.bm25.enabled=false")
    windows = json.loads((tmp_path / "run" / "audit" / "windows.json").read_text())
    assert len(windows["parents"]) > 60 and windows["parents"].count(7) > 1
    import numpy as np

    ranking = np.load(tmp_path / "run" / "baseline" / "ranking_baseline.npz")["indices"]
    assert all(len(set(row)) == len(row) for row in ranking.tolist())  # each document once


def test_budget_slices_keep_positives(make_config, overrides, tmp_path):
    report = _run(make_config, tmp_path, *overrides, "budget=smoke", "budget.max_queries=4",
                  "budget.max_corpus=20")
    assert report["data"]["splits"] == {"train": 4, "dev": 4, "test": 4}
    assert report["data"]["documents"] == 20 and report["run"]["budget"] == "smoke"


def test_queries_shared_between_splits_are_reported(make_config, overrides, tmp_path, tiny_beir):
    import shutil

    leaky = tmp_path / "leaky"
    shutil.copytree(tiny_beir, leaky)
    with (leaky / "qrels" / "test.tsv").open("a") as f:
        f.write("q1\td1\t1\n")  # q1 is a train query
    args = [a if not a.startswith("data.path") else f"data.path={leaky}" for a in overrides]
    report = _run(make_config, tmp_path, *args, "stages=[audit]")
    assert report["data"]["split_overlap"] == {"test&train": 1}
    assert any("more than one split" in w for w in report["warnings"])
