"""Model loading and cached encoding: the only place in the package that encodes text.

Each text list is encoded once per (model fingerprint, texts, max_seq_length, prompt, encode dtype, cache
dtype) and kept on disk as a memory-mapped .npy, so every later stage, run and sweep job reuses it. The texts are
encoded in contiguous shards, each published on its own before the entry is assembled: under a launcher the ranks
split the shards between them, and a killed encode resumes at the first shard it had not finished.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from domain_embed import distributed
from domain_embed.config import ModelConfig
from domain_embed.errors import ConfigError, ModelLoadError
from domain_embed.rundir import publish_dir

log = logging.getLogger(__name__)

_SKIP_IN_FINGERPRINT = {"README.md", ".gitattributes"}
_ENCODE_BLOCK = 1024  # texts per block: progress and memory granularity
_SHARD_ROWS = 256  # a shard is a multiple of this many texts ...
_MAX_SHARDS = 1024  # ... chosen so that there are at most about this many shards
_TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}  # model.encode_dtype -> torch name


def resolve_model_location(cfg: ModelConfig) -> str:
    """Local path if given, else packaged weights if installed (offline default), else the hub id."""
    if cfg.path:
        path = Path(cfg.path).expanduser()
        if not path.exists():
            raise ModelLoadError(f"model.path '{cfg.path}' does not exist")
        return str(path.resolve())
    if cfg.packaged:
        try:
            module = importlib.import_module(cfg.packaged)
        except ImportError:
            log.info("packaged weights '%s' not installed; using hub id %s", cfg.packaged, cfg.hub_id)
        else:
            return str(module.get_model_path())
    return cfg.hub_id


def resolve_encode_dtype(encode_dtype: str, device: str | None) -> str:
    """`auto` is settled from the device setting, never from a loaded model: the result is part of the cache key,
    and a cache hit must not load the model."""
    if encode_dtype in _TORCH_DTYPES:
        return encode_dtype  # bf16 and fp16 are honoured on CPU too: torch runs both there (fp16 slowly)
    if encode_dtype != "auto":
        raise ConfigError(f"unknown model.encode_dtype '{encode_dtype}' (expected auto, fp32, bf16 or fp16)")
    import torch

    from domain_embed.devices import half_dtype

    if torch.cuda.is_available() and (device is None or device.startswith("cuda")):
        return "bf16" if half_dtype() == torch.bfloat16 else "fp16"
    return "fp32"


def _hash_directory(path: Path) -> str:
    h = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file() and p.name not in _SKIP_IN_FINGERPRINT):
        h.update(str(file.relative_to(path)).encode())
        with file.open("rb") as f:
            while block := f.read(1 << 22):
                h.update(block)
    return h.hexdigest()


def _hub_commit(repo_id: str, revision: str | None) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    if isinstance(found, str):
        return Path(found).parent.name  # .../snapshots/<commit>/config.json
    return None


def texts_fingerprint(texts: list[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode())
        h.update(b"\x1e")
    return h.hexdigest()


def shard_bounds(n: int) -> list[tuple[int, int]]:
    """The contiguous row ranges [lo, hi) that n texts are encoded in: a function of n alone, never of the number of
    ranks. Each shard is encoded by one process, in the same batches whatever the ranks, so a sharded entry is
    byte-identical to a single-process one and any run resumes from any other's shards. 256 texts each up to
    262,144 texts (enough shards to keep 8 ranks even), then larger: at most 1,024 shard files per entry."""
    rows = _SHARD_ROWS * max(1, -(-n // (_SHARD_ROWS * _MAX_SHARDS)))
    return [(lo, min(lo + rows, n)) for lo in range(0, n, rows)]


def encode_order(texts: list[str]) -> np.ndarray:
    """The row order the shards follow (shard [lo, hi) encodes texts[order[lo:hi]]), a function of the texts alone.
    Longest first, so that a batch pads to texts of about its own length (contiguous row ranges would pad every
    batch to its longest text: 1.4x the tokens at batch 64 on ObliQA, 3x at batch 256); the full shards alternate
    long and short, so that a contiguous run of shards, a rank's share, gets about an even part of the work."""
    by_length = np.argsort([-len(t) for t in texts], kind="stable")
    chunks = [by_length[lo:hi] for lo, hi in shard_bounds(len(texts))]
    full = chunks[:-1] if len(chunks) > 1 and len(chunks[-1]) < len(chunks[0]) else chunks
    alternating = [full[i // 2] if i % 2 == 0 else full[-1 - i // 2] for i in range(len(full))]
    return np.concatenate([*alternating, *chunks[len(full):]]) if chunks else by_length


def _is_entry(final: Path) -> bool:
    return (final / "meta.json").exists()


@dataclass
class EncodeStats:
    corpus_encodes: int = 0  # full corpus encodings computed (cache misses), counted once, on rank 0
    shards_encoded: int = 0  # shards this process encoded (a resumed encode skips the finished ones)
    texts_encoded: int = 0  # texts this process encoded
    cache_hits: int = 0
    seconds: float = 0.0


class Embedder:
    """A sentence-transformers model with lazy loading and an on-disk embedding cache."""

    def __init__(self, cfg: ModelConfig, *, cache_dir: str | Path | None, device: str | None = None,
                 batch_size: int = 64, max_seq_length: int | None = None, cache_dtype: str = "float32",
                 show_progress: bool = True):
        self.cfg = cfg
        self.location = resolve_model_location(cfg)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.device = None if device in (None, "auto") else device
        self.encode_dtype = resolve_encode_dtype(cfg.encode_dtype, self.device)
        self.batch_size = batch_size
        self._max_seq_length = max_seq_length or cfg.max_seq_length
        self.cache_dtype = np.dtype(cache_dtype)
        self.show_progress = show_progress
        self.stats = EncodeStats()

    @cached_property
    def model(self):
        """Loaded straight in the encode dtype (no float32 copy on the GPU first); sentence-transformers casts the
        modules after the transformer to match. An explicit dtype also overrides transformers' default of the
        checkpoint's own dtype, so fp32 really is fp32."""
        import torch
        from sentence_transformers import SentenceTransformer

        t0 = time.perf_counter()
        try:
            model = SentenceTransformer(self.location, device=self.device, revision=self.cfg.revision,
                                        trust_remote_code=self.cfg.trust_remote_code,
                                        model_kwargs={"dtype": getattr(torch, _TORCH_DTYPES[self.encode_dtype])})
        except Exception as exc:  # the hub, the filesystem and transformers all raise different types
            hint = " (offline? set model.path to a local copy)" if "/" in self.location else ""
            raise ModelLoadError(f"cannot load model '{self.location}': {exc.__class__.__name__}: "
                                 f"{str(exc).splitlines()[0] if str(exc) else ''}{hint}") from exc
        if self._max_seq_length:
            model.max_seq_length = self._max_seq_length
        log.info("loaded %s on %s in %.1fs (max_seq_length=%s, dtype=%s)", self.location, model.device,
                 time.perf_counter() - t0, model.max_seq_length, model.dtype)
        return model

    @property
    def tokenizer(self):
        return self.model.tokenizer

    @property
    def max_seq_length(self) -> int:
        """The window the model really sees: its max_seq_length, capped by the tokenizer's limit."""
        limit = self.model.max_seq_length
        tok_limit = getattr(self.tokenizer, "model_max_length", None)
        if tok_limit and tok_limit < 1_000_000:
            limit = min(limit, tok_limit)
        return int(limit)

    @cached_property
    def fingerprint(self) -> str:
        """Identity of the weights: content hash for a local directory, commit for a hub snapshot."""
        path = Path(self.location)
        if path.is_dir():
            return "dir:" + _hash_directory(path)
        commit = _hub_commit(self.location, self.cfg.revision)
        if commit is None:
            _ = self.model  # downloads (or fails clearly) and fills the hub cache
            commit = _hub_commit(self.location, self.cfg.revision) or (self.cfg.revision or "unknown")
        return f"hub:{self.location}@{commit}"

    def _cache_key(self, texts_hash: str, prompt: str) -> str:
        # the requested length, not the effective one: the fingerprint already covers the model's own
        # default, and this way a cache hit never has to load the model
        parts = [self.fingerprint, texts_hash, str(self._max_seq_length), prompt, str(self.cfg.normalize),
                 self.cache_dtype.name, self.encode_dtype]
        return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        return self._encode(texts, self.cfg.query_prompt, what="queries")

    def encode_documents(self, texts: list[str], *, is_corpus: bool = True) -> np.ndarray:
        """Encodes documents; a full-corpus call that misses the cache counts in `corpus_encodes`."""
        return self._encode(texts, self.cfg.document_prompt, what="corpus" if is_corpus else "documents")

    def _encode(self, texts: list[str], prompt: str, what: str) -> np.ndarray:
        """Cached: rank 0 decides hit or miss for every rank. On a miss each rank encodes its unfinished shards (all
        of them in a single process), rank 0 assembles the entry while the others wait, and every rank reads it."""
        bounds, order = shard_bounds(len(texts)), encode_order(texts)
        ordered = [texts[i] for i in order]
        if self.cache_dir is None:  # nothing to resume or share: this process encodes everything
            out = np.empty((len(texts), self.dim), dtype=self.cache_dtype)
            t0, bar = time.perf_counter(), self._bar(what, len(texts))
            for lo, hi in bounds:
                out[order[lo:hi]] = self._compute(ordered[lo:hi], prompt,
                                                  np.empty((hi - lo, self.dim), dtype=self.cache_dtype), bar)
            bar.close()
            self._count(what, bounds, len(bounds), time.perf_counter() - t0)
            return out
        key = self._cache_key(texts_fingerprint(texts), prompt)
        final = self.cache_dir / "embeddings" / key
        if distributed.main_only(_is_entry)(final):
            self.stats.cache_hits += 1
            log.info("%s embeddings: cache hit %s (%d texts)", what, final, len(texts))
            return np.load(final / "embeddings.npy", mmap_mode="r")
        shards = final.with_name(f"{key}.shards")
        todo = [bounds[i] for i in distributed.share(len(bounds)) if not _shard(shards, *bounds[i]).is_dir()]
        bar = self._bar(what, len(texts))

        def progress() -> None:  # every rank's finished shards, from the disk they share
            bar.n = sum(hi - lo for lo, hi in bounds if _shard(shards, lo, hi).is_dir())
            bar.refresh()

        shown = progress if not bar.disable else None
        if shown:
            progress()
        t0 = time.perf_counter()
        distributed.gather(lambda: self._encode_shards(ordered, prompt, todo, shards, bar, shown),
                           while_waiting=shown)
        bar.close()
        self._count(what, todo, len(bounds), time.perf_counter() - t0)
        distributed.main_only(self._assemble)(final, shards, bounds, order, prompt, what)
        return np.load(final / "embeddings.npy", mmap_mode="r")

    def _bar(self, what: str, total: int) -> tqdm:
        """One bar per encode, on rank 0 only: under a launcher it counts every rank's texts."""
        return tqdm(total=total, desc=f"encode {what}", unit="text",
                    disable=not (self.show_progress and distributed.is_main()))

    def _encode_shards(self, ordered: list[str], prompt: str, todo: list[tuple[int, int]], shards: Path, bar: tqdm,
                       progress: Callable[[], None] | None) -> None:
        """Publishes each shard whole (`publish_dir`), so a killed encode leaves only finished shards behind.
        `ordered`: the texts in `encode_order`."""
        for lo, hi in todo:
            with publish_dir(_shard(shards, lo, hi)) as tmp:
                out = np.lib.format.open_memmap(tmp / "embeddings.npy", mode="w+", dtype=self.cache_dtype,
                                                shape=(hi - lo, self.dim))
                self._compute(ordered[lo:hi], prompt, out, bar)
                out.flush()
                del out
            if progress:
                progress()

    def _assemble(self, final: Path, shards: Path, bounds: list[tuple[int, int]], order: np.ndarray, prompt: str,
                  what: str) -> None:
        """The entry from its shards, each row back at its text's position (the same bytes whoever encoded them); of
        two writers of this key the first to finish wins. The shards go once the entry is in place."""
        n = bounds[-1][1] if bounds else 0
        with publish_dir(final) as tmp:
            out = np.lib.format.open_memmap(tmp / "embeddings.npy", mode="w+", dtype=self.cache_dtype,
                                            shape=(n, self.dim))
            for lo, hi in bounds:
                out[order[lo:hi]] = np.load(_shard(shards, lo, hi) / "embeddings.npy", mmap_mode="r")
            out.flush()
            del out
            meta = {"model": self.location, "fingerprint": self.fingerprint, "n": n, "dim": self.dim,
                    "dtype": self.cache_dtype.name, "encode_dtype": self.encode_dtype,
                    "max_seq_length": self.max_seq_length, "prompt": prompt, "normalize": self.cfg.normalize,
                    "what": what, "created": time.time()}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        shutil.rmtree(shards, ignore_errors=True)

    def _count(self, what: str, encoded: list[tuple[int, int]], shards: int, seconds: float) -> None:
        rows = sum(hi - lo for lo, hi in encoded)
        self.stats.shards_encoded += len(encoded)
        self.stats.texts_encoded += rows
        if what == "corpus" and distributed.is_main():  # one encode, however many ranks shared it
            self.stats.corpus_encodes += 1
        if encoded:
            log.info("encoded %d %s texts (%d of %d shards) in %.1fs (%.0f/s, %s, batch %d)", rows, what, len(encoded),
                     shards, seconds, rows / max(seconds, 1e-9), self.encode_dtype, self.batch_size)

    @property
    def dim(self) -> int:
        return int(self.model.get_embedding_dimension())

    def _compute(self, texts: list[str], prompt: str, out: np.ndarray, bar: tqdm) -> np.ndarray:
        """Encodes in blocks (texts come longest first, `encode_order`: less padding, an early OOM), writing rows in
        place. Vectors leave the model as float32 and are normalised there, so a half-precision encode still stores
        unit-length vectors."""
        import torch

        t0 = time.perf_counter()
        for start in range(0, len(texts), _ENCODE_BLOCK):
            idx = slice(start, start + _ENCODE_BLOCK)
            emb = self.model.encode(texts[idx], prompt=prompt or None, batch_size=self.batch_size,
                                    convert_to_tensor=True, show_progress_bar=False).float()
            if self.encode_dtype != "fp32" and not torch.isfinite(emb).all():  # half overflows in some models
                raise ConfigError(f"{self.location} gave non-finite embeddings with model.encode_dtype="
                                  f"{self.encode_dtype}: set model.encode_dtype=fp32 (or bf16 on a GPU that has it)")
            if self.cfg.normalize:
                emb = torch.nn.functional.normalize(emb, dim=1)
            out[idx] = emb.cpu().numpy().astype(self.cache_dtype, copy=False)
            bar.update(len(emb))
        self.stats.seconds += time.perf_counter() - t0
        return out


def _shard(shards: Path, lo: int, hi: int) -> Path:
    return shards / f"{lo}-{hi}"
