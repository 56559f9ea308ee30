"""Batching and tokenizing for `Embedder`: texts into token-budget batches, through one DataLoader per model.

A shard's length-sorted texts go to the tokenizer in runs of about `_CHUNK_BATCHES` batches (sized from characters);
each run is tokenized once and then cut by its real token counts, so that no batch passes
`max_batch_tokens`: padded batches count their padding (rows times the longest text), packed ones (flash attention,
no padding) the sum of their texts. A text without a single token (a tokenizer that adds no special tokens, an
empty text) goes in no batch: there is nothing to embed, its vector stays zero, and sentence-transformers' flattening
collator, which drops it, never shifts the rows of the others.

On a GPU the tokenizer runs in worker processes forked once per `Embedder` and kept for every shard and call: each
job travels to them through the loader's sampler, so nothing is forked again (`Loader`).
"""

from __future__ import annotations

import itertools
import time

_CHUNK_BATCHES = 4  # one tokenizer call covers about this many batches; the batches are cut from it exactly
_CHARS_PER_TOKEN = 4  # to size that call before tokenizing: the cut is exact, only the call's size is estimated
_COMPILE_BUCKET = 64  # compiled: sequences padded up to a multiple of this many tokens (few shapes to compile)


def _chunks(texts: list[str], tokens: int, window: int) -> list[tuple[int, list[str]]]:
    """Consecutive runs of `texts` of about `tokens` tokens each (estimated from characters), one tokenizer call
    each: (first row, texts). Only the call's size is estimated: the batches are cut from it by real tokens."""
    out, lo, size = [], 0, 0
    for i, text in enumerate(texts):
        size += min(window, len(text) // _CHARS_PER_TOKEN + 2)
        if size >= tokens or i == len(texts) - 1:
            out.append((lo, texts[lo:i + 1]))
            lo, size = i + 1, 0
    return out


def _runs(lengths: list[int], budget: int, padded: bool) -> list[tuple[int, int]]:
    """Consecutive row ranges [lo, hi) of texts with tokens, each within `budget` tokens: padded, its rows times its
    longest text; packed, the sum of its texts. One text over the budget goes alone; a text of no token in none."""
    out, lo, n = [], 0, len(lengths)
    while lo < n:
        if not lengths[lo]:
            lo += 1
            continue
        hi, longest, total = lo + 1, lengths[lo], lengths[lo]
        while hi < n and lengths[hi]:
            longest, total = max(longest, lengths[hi]), total + lengths[hi]
            if ((hi + 1 - lo) * longest if padded else total) > budget:
                break
            hi += 1
        out.append((lo, hi))
        lo = hi
    return out


def _cut(features: dict, budget: int) -> list[tuple[int, int, dict]]:
    """The padded `features` of a chunk cut into consecutive batches of at most `budget` tokens each (padding
    included; one text over it goes alone), each trimmed to its own longest text: the same tensors the tokenizer
    gives for those texts alone, with right or left padding."""
    mask = features["attention_mask"]
    out = []
    for lo, hi in _runs(mask.sum(1).tolist(), budget, padded=True):
        keep = mask[lo:hi].any(0)
        batch = {}
        for key, value in features.items():
            if hasattr(value, "shape") and value.dim() >= 1 and value.shape[0] == len(mask):
                value = value[lo:hi]
                if value.dim() >= 2 and value.shape[1] == mask.shape[1]:
                    value = value[:, keep]
            batch[key] = value
        out.append((lo, hi, batch))
    return out


def _cut_packed(features: dict, budget: int, empty: list[bool]) -> list[tuple[int, int, dict]]:
    """The packed `features` of a chunk (one flat sequence, sentence-transformers' flattening collator) cut into
    batches of at most `budget` real tokens each: the flat tensors sliced at text boundaries, the sequence bounds
    (`cu_seq_lens_*`, `seq_idx`, `max_length_*`) rebased to each batch. `empty`: the chunk's texts that the collator
    dropped (no token); the rows returned are the chunk's own."""
    cu = features["cu_seq_lens_q"]
    lengths = iter((cu[1:] - cu[:-1]).tolist())
    per_text = [0 if gone else next(lengths) for gone in empty]
    survivors = [0, *itertools.accumulate(not gone for gone in empty)]  # texts with tokens before each row
    width, out = features["input_ids"].shape[1], []
    for lo, hi in _runs(per_text, budget, padded=False):
        a, b = survivors[lo], survivors[hi]
        t0, t1 = int(cu[a]), int(cu[b])
        batch = {}
        for key, value in features.items():
            if key.startswith("cu_seq_lens"):
                value = value[a:b + 1] - value[a]
            elif key.startswith("max_length"):
                value = max(per_text[lo:hi])
            elif hasattr(value, "shape") and value.dim() == 2 and value.shape[1] == width:
                value = value[:, t0:t1] - a if key == "seq_idx" else value[:, t0:t1]
            batch[key] = value
        out.append((lo, hi, batch))
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


def _empty_texts(model, texts: list[str], prompt: str | None) -> list[bool]:
    """Which texts tokenize to nothing (the flattening collator drops them); asked only when it dropped some."""
    ids = model.tokenizer([(prompt or "") + text for text in texts])["input_ids"]
    return [not row for row in ids]


class _Tokenize:
    """The DataLoader's collate_fn: one job (first row, texts, prompt, token budget, bucket window) into batches of
    real and padded token counts. It runs in the worker processes when there are any (forked: the model is never
    pickled); the job carries everything that may change between calls."""

    def __init__(self, model):
        self.model = model

    def __call__(self, job: tuple) -> tuple[float, list[tuple[int, int, dict, int, int]]]:
        """`bucket_window`: compiled, batches are padded to length buckets up to this window; None: they are not."""
        t0 = time.perf_counter()
        first, texts, prompt, budget, bucket_window = job
        features = self.model.preprocess(texts, prompt=prompt or None)
        if "attention_mask" in features:  # padded: cut into token-budget batches
            tokenizer = self.model.tokenizer
            batches = _cut(features, budget)
            if bucket_window:
                batches = [(lo, hi, _pad_to_bucket(b, tokenizer.pad_token_id or 0, tokenizer.padding_side == "left",
                                                   bucket_window)) for lo, hi, b in batches]
            out = [(first + lo, first + hi, b, int(b["attention_mask"].sum()), b["attention_mask"].numel())
                   for lo, hi, b in batches]
        else:  # packed without padding (flash attention)
            empty = [False] * len(texts)
            if len(features["cu_seq_lens_q"]) - 1 < len(texts):
                empty = _empty_texts(self.model, texts, prompt)
                if len(texts) - sum(empty) != len(features["cu_seq_lens_q"]) - 1:
                    raise RuntimeError("cannot tell which texts the flattening collator dropped")
            out = [(first + lo, first + hi, b, b["input_ids"].numel(), b["input_ids"].numel())
                   for lo, hi, b in _cut_packed(features, budget, empty)]
        return time.perf_counter() - t0, out


class _Jobs:
    """The loader's sampler: the tokenizer jobs of the shard being encoded, replaced for each shard."""

    def __init__(self):
        self.jobs: list[tuple] = []

    def __iter__(self):
        return iter(self.jobs)

    def __len__(self) -> int:
        return len(self.jobs)


class _Identity:
    """The loader's dataset: `dataset[job]` is the job, so jobs reach the workers through the index queue."""

    def __getitem__(self, job):
        return job


class Loader:
    """One DataLoader for the lifetime of an `Embedder`: its tokenizer workers (persistent) are forked on the first
    shard and serve every later shard and call, instead of a fork per shard; batches come pinned on a GPU."""

    def __init__(self, model, workers: int, pin: bool):
        from torch.utils.data import DataLoader

        self._jobs = _Jobs()
        self._loader = DataLoader(_Identity(), batch_size=None, sampler=self._jobs, collate_fn=_Tokenize(model),
                                  num_workers=workers, pin_memory=pin, persistent_workers=workers > 0,
                                  multiprocessing_context="fork" if workers else None)

    def batches(self, texts: list[str], prompt: str, budget: int, window: int, bucket_window: int | None):
        """(tokenize seconds, [(lo, hi, features, real tokens, padded tokens)]) per tokenizer call over `texts`."""
        chunks = _chunks(texts, budget * _CHUNK_BATCHES, window)
        self._jobs.jobs = [(first, run, prompt, budget, bucket_window) for first, run in chunks]
        return iter(self._loader)
