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
RERANK = ["rerank.train_batch_size=8", "rerank.eval_steps=4", "rerank.learning_rate=1e-3", "rerank.latency_queries=3",
          "rerank.max_length=64"]


def _compose(run: Path, *overrides: str):
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from domain_embed.config import register_configs

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
    # trained on train queries only, never with a labelled positive (any split) as a negative
    rows = json.loads((trained / "train_log.json").read_text())["rows"]
    from datasets import Dataset

    dataset = Dataset.load_from_disk(str(trained / "dataset"))
    labelled = _labelled(tiny_beir)
    assert rows["rows"] == len(dataset) > 0 and rows["negatives"] > 0
    assert not [(q, d) for q, d, y in zip(dataset["query_id"], dataset["doc_id"], dataset["label"], strict=True)
                if y == 0.0 and d in labelled[q]]
    train_queries = {line.split("\t")[0] for line in list((tiny_beir / "qrels" / "train.tsv").open())[1:]}
    assert set(dataset["query_id"]) <= train_queries
    choice = json.loads((out / "choice.json").read_text())
    for first in FIRSTS:  # each first stage at its best depth on dev; the best reranked system is best on dev
        tried = {g["depth"]: g["value"] for g in choice["grid"] if g["first_stage"] == first}
        assert set(tried) == {20, 50, 100} and tried[choice["depths"][first]] == max(tried.values())
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
    from domain_embed.report.recommend import system

    assert min(system(n).cost for n in names) > max(system(s).cost for s in ("bm25", "baseline", "tuned", "hybrid_base",
                                                                           "hybrid_tuned"))
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
    # how the reranker is used is not what it is: other depths rescore with the same one
    assert _run(run, *upstream[1], *RERANK, "rerank.depths=[5]")["run"]["ran_now"] == ["rerank"]


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
    # its scores are the given model's logits for each (query, best window) pair
    ctx = RunContext(_compose(run, *upstream[1]), run)
    model = CrossEncoder(str(tiny_cross_encoder), device="cpu")
    windows = ctx.windows()
    texts = windows.texts(ctx.documents)
    split = rerank_stage._Split(ctx, "test", model, ctx.embedder.encode_documents(texts),
                                rerank_stage.windows_by_doc(windows.parents), texts)
    ranked = np.load(out / "ranking_rerank-bm25.npz")
    first = np.load(run / "baseline" / "ranking_bm25.npz")["indices"]
    for q in range(3):
        head = ranked["indices"][q, :5].tolist()
        assert sorted(head) == sorted(first[q, :5].tolist())
        alone = model.predict([(split.scorer.queries[q], split.scorer.text(q, d)) for d in head],
                              activation_fn=torch.nn.Identity())
        assert ranked["scores"][q, :5] == pytest.approx(alone, abs=1e-5)


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
    """Dev: a decoy the reranker puts first sits at rank 10 of `tuned` (so depth 5 wins there) and at rank 0 of `bm25`,
    whose positive sits at rank 12 (so only depth 20 reaches it, and rerank(bm25) loses to rerank(tuned)). Test: no
    decoy, `tuned`'s positive at rank 10 (depth 20 would win) and `bm25`'s at rank 0 (rerank(bm25) would win)."""
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
                rows["tuned"].append([pos[f"d{n}"], *filler[:9], pos[f"d{decoy}"], *filler[9:18]])
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
    report = _run(run, *upstream[1], "rerank.first_stages=[bm25,tuned]", "rerank.depths=[5,20]")
    choice = json.loads((run / "rerank" / "choice.json").read_text())
    assert choice["depths"] == {"bm25": 20, "tuned": 5} and choice["best"] == "rerank(tuned)"
    dev_values = {(g["first_stage"], g["depth"]): g["value"] for g in choice["grid"]}
    assert dev_values[("tuned", 5)] == 1.0 and dev_values[("tuned", 20)] < 1.0
    # the test split would have chosen otherwise: tuned at depth 20 finds every positive, bm25 beats tuned
    assert report["metrics"]["rerank(tuned)"]["ndcg@10"] == 0.0 and report["metrics"]["rerank(bm25)"]["ndcg@10"] > 0.9
    test_tuned = np.load(run / "evaluate" / "ranking_tuned.npz")["indices"]
    qids, texts, _ = ctx.data.split("test")
    scores = {(q, int(d)): scripted._score(texts[q], ctx.documents[d]) for q in range(len(qids)) for d in test_tuned[q]}
    deeper, _ = rerank(test_tuned, scores, 20)
    assert [ctx.data.corpus_ids[d] for d in deeper[:, 0]] == [f"d{q[1:]}" for q in qids]


def test_kill_9_while_training_the_reranker_then_resume_matches_the_uninterrupted_run(upstream, tmp_path):
    args = [*upstream[1], *RERANK, "rerank.epochs=2", "rerank.eval_steps=2", "rerank.depths=[5]"]
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
    assert log["resumed_from"] == str(state.parent) and log["global_step"] == 6
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
