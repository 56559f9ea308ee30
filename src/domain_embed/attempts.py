"""Each invocation writes its config and log under `<run_dir>/attempts/<id>/`; only one that succeeds becomes the
run's record (`.hydra/` and `train.log` at the top). A failed attempt (a typo'd path, an offline hub) therefore never
touches what a finished run wrote, and every attempt stays readable on its own."""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

ATTEMPTS = "attempts"
ATTEMPT_ID = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"  # one per process: Hydra resolves it twice


def attempt_file(run_dir: str, name: str) -> str:
    """Hydra opens the job log before it creates any folder of ours: make the attempt's folder first."""
    folder = Path(run_dir) / ATTEMPTS / ATTEMPT_ID
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder / name)


def promote(run_dir: Path, log_name: str) -> None:
    """Makes this attempt the run's record: its `.hydra/` and its log replace the top-level ones, each atomically."""
    from domain_embed.rundir import atomic_write_text, publish_dir

    attempt = Path(run_dir) / ATTEMPTS / ATTEMPT_ID
    for handler in logging.getLogger().handlers:
        handler.flush()
    if (attempt / ".hydra").is_dir():
        with publish_dir(Path(run_dir) / ".hydra") as tmp:
            shutil.copytree(attempt / ".hydra", tmp, dirs_exist_ok=True)
    if (attempt / log_name).is_file():
        atomic_write_text(Path(run_dir) / log_name, (attempt / log_name).read_text(encoding="utf-8"))
