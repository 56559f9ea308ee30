"""Each invocation writes its config and log under `<run_dir>/attempts/<id>/`; only one that succeeds becomes the
run's record (`.hydra/` and `train.log` at the top). A failed attempt (a typo'd path, an offline hub) therefore never
touches what a finished run wrote, and an attempt that finished a stage stays readable on its own. A start that fails
with a user error before any stage finished leaves no folder behind (its one-line error says it all): a typo'd
data.path would otherwise leave a run directory named after the wrong path."""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

from domain_embed.rundir import MANIFEST, atomic_write_text, publish_dir

ATTEMPTS = "attempts"
STARTED = time.time()
ATTEMPT_ID = f"{time.strftime('%Y%m%d-%H%M%S', time.localtime(STARTED))}-{os.getpid()}"  # one per process
_claimed: tuple[Path, Path] | None = None  # (run directory, the outermost folder this attempt creates): claim()


def attempt_file(run_dir: str, name: str) -> str:
    """Hydra opens the job log before it creates any folder of ours: make the attempt's folder first."""
    folder = Path(run_dir) / ATTEMPTS / ATTEMPT_ID
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder / name)


def claim(run_dir: str | Path) -> None:
    """Notes the outermost folder of this attempt's path that does not exist yet; call before anything creates it."""
    global _claimed
    path = (Path(run_dir) / ATTEMPTS / ATTEMPT_ID).absolute()
    while not path.parent.exists():
        path = path.parent
    _claimed = (Path(run_dir), path)


def discard_if_nothing_finished() -> None:
    """After a failed start: removes the folder claim() noted unless a stage finished since this attempt began (its
    manifest is newer), so a failure before any stage leaves no new folder and a later one keeps its record."""
    global _claimed
    if _claimed is None:
        return
    run_dir, created = _claimed
    _claimed = None
    if not any(m.stat().st_mtime >= STARTED for m in run_dir.glob(f"*/{MANIFEST}")):
        shutil.rmtree(created, ignore_errors=True)


def promote(run_dir: Path, log_name: str) -> None:
    """Makes this attempt the run's record: its `.hydra/` and its log replace the top-level ones, each atomically."""
    attempt = Path(run_dir) / ATTEMPTS / ATTEMPT_ID
    for handler in logging.getLogger().handlers:
        handler.flush()
    if (attempt / ".hydra").is_dir():
        with publish_dir(Path(run_dir) / ".hydra") as tmp:
            shutil.copytree(attempt / ".hydra", tmp, dirs_exist_ok=True)
    if (attempt / log_name).is_file():
        atomic_write_text(Path(run_dir) / log_name, (attempt / log_name).read_text(encoding="utf-8"))
