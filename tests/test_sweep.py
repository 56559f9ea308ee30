"""Hydra multirun: jobs share audit/baseline/mine/triplets and the reranker, and a summary ranks them by dev
nDCG@10."""

import json
import os
import subprocess
import sys


def _multirun(cwd, *args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "train", "-m", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def _args(tiny_beir, tiny_model, tmp_path):
    return ["+domain=beir", f"data.path={tiny_beir}", f"model.path={tiny_model}", f"cache_dir={tmp_path / 'cache'}",
            f"hydra.sweep.dir={tmp_path / 'sweep'}", "training.batch_size=4", "training.eval_steps=2",
            "training.save_steps=2"]


def test_two_job_sweep_reuses_shared_stages(tiny_beir, tiny_model, tmp_path):
    # a reranker on BM25's lists depends on nothing the jobs vary (on hybrid_tuned's, each job would train its own)
    proc = _multirun(tmp_path, *_args(tiny_beir, tiny_model, tmp_path), "training.learning_rate=1e-4,1e-3",
                     "rerank.lists_from=bm25")
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = tmp_path / "sweep"
    first = json.loads((sweep / "0" / "report.json").read_text())
    second = json.loads((sweep / "1" / "report.json").read_text())
    assert first["run"]["ran_now"] == ["audit", "baseline", "mine", "triplets", "finetune", "evaluate", "reranker",
                                       "rerank"]
    assert second["run"]["ran_now"] == ["finetune", "evaluate", "rerank"]  # nothing upstream was recomputed
    log = (sweep / "1" / "train.log").read_text()
    for stage in ("audit", "baseline", "mine", "triplets", "reranker"):
        assert f"stage {stage}: reusing the sweep's shared output" in log
        assert (sweep / "1" / stage).is_symlink()
    # the jobs differ in the bi-encoder's training only: one reranker, trained once, reranks both jobs' first stages
    logs = [(sweep / job / "train.log").read_text() for job in ("0", "1")]
    assert sum(job.count("stage reranker: running") for job in logs) == 1
    assert (sweep / "0" / "reranker").resolve() == (sweep / "1" / "reranker").resolve()
    assert first["rerank"]["reranker"]["shared"] and "trained once for this sweep's jobs" in (
        sweep / "1" / "report.md").read_text()
    assert "encode corpus" not in log.replace("cache hit", "")  # corpus vectors came from the cache
    summary = json.loads((sweep / "sweep_summary.json").read_text())
    assert [j["job"] for j in summary["jobs"]] and len(summary["jobs"]) == 2
    dev = [j["dev_ndcg@10"] for j in summary["jobs"]]
    assert dev == sorted(dev, reverse=True)
    # both jobs scored every round on one dev set, built from the shared triplets stage
    hashes = {j["training_dev_set"] for j in summary["jobs"]}
    assert len(hashes) == 1 and None not in hashes
    assert "training.learning_rate=0.001" in " ".join(summary["jobs"][0]["overrides"] + summary["jobs"][1]["overrides"])
    assert "Ranked by dev nDCG@10" in (sweep / "sweep_summary.md").read_text()


def test_optuna_search_maximises_dev_ndcg(tiny_beir, tiny_model, tmp_path):
    proc = _multirun(tmp_path, *_args(tiny_beir, tiny_model, tmp_path), "hparams_search=optuna",
                     "hydra.sweeper.n_trials=2", "training.epochs=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = (tmp_path / "sweep" / "optimization_results.yaml").read_text()
    assert "best_params" in result and "training.learning_rate" in result and "best_value" in result


def _report(folder, split, tuned_ndcg, training_dev, dev_set="d1"):
    from pathlib import Path

    folder = Path(folder)
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(f"- +recipe={folder.name}\n- eval.split={split}\n")
    (folder / "report.json").write_text(json.dumps({
        "eval": {"split": split}, "metrics": {"tuned": {"ndcg@10": tuned_ndcg, "recall@10": 0.5}},
        "training": {"best_dev_ndcg@10": training_dev, "train_seconds": 12.0, "global_step": 30,
                     "dev_set_sha256": dev_set},
        "run": {"ran_now": ["finetune", "evaluate"]}, "cost": {"corpus_encodes": 1}}))


def test_summary_ranks_by_the_full_dev_split_when_jobs_evaluated_dev_and_never_by_test(tmp_path):
    from domain_embed.sweep import render, summarise

    _report(tmp_path / "a", "dev", 0.70, 0.90)
    _report(tmp_path / "b", "dev", 0.75, 0.80)
    jobs = summarise(tmp_path)["jobs"]
    assert [j["job"] for j in jobs] == ["b", "a"] and jobs[0]["dev_source"] == "eval.split=dev (full corpus)"
    _report(tmp_path / "t" / "c", "test", 0.99, 0.60)  # a test-evaluated job: ranked by its training dev value
    _report(tmp_path / "t" / "d", "test", 0.10, 0.70)
    summary = summarise(tmp_path / "t")
    assert [j["job"] for j in summary["jobs"]] == ["d", "c"]
    md = render(summary)
    assert "0.9900 (test)" in md and "training dev evaluator" in md and "| 12 | 30 | 1 |" in md
    assert "Every job: `eval.split=test`" in md and "| +recipe=c |" in md  # what differs, per row
    assert "Warning" not in md


def test_summary_warns_when_training_dev_scores_come_from_different_dev_sets(tmp_path):
    """A test-evaluated sweep ranks by the training dev evaluator: its scores compare only on one dev set."""
    from domain_embed.sweep import render, summarise

    _report(tmp_path / "c", "test", 0.5, 0.60, dev_set="d1")
    _report(tmp_path / "d", "test", 0.5, 0.70, dev_set="d2")
    md = render(summarise(tmp_path))
    assert "scored on 2 different dev sets" in md


def test_the_summary_and_the_optuna_objective_rank_by_one_named_value(tmp_path):
    """On dev-evaluated jobs the full dev split ranks them: the training evaluator's best (what Optuna used to get)
    would have named the other job."""
    from domain_embed.sweep import objective, render, summarise

    _report(tmp_path / "a", "dev", 0.70, 0.90)
    _report(tmp_path / "b", "dev", 0.75, 0.80)
    summary = summarise(tmp_path)
    values = {j["job"]: objective(json.loads((tmp_path / j["job"] / "report.json").read_text()))[0]
              for j in summary["jobs"]}
    assert values == {"a": 0.70, "b": 0.75} and summary["best_job"] == max(values, key=values.get) == "b"
    assert summary["rule"] == "the tuned model's dev nDCG@10, highest first"
    md = render(summary)
    assert "Ranked by dev nDCG@10: the tuned model's dev nDCG@10, highest first" in md and "**Best job: b**" in md
    assert "the value the Optuna sweeper maximises" in md
