"""Run-directory layout, manifests and atomic writes.

A stage writes into a temporary folder and renames it into place only when it finished, with a
manifest saying what produced it. A crash therefore never leaves a half-written stage that a rerun
would mistake for a finished one, and the previous outputs stay intact until the new ones are whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
_VERSIONED = ("domain-embed", "torch", "sentence-transformers", "transformers", "accelerate", "datasets",
              "hydra-core", "faiss-cpu", "faiss-gpu-cu12", "bm25s", "numpy")


def package_versions() -> dict[str, str]:
    versions = {}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def stable_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temp file in the same folder, fsync, then rename: readers see old or new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


class RunDir:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    def manifest(self, stage: str) -> dict | None:
        path = self.stage_dir(stage) / MANIFEST
        return read_json(path) if path.exists() else None

    def is_done(self, stage: str, key: str) -> bool:
        manifest = self.manifest(stage)
        return manifest is not None and manifest.get("key") == key

    def link_stage(self, stage: str, target: Path) -> None:
        """Points <run_dir>/<stage> at a shared, content-addressed output (atomic symlink swap)."""
        link = self.stage_dir(stage)
        tmp = self.root / f".{stage}.link-{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(target.resolve(), target_is_directory=True)
        if link.exists() and not link.is_symlink():
            shutil.rmtree(link)
        os.replace(tmp, link)

    @contextmanager
    def stage_output(self, stage: str, key: str, inputs: dict, final: Path | None = None
                     ) -> Iterator[tuple[Path, dict]]:
        """Yields (temp folder, manifest extras); publishes both atomically into `final` (by default
        <run_dir>/<stage>) when the block succeeds."""
        final = final or self.stage_dir(stage)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        extras: dict = {}
        started = time.time()
        try:
            yield tmp, extras
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        manifest = {"stage": stage, "key": key, "inputs": inputs, "versions": package_versions(),
                    "started": started, "finished": time.time(),
                    "seconds": round(time.time() - started, 3), **extras}
        atomic_write_json(tmp / MANIFEST, manifest)
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        if final.is_symlink():
            final.unlink()
        elif final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
