"""Run-directory layout, manifests and atomic writes.

A stage writes into a temporary folder and renames it into place only when it finished, with a
manifest saying what produced it. A crash therefore never leaves a half-written stage that a rerun
would mistake for a finished one, and the previous outputs stay intact until the new ones are whole.
`publish_dir` is that one mechanism for every folder the package publishes: stage outputs, the saved
model and the embedding cache entries.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import stat
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

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
    """Write to a temp file in the same folder, fsync, then rename: readers see old or new, never half. The temp file
    is created like any other file (0666 less the umask): mkstemp's 0600 would become the published file's mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _identity(path: Path) -> tuple[int, int] | None:
    """What stands at `path` (the link itself for a symlink): a publish replaces it with a new inode."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


@contextmanager
def publish_dir(final: Path) -> Iterator[Path]:
    """Yields an empty temporary sibling of `final` to fill; renames it into place when the block succeeds.

    A failed block removes its temporary folder and never touches `final`. What stood at `final` when the block
    began (an earlier output, or a symlink to a shared one) is replaced; if another writer published `final`
    while this one worked, the first finished wins and this writer's folder is dropped, so two processes
    filling the same content-addressed key both end up reading one whole copy."""
    final.parent.mkdir(parents=True, exist_ok=True)
    seen = _identity(final)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"  # one per writer, even threads
    tmp.mkdir()  # not mkdtemp: its 0700 would become the published folder's mode
    try:
        yield tmp
        _follow_umask(tmp)
        if _identity(final) == seen:
            _swap_in(tmp, final)
        else:
            log.info("%s was published by another writer meanwhile: keeping theirs", final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already when it was renamed into place


def _follow_umask(folder: Path) -> None:
    """Grants each file under `folder` what the umask allows: libraries that write through a private temp file
    (safetensors: model.safetensors) leave 0600, which other users of a shared run directory could not read. The
    umask is read off `folder` itself, made with mkdir's 0777 (os.umask would have to change it to read it)."""
    allowed = 0o666 & stat.S_IMODE(folder.stat().st_mode)
    for path in folder.rglob("*"):
        mode = path.lstat().st_mode
        if stat.S_ISREG(mode) and stat.S_IMODE(mode) | allowed != stat.S_IMODE(mode):
            path.chmod(stat.S_IMODE(mode) | allowed)


def _swap_in(tmp: Path, final: Path) -> None:
    """Moves what stands at `final` aside, renames `tmp` into place, then drops the old one. A directory rename
    onto a non-empty directory fails, so a writer that lands in between wins; any other failure puts the old
    folder back."""
    old = tmp.with_name(tmp.name.replace(".tmp-", ".old-", 1))
    if final.is_symlink():
        final.unlink()
    elif final.exists():
        final.rename(old)
    try:
        tmp.rename(final)
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            if old.exists():
                old.rename(final)
            raise
        log.info("%s was published by another writer meanwhile: keeping theirs", final)
    finally:
        shutil.rmtree(old, ignore_errors=True)


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

    def is_linked(self, stage: str) -> bool:
        """Whether <run_dir>/<stage> is a sweep's shared output (`link_stage`), which every job reads and none edits."""
        return self.stage_dir(stage).is_symlink()

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
        with publish_dir(final or self.stage_dir(stage)) as tmp:
            extras: dict = {}
            started = time.time()
            yield tmp, extras
            finished = time.time()
            atomic_write_json(tmp / MANIFEST, {"stage": stage, "key": key, "inputs": inputs,
                                               "versions": package_versions(), "started": started,
                                               "finished": finished, "seconds": round(finished - started, 3),
                                               **extras})
