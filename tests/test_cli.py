"""`python -m train` as a user runs it: from another working directory, in a fresh process."""

import json
import os
import re
import subprocess
import sys

import pytest
from verdicts import agree


def _train(cwd, *args, timeout=300):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run([sys.executable, "-m", "train", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    return proc


@pytest.fixture
def args(tiny_beir, tiny_model, tmp_path):
    return ["+domain=beir", f"data.path={tiny_beir}", f"model.path={tiny_model}",
            f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}", "stages=[audit,baseline]"]


def test_main_job_runs_from_any_directory_and_resumes(args, tmp_path):
    elsewhere = tmp_path / "somewhere" / "else"
    elsewhere.mkdir(parents=True)
    proc = _train(elsewhere, *args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["run"]["ran_now"] == ["audit", "baseline"] and report["cost"]["corpus_encodes"] == 1
    assert (tmp_path / "run" / "train.log").exists()  # hydra.job.name, not __main__
    proc = _train(elsewhere, *args)
    assert proc.returncode == 0
    assert "stage audit: up to date, skipped" in proc.stderr + proc.stdout


def test_config_typo_fails_at_once_with_one_clear_line(args, tmp_path):
    proc = _train(tmp_path, *args, "eval.k_vaules=[1,5]")
    assert proc.returncode != 0
    assert "k_vaules" in proc.stderr and "Traceback" not in proc.stderr
    proc = _train(tmp_path, *args, "eval.batch_size=lots")
    assert proc.returncode != 0 and "batch_size" in proc.stderr
    proc = _train(tmp_path, *args, "data.truncation=sometimes")
    assert proc.returncode != 0 and "chunk" in proc.stderr  # names the allowed values
    assert not (tmp_path / "run" / "audit").exists()  # nothing ran, no model was loaded


def test_bad_data_is_one_line_naming_file_line_and_field(args, tmp_path, tiny_beir):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny_beir, bad)
    lines = (bad / "corpus.jsonl").read_text().splitlines()
    lines[2] = json.dumps({"_id": "d2", "title": "x", "text": "   "})
    (bad / "corpus.jsonl").write_text("\n".join(lines) + "\n")
    proc = _train(tmp_path, *[a for a in args if not a.startswith("data.path")], f"data.path={bad}")
    assert proc.returncode == 2
    error = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "corpus.jsonl:3" in error[0] and "text" in error[0]
    assert "Traceback" not in proc.stderr


def test_missing_model_path_is_a_clear_error(args, tmp_path):
    proc = _train(tmp_path, *args, f"model.path={tmp_path / 'no-model'}")
    assert proc.returncode == 2 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr


def test_smoke_run_console_is_quiet_ends_with_the_recommendation_and_follows_the_umask(tiny_beir, tiny_model,
                                                                                        tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "train", "+domain=beir", f"data.path={tiny_beir}",
                           f"model.path={tiny_model}", f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={run}",
                           "budget=smoke", "training.batch_size=4"], cwd=tmp_path, env=env, capture_output=True,
                          timeout=600, preexec_fn=lambda: os.umask(0o002))
    stdout, stderr = proc.stdout.decode(), proc.stderr.decode()  # bytes: a bar's \r redraws are not lines
    assert proc.returncode == 0, stderr[-2000:]
    # one bar at a time, the run's own: no evaluator, model load/save or dataset bars nested in the training bar
    for library_bar in ("Batches", "Corpus Chunks", "Loading weights", "Writing model shards", "Saving the dataset"):
        assert library_bar not in stderr, library_bar
    assert stderr.count("\n") < 15  # 40 lines with the library bars
    assert "{'loss'" not in stdout + stderr and "{'eval_" not in stdout + stderr  # no raw dicts
    assert "[sentence_transformers" not in stdout and "Information Retrieval Evaluation" not in stdout
    log = (run / "train.log").read_text()
    assert "step 2/2: dev_cosine_ndcg@10" in log and "cache hit" in log and "search_documents" in log  # all kept
    # the console: the run directory, one line per stage, the systems' table and the recommendation; warnings
    report = json.loads((run / "report.json").read_text())
    said = [line.split("] - ", 1)[1] for line in stdout.strip().splitlines() if "[WARNING]" not in line]
    stages = [line for line in said if line.startswith("stage ")]
    assert [line.split(":")[0] for line in stages] == [f"stage {s}" for s in report["run"]["stages"]]
    assert all(re.fullmatch(r"stage \w+: done in \d+\.\ds \(.+\)", line) for line in stages), stages
    assert said == [said[0], *stages, *[f"  {s:>12}: " + ", ".join(f"{m}={v[m]:.4f}" for m in
                                                                    ("ndcg@10", "recall@10", "mrr@10"))
                                        for s, v in report["metrics"].items()], said[-1]]
    assert said[0].startswith("run directory: ") and len(said[-1].replace(str(run), "")) < 250  # was ~900
    assert said[-1] == (f"recommendation: {report['recommendation']['system']} (on dev: "
                        f"{report['recommendation']['reason']}); report: {run}/report.md (corpus encodes this run: 2)")
    agree(report, (run / "report.md").read_text(), stdout)  # report.json, report.md's two places, the console
    for path in ("report.md", "report.json", "finetune/model/model.safetensors", "finetune/model/README.md"):
        assert oct((run / path).stat().st_mode & 0o777) == oct(0o664), path


@pytest.mark.parametrize("verbose", [False, True])
def test_the_console_handler_keeps_the_run_s_own_lines_unless_verbose(verbose):
    """Hydra's console handler filters (conf/config.yaml); train.log's handler has no filter and keeps every line."""
    import logging

    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from domain_embed.console import CONSOLE, ConsoleFilter
    from domain_embed.hydra_setup import register_configs

    register_configs()
    with initialize_config_module("domain_embed.conf", version_base="1.3"):
        cfg = compose("config", overrides=[f"verbose={str(verbose).lower()}"], return_hydra_config=True)
    logging_cfg = OmegaConf.to_container(cfg.hydra.job_logging, resolve=False)
    assert logging_cfg["handlers"]["console"]["filters"] == ["console"] and "filters" not in logging_cfg["handlers"][
        "file"]
    spec = logging_cfg["filters"]["console"]
    assert spec["()"] == "domain_embed.console.ConsoleFilter" and cfg.hydra.job_logging.filters.console.verbose is \
        verbose
    console = ConsoleFilter(verbose)
    log = logging.getLogger("domain_embed.retrieval.embed")

    def shown(level, **extra) -> bool:
        return bool(console.filter(log.makeRecord(log.name, level, __file__, 0, "x", None, None, extra=extra)))

    assert shown(logging.INFO, **CONSOLE) and shown(logging.WARNING)
    assert shown(logging.INFO) is verbose  # a cache hit, an encode rate, a search
