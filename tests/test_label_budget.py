"""The label-budget curve: nested samples of the training queries, a `+sweep=labels` ladder sharing audit, baseline and
mine (one corpus encode of the base model for the whole sweep), the summary's sentence on scripted job results, and
the sweep as one W&B group read back from offline runs."""

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from datasets import DatasetDict
from test_tracking import wandb_inspect

from domain_embed.data.domain import nested_sample


def test_samples_are_nested_and_none_is_all():
    ids = [f"q{i}" for i in range(2224)]
    ladder = [nested_sample(ids, n, seed=42) for n in (125, 250, 500, 1000)]
    for small, large in itertools.pairwise(ladder):
        assert set(small) < set(large)
    assert [len(s) for s in ladder] == [125, 250, 500, 1000]
    assert sorted(nested_sample(ids, None, seed=42)) == sorted(ids)
    assert nested_sample(list(reversed(ids)), 125, seed=42) == ladder[0]  # the ids' order does not matter
    assert nested_sample(ids, 125, seed=7) != ladder[0]


def _stage(job: Path, name: str) -> dict:
    return json.loads((job / name / "manifest.json").read_text())


def _records(run_file: Path, kind: str) -> list[dict]:
    return [r[kind] for r in wandb_inspect(run_file) if r["type"] == kind]


def _settings(tiny_beir, tiny_model):
    return ["+domain=beir", f"data.path={tiny_beir}", f"model.path={tiny_model}", "mining.rounds=1",
            "training.num_negatives=1", "training.batch_size=2", "training.warmup=0", "training.learning_rate=1e-3",
            "training.eval_steps=2", "training.save_steps=2", "eval.formats.enabled=false"]


@pytest.fixture(scope="module")
def label_sweep(tiny_beir, tiny_model, tmp_path_factory):
    """`+sweep=labels` at two sizes (4 of the 10 training queries, and all), W&B offline."""
    tmp = tmp_path_factory.mktemp("labels")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "WANDB_API_KEY": "x" * 40}
    proc = subprocess.run(
        [sys.executable, "-m", "train", *_settings(tiny_beir, tiny_model), f"cache_dir={tmp / 'cache'}",
         f"hydra.sweep.dir={tmp / 'sweep'}", "+sweep=labels", "data.max_train_queries=4,null", "tracking=wandb"],
        cwd=tmp, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / "sweep"


def test_the_ladder_shares_audit_baseline_and_mine_with_one_corpus_encode(label_sweep, tiny_beir):
    small, everything = label_sweep / "0", label_sweep / "1"
    reports = [json.loads((job / "report.json").read_text()) for job in (small, everything)]
    assert reports[0]["run"]["ran_now"] == ["audit", "baseline", "mine", "triplets", "finetune", "evaluate"]
    assert reports[1]["run"]["ran_now"] == ["triplets", "finetune", "evaluate"]
    for stage in ("audit", "baseline", "mine"):
        assert (small / stage).resolve() == (everything / stage).resolve()
        assert f"stage {stage}: reusing the sweep's shared output" in (everything / "train.log").read_text()
    # the base model's corpus is encoded once for the whole sweep (by the baseline); each job encodes its tuned model
    shared = {(job / s).resolve() for job in (small, everything) for s in ("audit", "baseline", "mine", "triplets")}
    assert sum(json.loads((d / "manifest.json").read_text()).get("cost", {}).get("corpus_encodes", 0)
               for d in shared) == 1
    assert [_stage(job, "evaluate")["cost"]["corpus_encodes"] for job in (small, everything)] == [1, 1]
    # a size enters the triplets key only when set: a job on every query keeps a plain run's keys
    assert _stage(small, "triplets")["inputs"]["max_train_queries"] == 4
    assert "max_train_queries" not in _stage(everything, "triplets")["inputs"]
    # the small job trains on a nested sample of the training queries; dev is the same at every size
    data = [DatasetDict.load_from_disk(str(job / "triplets" / "dataset")) for job in (small, everything)]
    train = [set(d["train"]["query_id"]) for d in data]
    sample = set(nested_sample([f"q{i}" for i in range(10)], 4, seed=42))  # tiny_beir's training queries: q0..q9
    assert train[0] == sample & train[1] and 0 < len(train[0]) < len(train[1])
    assert data[0]["dev"].to_list() == data[1]["dev"].to_list()
    curve = json.loads((label_sweep / "sweep_summary.json").read_text())["label_curve"]
    assert [(r["labelled_queries"], r["all"]) for r in curve["rows"]] == [(4, False), (10, True)]
    assert all(r["gap_dev"] and r["gap_test"] and r["decision"] for r in curve["rows"])
    md = (label_sweep / "sweep_summary.md").read_text()
    assert "## Label budget: recall@10" in md and curve["sentence"] in md and (label_sweep / "label_curve.png").exists()


def test_the_job_on_all_queries_gives_a_plain_runs_figures(label_sweep, tiny_beir, tiny_model, make_config, tmp_path):
    from domain_embed.context import RunContext
    from domain_embed.pipeline import run_pipeline

    run = tmp_path / "plain"
    plain = run_pipeline(RunContext(make_config(run, *_settings(tiny_beir, tiny_model),
                                                "stages=[audit,baseline,mine,triplets,finetune,evaluate]"), run))
    job = json.loads((label_sweep / "1" / "report.json").read_text())
    assert job["metrics"] == plain["metrics"] and job["dev"] == plain["dev"] and job["ci95"] == plain["ci95"]
    assert _stage(label_sweep / "1", "finetune")["key"] == _stage(run, "finetune")["key"]


def test_the_sweep_is_one_wandb_group_with_its_summary_table(label_sweep):
    folders = {"0": label_sweep / "0", "1": label_sweep / "1", "summary": label_sweep}
    runs = {job: next(folder.glob("wandb/offline-run-*/run-*.wandb")) for job, folder in folders.items()}
    info = {job: _records(path, "run")[0] for job, path in runs.items()}
    assert {i["run_group"] for i in info.values()} == {str(label_sweep)}
    assert [info[j]["job_type"] for j in ("0", "1", "summary")] == ["evaluate", "evaluate", "sweep_summary"]
    assert [info[j]["display_name"] for j in ("0", "1")] == ["data.max_train_queries=4", "data.max_train_queries=null"]
    logged = {k: v for h in _records(runs["summary"], "history") for k, v in h["item"].items()}
    assert logged["sweep_summary._type"] == logged["label_curve._type"] == "table-file"
    assert logged["plots/label_curve._type"] == "image-file"
    table = json.loads((runs["summary"].parent / "files" / logged["label_curve.path"]).read_text())
    rows = [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]
    assert [(r["labelled_queries"], r["max_train_queries"]) for r in rows] == [(4, 4), (10, None)]
    assert "decision/adopt" in table["columns"] and "gap_dev/ci95" in table["columns"]
    jobs = json.loads((runs["summary"].parent / "files" / logged["sweep_summary.path"]).read_text())
    assert jobs["data"] and "dev_ndcg@10" in jobs["columns"]


def _job(folder: Path, size: int | None, dev: tuple[float, float, float], adopt: bool, test=(0.02, 0.01, 0.03),
         held=("tuned", "baseline")) -> None:
    """A finished job's report.json as the pipeline writes it: the dev and test comparisons (delta, CI low, CI high)
    of `held` (the systems the job's decision compared) and the decision its rule took."""
    def comparisons(d, lo, hi):
        pairs = {held, ("tuned", "baseline")}
        return {f"{a}-vs-{b}": {"recall@10": {"delta": d, "ci95": [lo, hi], "p_value": 0.01}} for a, b in pairs}

    decision = {"adopt": adopt, "system": held[0], "over": held[1], "metric": "recall@10", "min_gain": 0.05,
                "reason": "scripted"}
    folder.mkdir(parents=True)
    (folder / "report.json").write_text(json.dumps({
        "run": {"config": {"eval": {"decision_metric": "recall@10"}, "data": {"max_train_queries": size},
                           "mining": {"splits": ["train", "dev"], "dev_split": "dev"}}},
        "data": {"splits": {"train": 2224, "dev": 564, "test": 2786}}, "eval": {"split": "test"},
        "dev": {"split": "dev", "comparisons": comparisons(*dev)}, "comparisons": comparisons(*test),
        "mining": {"split": {"train_rows": 3 * (size or 2224)}},
        "recommendation": {"split": "dev", "decision": decision}}))


def test_the_summary_names_the_smallest_size_that_clears_the_bar_on_dev(tmp_path):
    from domain_embed.report.curve import build, render

    _job(tmp_path / "0", 125, (0.01, -0.01, 0.03), adopt=False)
    _job(tmp_path / "1", 250, (0.06, -0.01, 0.13), adopt=False)  # above 5 points, but the job's rule said no
    _job(tmp_path / "2", 500, (0.07, 0.02, 0.12), adopt=True, held=("hybrid_tuned", "hybrid_base"))
    _job(tmp_path / "3", 1000, (0.045, 0.01, 0.08), adopt=False)
    _job(tmp_path / "4", None, (0.08, 0.05, 0.11), adopt=True, test=(0.09, 0.06, 0.12))
    curve = build(tmp_path)
    assert [(r["labelled_queries"], r["all"]) for r in curve["rows"]] == [
        (125, False), (250, False), (500, False), (1000, False), (2224, True)]
    assert curve["sentence"] == (
        "The smallest size whose fine-tuning clears the 5-point bar on dev is 500 labelled queries: hybrid_tuned over "
        "hybrid_base, recall@10 +7.0 points (95% CI +2.0 to +12.0). Larger sizes that do not: 1000 labelled queries "
        "(read the CIs: the curve is noisy).")
    last = curve["rows"][-1]
    assert last["decision_test"] == {"delta": 0.09, "ci95": [0.06, 0.12]} and last["gap_test"]["delta"] == 0.09
    md = render(curve)
    assert "| 2224 (all) | 6672 |" in md and "hybrid_tuned vs hybrid_base: +7.0 points" in md
    assert Path(curve["plot"]).stat().st_size > 0


def test_the_summary_says_when_no_size_clears_the_bar(tmp_path):
    from domain_embed.report.curve import build

    _job(tmp_path / "0", 125, (-0.01, -0.03, 0.01), adopt=False)
    _job(tmp_path / "1", None, (0.032, 0.01, 0.05), adopt=False)
    assert build(tmp_path)["sentence"] == (
        "No size clears the 5-point bar on dev: at 2224 labelled queries (all), tuned over baseline, recall@10 +3.2 "
        "points (95% CI +1.0 to +5.0); fine-tuning does not earn its cost on this data at these sizes.")


def test_a_sweep_that_samples_nothing_has_no_curve(tmp_path):
    from domain_embed.report.curve import build

    _job(tmp_path / "0", None, (0.03, 0.01, 0.05), adopt=False)
    assert build(tmp_path) is None
