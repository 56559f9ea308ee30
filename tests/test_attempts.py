"""A failed attempt into a finished run directory leaves the run's record byte-identical; a failure before any stage
finished leaves no folder of its own, a later one keeps its config and log apart under attempts/."""

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

from domain_embed import attempts


def _train(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "train", *args], env=env, capture_output=True, text=True, timeout=300)


def _snapshot(run: Path) -> dict[str, str]:
    """Every file of the run except the attempts' own folders, by content."""
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run.rglob("*")) if p.is_file() and p.relative_to(run).parts[0] != "attempts"}


def test_a_failed_attempt_leaves_a_finished_run_byte_identical(tiny_beir, tiny_model, tmp_path):
    run = tmp_path / "run"
    common = ["+domain=beir", f"model.path={tiny_model}", f"cache_dir={tmp_path / 'cache'}",
              f"hydra.run.dir={run}", "stages=[audit,baseline]"]
    ok = _train(*common, f"data.path={tiny_beir}")
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert f"path: {tiny_beir}\n" in (run / ".hydra" / "config.yaml").read_text()
    assert "stage baseline: done" in (run / "train.log").read_text()
    before = _snapshot(run)

    failed = _train(*common, "data.path=/nonexistent")
    assert failed.returncode == 2
    assert _snapshot(run) == before  # .hydra/config.yaml, overrides.yaml, train.log, report.*, stage folders
    assert len(list((run / "attempts").iterdir())) == 1  # the failed start (no stage finished) left no folder


def test_an_attempt_that_finished_a_stage_keeps_its_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(attempts, "STARTED", time.time() - 1)  # file times can be coarser than time.time()
    run = tmp_path / "outputs" / "run"
    attempts.claim(run)
    attempts.attempt_file(str(run), "train.log")
    (run / "audit").mkdir()
    (run / "audit" / "manifest.json").write_text("{}")
    attempts.discard_if_nothing_finished()
    assert (run / "attempts" / attempts.ATTEMPT_ID).is_dir()

    (run / "audit" / "manifest.json").unlink()
    attempts.claim(tmp_path / "outputs" / "other")
    attempts.attempt_file(str(tmp_path / "outputs" / "other"), "train.log")
    attempts.discard_if_nothing_finished()
    assert not (tmp_path / "outputs" / "other").exists() and run.is_dir()  # only what this attempt created
