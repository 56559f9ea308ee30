"""W&B offline (no network) holds the training history; tracking=none logs nothing."""

import json
import subprocess
import sys

import pytest

from domain_embed.context import RunContext
from domain_embed.pipeline import run_pipeline


def wandb_inspect(run_file, *flags):
    """The run's transaction log as wandb's own reader sees it (`wandb leet inspect --json`): one JSON object
    per record, or the run's state, summary and config with --summary."""
    out = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", str(run_file), "--json", *flags],
                         capture_output=True, text=True, check=True, timeout=120).stdout
    return json.loads(out) if "--summary" in flags else [json.loads(line) for line in out.splitlines()]


@pytest.fixture
def overrides(tiny_beir, tiny_model, tmp_path):
    return ["+domain=beir", f"data.path={tiny_beir}", f"model.path={tiny_model}", f"cache_dir={tmp_path / 'cache'}",
            "training.batch_size=4", "training.eval_steps=2", "training.save_steps=2", "training.logging_steps=1"]


def test_wandb_offline_run_holds_history(make_config, overrides, tmp_path, monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)  # must never appear in outputs
    run = tmp_path / "run"
    report = run_pipeline(RunContext(make_config(run, *overrides, "tracking=wandb"), run))
    # run.finish() returns before wandb-core closes the run's stream, and only that close writes the transaction
    # log's last, partly filled 32 KiB block (where the summary and exit records are); teardown waits for it, as the
    # CLI's exit does
    wandb.teardown()
    files = list((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1
    state = wandb_inspect(files[0], "--summary")
    assert state["state"] == "finished" and state["exit_code"] == 0
    history = {key for r in wandb_inspect(files[0]) if r["type"] == "history" for key in r["history"]["item"]}
    assert {"train/loss", "train/learning_rate", "train/grad_norm", "eval/dev_cosine_ndcg@10"} <= history
    summary = state["summary"]
    assert summary["tuned/ndcg@10"] == pytest.approx(report["metrics"]["tuned"]["ndcg@10"])
    assert "mining/train_triplets" in summary
    assert {"training", "mining", "data"} <= set(state["config"])
    for path in [run / "report.json", run / "report.md", run / "finetune" / "model" / "README.md"]:
        assert "x" * 40 not in path.read_text()


def test_tracking_none_logs_nothing(make_config, overrides, tmp_path):
    run = tmp_path / "run"
    run_pipeline(RunContext(make_config(run, *overrides, "stages=[audit,baseline]"), run))
    assert not (run / "wandb").exists()
