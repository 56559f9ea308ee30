"""The shard store of `Embedder`'s cache: which rows a shard holds, where it lives, and how it is written.

A shard is published whole (`publish_dir`), so a killed encode leaves only finished shards behind. Its write (the
wait for its copy to the host, the finite check, the memmap write, flush and publish) runs on a thread of its own
(`Writer`) while the next shard computes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from domain_embed.rundir import publish_dir

_MAX_SHARDS = 1024  # a shard is a multiple of `shard_rows` texts, at most about this many shards per entry


def shard_bounds(n: int, rows: int) -> list[tuple[int, int]]:
    """The contiguous row ranges [lo, hi) that n texts are encoded in: a function of n and the shard size alone,
    never of the number of ranks. Each shard is encoded by one process, in the same batches whatever the ranks, so a
    sharded entry is byte-identical to a single-process one and any run resumes from any other's shards. `rows` texts
    each up to 1,024 shards, then larger: at most 1,024 shard files per entry."""
    rows = rows * max(1, -(-n // (rows * _MAX_SHARDS)))
    return [(lo, min(lo + rows, n)) for lo in range(0, n, rows)]


def encode_order(texts: list[str], rows: int) -> np.ndarray:
    """The row order the shards follow (shard [lo, hi) encodes texts[order[lo:hi]]), a function of the texts alone.
    Longest first, so that a batch pads to texts of about its own length (contiguous row ranges would pad every
    batch to its longest text: 1.4x the tokens at batch 64 on ObliQA, 3x at batch 256); the full shards alternate
    long and short, so that a contiguous run of shards, a rank's share, gets about an even part of the work."""
    by_length = np.argsort([-len(t) for t in texts], kind="stable")
    chunks = [by_length[lo:hi] for lo, hi in shard_bounds(len(texts), rows)]
    full = chunks[:-1] if len(chunks) > 1 and len(chunks[-1]) < len(chunks[0]) else chunks
    alternating = [full[i // 2] if i % 2 == 0 else full[-1 - i // 2] for i in range(len(full))]
    return np.concatenate([*alternating, *chunks[len(full):]]) if chunks else by_length


def is_entry(final: Path) -> bool:
    return (final / "meta.json").exists()


def shard_dir(shards: Path, lo: int, hi: int) -> Path:
    return shards / f"{lo}-{hi}"


def finished(shards: Path) -> set[tuple[int, int]]:
    """The shards published in `shards` (one directory listing; unfinished ones are hidden temporary folders)."""
    try:
        names = os.listdir(shards)
    except FileNotFoundError:
        return set()
    return {(int(lo), int(hi)) for lo, _, hi in (name.partition("-") for name in names if not name.startswith("."))}


def publish_shard(path: Path, vectors: np.ndarray) -> None:
    """One shard's vectors, written through a memmap and flushed, then published whole."""
    with publish_dir(path) as tmp:
        out = np.lib.format.open_memmap(tmp / "embeddings.npy", mode="w+", dtype=vectors.dtype, shape=vectors.shape)
        out[:] = vectors
        out.flush()
        del out


class Writer:
    """Finishes shards on one thread while the encoding thread computes the next: at most one shard waits there
    (two shards' vectors on the host at a time). A failed write raises in the encoding thread at the next `submit`
    or at the block's end; leaving the block, even by an error, first finishes the shard that was submitted, so a
    shard that was computed is published."""

    def __init__(self):
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-writer")
        self._pending: Future | None = None

    def submit(self, write: Callable[[], None]) -> None:
        self.wait()
        self._pending = self._pool.submit(write)

    def wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        try:
            if kind is None:
                self.wait()
            elif self._pending is not None:
                self._pending.exception()  # finished (published or failed); the block's own error is the one raised
        finally:
            self._pool.shutdown(wait=True)
