"""Stages `reranker` and `rerank` on the tiny set: a reranker trained in the run or given, every first stage reranked
at the depth chosen on dev, the best reranked system chosen on dev, and the report's systems, comparisons, plot and
cards."""

import json
import re
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from killhooks import cli, finish, kill_when
from sentence_transformers import CrossEncoder

from domain_embed.context import RunContext
from domain_embed.pipeline import run_pipeline
from domain_embed.retrieval.rerank import rerank
from domain_embed.rundir import read_json
from domain_embed.stages import rerank as rerank_stage

FIRSTS = ("bm25", "tuned", "hybrid_tuned")
RERANK = ["rerank.train_batch_size=4", "rerank.learning_rate=1e-3", "rerank.latency_queries=3", "rerank.max_length=64"]


def _compose(run: Path, *overrides: str):
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from domain_embed.hydra_setup import register_configs

    register_configs()
    with initialize_config_module("domain_embed.conf", version_base="1.3"):
        return OmegaConf.to_object(compose("config", overrides=[f"run_dir={run}", *overrides]))


def _run(run: Path, *overrides: str) -> dict:
    return run_pipeline(RunContext(_compose(run, *overrides), run))


@pytest.fixture(scope="module")
def upstream(tiny_beir, tiny_model, tmp_path_factory):
    """Every stage before `rerank`, once; each test reranks in a copy."""
    root = tmp_path_factory.mktemp("rerank-upstream")
    args = ["+domain=beir", f"data.path={tiny_beir}", f"model.path={tiny_model}", f"cache_dir={root / 'cache'}",
            "training.batch_size=4", "training.eval_steps=2", "training.save_steps=2", "mining.rounds=1",
            "training.learning_rate=1e-3"]
    _run(root / "run", *args, "stages=[evaluate]")
    return root / "run", args


def _copy(upstream, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(upstream[0], run, symlinks=True)
    return run


def _labelled(beir: Path) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for split in ("train", "dev", "test"):
        for line in list((beir / "qrels" / f"{split}.tsv").open())[1:]:
            q, d, _ = line.split("\t")
            out.setdefault(q, set()).add(d)
    return out


def test_trained_reranker_reranks_every_first_stage_at_its_dev_depth(upstream, tiny_beir, tmp_path):
    run = _copy(upstream, tmp_path)
    report = _run(run, *upstream[1], *RERANK)
    assert report["run"]["ran_now"] == ["reranker", "rerank"]  # the default stages end with them; nothing upstream
    out, trained = run / "rerank", run / "reranker"
    # trained on hybrid_tuned's own lists for train queries only, never with a labelled positive (any split) as a
    # negative
    log = json.loads((trained / "train_log.json").read_text())
    rows = log["rows"]
    from datasets import Dataset

    from domain_embed.stages import first_stage

    dataset = Dataset.load_from_disk(str(trained / "dataset"))
    labelled = _labelled(tiny_beir)
    assert rows["queries"] == len(dataset) == 10 and rows["negatives"] > 0 and log["lists_from"] == "hybrid_tuned"
    ctx = RunContext(_compose(run, *upstream[1], *RERANK), run)
    qids, texts, _ = ctx.data.split("train")
    ranked, _ = first_stage.rank(ctx, "hybrid_tuned", texts, 100)
    for qid, docs, labels in zip(dataset["query_id"], dataset["doc_ids"], dataset["labels"], strict=True):
        listed = {ctx.data.corpus_ids[d] for d in ranked[qids.index(qid)] if d >= 0}
        negatives = {d for d, y in zip(docs, labels, strict=True) if y == 0.0}
        assert negatives <= listed and not negatives & labelled[qid] and len(negatives) == 15
    # the dev check ran at least 4 times over hybrid_tuned's dev lists, and its best checkpoint was kept
    evals = [h["eval_dev_ndcg@10"] for h in log["log_history"] if "eval_dev_ndcg@10" in h]
    assert len(evals) >= 3 and log["best_dev_ndcg10"] == max(evals) and log["dev_queries"] == 10
    choice = json.loads((out / "choice.json").read_text())
    for first in FIRSTS:  # each first stage at its best (depth, weight) on dev, weight 0 (the first stage) included
        tried = {(g["depth"], g["weight"]): g["value"] for g in choice["grid"] if g["first_stage"] == first}
        assert set(tried) == {(0, 0.0)} | {(d, w) for d in (20, 50, 100) for w in (0.25, 0.5, 0.75, 1.0)}
        assert tried[(choice["depths"][first], choice["weights"][first])] == max(tried.values())
        assert tried[(0, 0.0)] == pytest.approx(report["dev"]["metrics"][first]["ndcg@10"])
    best = {f: max(g["value"] for g in choice["grid"] if g["first_stage"] == f) for f in FIRSTS}
    assert choice["best"] == f"rerank({max(best, key=best.get)})" and choice["split"] == "dev"
    names = [f"rerank({f})" for f in FIRSTS]
    for name, first in zip(names, FIRSTS, strict=True):
        lo, hi = report["ci95"][name]["ndcg@10"]
        assert lo <= report["metrics"][name]["ndcg@10"] <= hi
        c = report["comparisons"][f"{name}-vs-{first}"]["recall@10"]
        assert c["delta"] == pytest.approx(report["metrics"][name]["recall@10"] - report["metrics"][first]["recall@10"],
                                           abs=1e-9)
        assert f"{name}-vs-baseline" in report["comparisons"]
        assert (out / f"ranking_rerank-{first}.npz").exists() and (out / "dev" / f"ranking_rerank-{first}.npz").exists()
    dev = json.loads((out / "dev" / "metrics.json").read_text())
    assert dev["split"] == "dev" and set(dev["systems"]) == set(names)
    lat = choice["latency"]
    assert lat["pairs_per_second"] > 0 and lat["ms_per_query"] > 0 and lat["machine"]
    assert json.loads((out / "manifest.json").read_text())["cost"] == {"corpus_encodes": 0}
    # the report: reranked systems after every first stage in the cost order, a section, the plot, the cards
    from domain_embed.config import EvalConfig
    from domain_embed.report.recommend import cost_sorted, first_stage

    order = cost_sorted([*names, "bm25", "baseline", "tuned", "hybrid_base", "hybrid_tuned"], EvalConfig().cost_order)
    assert all(order.index(n) == order.index(first_stage(n)) + 1 for n in names)  # each right after its first stage
    assert set(names) <= set(report["dev"]["metrics"])  # the recommendation is chosen on dev, reranked systems too
    md = (run / "report.md").read_text()
    assert "## Reranking (cross-encoder)" in md and "| rerank(hybrid_tuned) |" in md and "pairs/s" in md
    assert (run / "plots" / "recall_at_k.png").exists()
    card = (trained / "model" / "README.md").read_text()
    assert "| rerank(bm25) |" in card and "| bm25 |" in card  # the test table replaced the dev one
    assert CrossEncoder(str(trained / "model"), device="cpu").num_labels == 1
    assert choice["reranker"]["path"] == str(trained / "model") and not choice["reranker"]["shared"]
    assert not (run / "checkpoints").exists() or not any((run / "checkpoints").glob("reranker-*"))
    assert _run(run, *upstream[1], *RERANK)["run"]["ran_now"] == []  # up to date
    # how the reranker is used is not what it is: other depths and weights rescore with the same one
    assert _run(run, *upstream[1], *RERANK, "rerank.depths=[5]", "rerank.weights=[1]")["run"]["ran_now"] == ["rerank"]
    # what its weights depend on retrains it: the lists it learns from, where it starts
    assert _run(run, *upstream[1], *RERANK, "rerank.lists_from=bm25", "rerank.list_depth=20", "rerank.depths=[5]",
                "rerank.epochs=0.1")["run"]["ran_now"] == ["reranker", "rerank"]


def test_a_given_reranker_is_used_as_it_is_without_training(upstream, tiny_cross_encoder, tmp_path):
    run = _copy(upstream, tmp_path)
    report = _run(run, *upstream[1], f"rerank.model={tiny_cross_encoder}", "rerank.first_stages=[bm25]",
                  "rerank.depths=[5]", "rerank.latency_queries=2")
    out = run / "rerank"
    choice = json.loads((out / "choice.json").read_text())
    assert choice["reranker"] == {"source": "given", "path": str(tiny_cross_encoder)}
    assert not [p.name for p in (run / "reranker").iterdir() if p.name != "manifest.json"]  # nothing trained
    assert read_json(run / "reranker" / "manifest.json")["inputs"] == {"model": str(tiny_cross_encoder)}
    assert set(report["metrics"]) >= {"rerank(bm25)"} and "rerank(tuned)" not in report["metrics"]
    assert "The given cross-encoder" in (run / "report.md").read_text()
    # its scores are the given model's logits for each (query, best window) pair, mixed at the weight dev chose
    ctx = RunContext(_compose(run, *upstream[1]), run)
    model = CrossEncoder(str(tiny_cross_encoder), device="cpu")
    split = rerank_stage._Split(ctx, "test", model)
    ranked = np.load(out / "ranking_rerank-bm25.npz")
    first = np.load(run / "baseline" / "ranking_bm25.npz")
    depth, weight = choice["depths"]["bm25"], choice["weights"]["bm25"]
    alone = {(q, int(d)): float(model.predict([(split.scorer.queries[q], split.scorer.text(q, int(d)))],
                                              activation_fn=torch.nn.Identity())[0])
             for q in range(len(first["indices"])) for d in first["indices"][q, :depth] if d >= 0}
    expected, scores = rerank(first["indices"], alone, depth, first["scores"], weight)
    assert (ranked["indices"] == expected).all() and ranked["scores"] == pytest.approx(scores, abs=1e-5)
    for q in range(3):
        assert sorted(ranked["indices"][q, :5].tolist()) == sorted(first["indices"][q, :5].tolist())


def test_the_reranker_starts_from_a_pretrained_cross_encoder_or_the_tuned_model(upstream, tiny_cross_encoder,
                                                                              tmp_path):
    run = _copy(upstream, tmp_path)
    args = [*upstream[1], *RERANK, "rerank.first_stages=[bm25]", "rerank.depths=[5]", "rerank.lists_from=bm25",
            "rerank.list_depth=10", "rerank.num_negatives=3"]
    report = _run(run, *args, f"rerank.init={tiny_cross_encoder}")
    log = json.loads((run / "reranker" / "train_log.json").read_text())
    assert log["init"] == log["base_model"] == str(tiny_cross_encoder) and log["global_step"] > 0
    assert "rerank(bm25)" in report["metrics"] and report["rerank"]["reranker"]["init"] == str(tiny_cross_encoder)
    inputs = read_json(run / "reranker" / "manifest.json")["inputs"]
    assert "finetune" not in inputs["lists"] and "finetune" not in inputs  # BM25's lists: not the tuned model's
    _run(run, *args, "rerank.init=tuned")
    log = json.loads((run / "reranker" / "train_log.json").read_text())
    assert log["base_model"] == str(run / "finetune" / "model")
    assert read_json(run / "reranker" / "manifest.json")["inputs"]["finetune"] == read_json(
        run / "finetune" / "manifest.json")["key"]
    # hybrid_tuned's lists depend on the tuned model, not on the evaluate stage's report-only settings
    _run(run, *args, "rerank.init=tuned", "rerank.lists_from=hybrid_tuned")
    lists = read_json(run / "reranker" / "manifest.json")["inputs"]["lists"]
    assert lists["finetune"] == read_json(run / "finetune" / "manifest.json")["key"]
    assert _run(run, *args, "rerank.init=tuned", "rerank.lists_from=hybrid_tuned",
                "eval.formats.enabled=false")["run"]["ran_now"] == ["evaluate", "rerank"]


def test_a_first_stage_ranks_any_queries_as_its_stage_ranked_them(upstream, tmp_path):
    """The training queries' lists are computed as baseline and evaluate ranked the dev split: recomputed for the dev
    queries, every first stage's lists equal the stored ones (the hybrids fused with the setting chosen on dev)."""
    from domain_embed.stages import first_stage

    run = _copy(upstream, tmp_path)
    ctx = RunContext(_compose(run, *upstream[1]), run)
    _, texts, _ = ctx.data.split("dev")
    for system, (stage, _) in first_stage.FIRST_STAGES.items():
        stored = np.load(run / stage / "dev" / f"ranking_{system}.npz")
        indices, scores = first_stage.rank(ctx, system, texts, stored["indices"].shape[1])  # ties cut at the same k
        assert (indices == stored["indices"]).all(), system
        assert scores == pytest.approx(stored["scores"], abs=1e-5), system


def test_nothing_is_trained_or_scored_where_dev_is_the_evaluated_split(upstream, tmp_path):
    run = _copy(upstream, tmp_path)
    report = _run(run, *upstream[1], "eval.split=dev")
    assert "rerank" in report["run"]["ran_now"] and "rerank" not in report
    assert "chosen on the dev split, which is the evaluated split here" in report["not_run"]["rerank"]
    assert not [s for s in report["metrics"] if s.startswith("rerank(")] and not (run / "reranker" / "model").exists()
    assert "## Reranking (cross-encoder)\n\nNot run: the depth" in (run / "report.md").read_text()


def test_a_given_reranker_that_cannot_load_is_one_clear_error(upstream, tmp_path):
    from domain_embed.errors import ModelLoadError

    run = _copy(upstream, tmp_path)
    with pytest.raises(ModelLoadError, match=r"cannot load rerank\.model '.*no-such-model'"):
        _run(run, *upstream[1], f"rerank.model={tmp_path / 'no-such-model'}")
    assert not (run / "rerank").exists()
    with pytest.raises(ModelLoadError, match=r"cannot load rerank\.init '.*no-such-model'"):
        _run(run, *upstream[1], f"rerank.init={tmp_path / 'no-such-model'}")
    assert not (run / "reranker" / "model").exists()


class _Scripted:
    """A reranker whose scores are a table: (query text, document number) -> score, 0 elsewhere."""

    device = "cpu"

    def __init__(self, table: dict):
        self.table = table

    def _score(self, query: str, text: str) -> float:
        m = re.search(r"\btopic(\d+)\b", text)
        return self.table.get((query, int(m.group(1))), 0.0) if m else 0.0

    def predict(self, pairs, **kwargs):
        return np.array([self._score(q, t) for q, t in pairs])

    def rank(self, query, documents, **kwargs):
        return sorted(({"corpus_id": i, "score": self._score(query, d)} for i, d in enumerate(documents)),
                      key=lambda r: -r["score"])


def test_depth_and_first_stage_are_chosen_on_dev_where_test_would_prefer_others(upstream, monkeypatch, tmp_path):
    """Dev: a decoy the reranker puts first sits at rank 10 of `tuned`, whose positive sits at rank 1 (so depth 5 wins
    there, over `tuned` alone too) and at rank 0 of `bm25`, whose positive sits at rank 12 (so only depth 20 reaches
    it, and rerank(bm25) loses to rerank(tuned)). Test: no decoy, `tuned`'s positive at rank 10 (depth 20 would win)
    and `bm25`'s at rank 0 (rerank(bm25) would win)."""
    run = _copy(upstream, tmp_path)
    ctx = RunContext(_compose(run, *upstream[1]), run)
    pos = {d: i for i, d in enumerate(ctx.data.corpus_ids)}
    table = {}
    for split in ("dev", "test"):
        qids, texts, _ = ctx.data.split(split)
        rows = {"bm25": [], "tuned": []}
        for qid, text in zip(qids, texts, strict=True):
            n = int(qid[1:])  # query i's positive is d{i} (q20 also has d7: kept out of every ranking)
            decoy = (n + 30) % 60
            filler = [pos[f"d{i}"] for i in range(60) if i not in (n, decoy, 7)][:18]
            table[(text, n)] = 1.0
            if split == "dev":
                table[(text, decoy)] = 2.0
                rows["tuned"].append([filler[0], pos[f"d{n}"], *filler[1:9], pos[f"d{decoy}"], *filler[9:18]])
                rows["bm25"].append([pos[f"d{decoy}"], *filler[:11], pos[f"d{n}"], *filler[11:18]])
            else:
                rows["tuned"].append([*filler[:10], pos[f"d{n}"], *filler[10:18], pos[f"d{decoy}"]])
                rows["bm25"].append([pos[f"d{n}"], *filler[:18], pos[f"d{decoy}"]])
        for first, stage in (("bm25", "baseline"), ("bm25", "evaluate"), ("tuned", "evaluate")):
            folder = run / stage / ("dev" if split == "dev" else "")
            indices = np.array(rows[first])
            np.savez_compressed(folder / f"ranking_{first}.npz", indices=indices,
                                scores=-np.arange(20.0)[None].repeat(len(indices), 0))
    scripted = _Scripted(table)
    monkeypatch.setattr(rerank_stage, "load_reranker", lambda ctx: (scripted, {"source": "given", "path": "table"}))
    report = _run(run, *upstream[1], "rerank.first_stages=[bm25,tuned]", "rerank.depths=[5,20]", "rerank.weights=[1]")
    choice = json.loads((run / "rerank" / "choice.json").read_text())
    assert choice["depths"] == {"bm25": 20, "tuned": 5} and choice["best"] == "rerank(tuned)"
    assert choice["weights"] == {"bm25": 1.0, "tuned": 1.0} and choice["metric"] == "ndcg@10"  # eval.primary_metric
    dev_values = {(g["first_stage"], g["depth"], g["weight"]): g["value"] for g in choice["grid"]}
    assert dev_values[("tuned", 5, 1.0)] == 1.0 and dev_values[("tuned", 20, 1.0)] < 1.0
    assert dev_values[("tuned", 0, 0.0)] < 1.0 and dev_values[("bm25", 0, 0.0)] == 0.0  # the first stages alone
    # the test split would have chosen otherwise: tuned at depth 20 finds every positive, bm25 beats tuned
    assert report["metrics"]["rerank(tuned)"]["ndcg@10"] == 0.0 and report["metrics"]["rerank(bm25)"]["ndcg@10"] > 0.9
    test_tuned = np.load(run / "evaluate" / "ranking_tuned.npz")["indices"]
    qids, texts, _ = ctx.data.split("test")
    scores = {(q, int(d)): scripted._score(texts[q], ctx.documents[d]) for q in range(len(qids)) for d in test_tuned[q]}
    deeper, _ = rerank(test_tuned, scores, 20)
    assert [ctx.data.corpus_ids[d] for d in deeper[:, 0]] == [f"d{q[1:]}" for q in qids]


def test_the_first_stage_alone_is_chosen_where_the_reranker_is_worse_on_dev(upstream, monkeypatch, tmp_path):
    """Dev: `tuned` ranks each positive first, its decoy second, and the reranker scores the decoy 2.0 and the
    positive 1.0, so it puts the decoy first at every depth, alone (weight 1) and mixed at weight 0.5 (0.875 against
    0.75 after min-max). Weight 0 wins: `rerank(tuned)` is `tuned`, the test split scores no pair, and the report
    says so."""
    run = _copy(upstream, tmp_path)
    ctx = RunContext(_compose(run, *upstream[1]), run)
    pos = {d: i for i, d in enumerate(ctx.data.corpus_ids)}
    table, written = {}, {}
    for split in ("dev", "test"):
        qids, texts, _ = ctx.data.split(split)
        rows = []
        for qid, text in zip(qids, texts, strict=True):
            n, decoy = int(qid[1:]), (int(qid[1:]) + 30) % 60
            filler = [pos[f"d{i}"] for i in range(60) if i not in (n, decoy, 7)][:18]
            table[(text, decoy)], table[(text, n)] = 2.0, 1.0
            rows.append([pos[f"d{n}"], pos[f"d{decoy}"], *filler])
        folder = run / "evaluate" / ("dev" if split == "dev" else "")
        written[split] = np.array(rows)
        np.savez_compressed(folder / "ranking_tuned.npz", indices=written[split],
                            scores=(1.0 - np.arange(20.0)[None] * 1e-3).repeat(len(rows), 0))
    monkeypatch.setattr(rerank_stage, "load_reranker",
                        lambda ctx: (_Scripted(table), {"source": "given", "path": "table"}))
    _run(run, *upstream[1], "rerank.first_stages=[tuned]", "rerank.depths=[5,20]", "rerank.weights=[0.5,1]")
    choice = json.loads((run / "rerank" / "choice.json").read_text())
    assert choice["weights"] == {"tuned": 0.0} and choice["depths"] == {"tuned": 0} and choice["helps"] == {
        "tuned": False}
    values = [g["value"] for g in choice["grid"]]
    assert values[0] == 1.0 and max(values[1:]) < 1.0  # every mix was tried, and lost
    assert (np.load(run / "rerank" / "ranking_rerank-tuned.npz")["indices"] == written["test"]).all()
    assert choice["latency"]["pairs_scored"] == len(written["dev"]) * 20  # the dev pairs, none on test
    assert "the reranker does not help on dev" in (run / "report.md").read_text()


def test_kill_9_while_training_the_reranker_then_resume_matches_the_uninterrupted_run(upstream, tmp_path):
    args = [*upstream[1], *RERANK, "rerank.epochs=2", "rerank.train_batch_size=2", "rerank.depths=[5]"]
    reference = _copy(upstream, tmp_path / "reference")
    (tmp_path / "killed").mkdir()
    run = _copy(upstream, tmp_path / "killed")
    killed = cli(run, *args, hook="pause_after_rerank_checkpoint")
    state = kill_when(killed, "checkpoints/reranker-*/checkpoints/checkpoint-*/trainer_state.json", run, timeout=240)
    assert killed.returncode == -signal.SIGKILL
    assert not (run / "reranker").exists() and not (run / "rerank").exists()  # nothing taken as finished

    resumed = cli(run, *args, "rerank.resume=true")
    uninterrupted = _run(reference, *args)
    code, out = finish(resumed, timeout=300)
    assert code == 0, out[-3000:]
    report = json.loads((run / "report.json").read_text())
    assert report["run"]["ran_now"] == ["reranker", "rerank"]
    log = json.loads((run / "reranker" / "train_log.json").read_text())
    assert log["resumed_from"] == str(state.parent) and log["global_step"] == 10  # 10 lists, 2 a step, 2 epochs
    expected = json.loads((reference / "reranker" / "train_log.json").read_text())
    assert log["best_dev_ndcg10"] == pytest.approx(expected["best_dev_ndcg10"], abs=1e-6)
    for first in FIRSTS:
        assert report["metrics"][f"rerank({first})"] == pytest.approx(uninterrupted["metrics"][f"rerank({first})"],
                                                                      abs=1e-6)


def test_rerank_is_a_default_stage_and_the_smoke_budget_keeps_it_small(tmp_path):
    from domain_embed.config import RootConfig

    cfg = _compose(tmp_path / "run", "+domain=legal", "budget=smoke")
    assert cfg.stages == RootConfig().stages and cfg.stages[-3:] == ["evaluate", "reranker", "rerank"]
    r = cfg.rerank
    assert r.first_stages == ["hybrid_tuned"] and max(r.depths) == 5 and r.max_train_queries == 50
    assert cfg.budget.max_queries * max(r.depths) * 2 == 2000  # dev and test pairs the smoke reranker scores
