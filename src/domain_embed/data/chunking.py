"""Token-length audit and overlapping windows, with the model's own tokenizer.

Models silently truncate past max_seq_length; this module measures exactly how much would be lost
and, in `chunk` mode, splits long documents into windows that fit, so nothing is cut unseen.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

_TOKENIZE_BATCH = 2048


def token_lengths(tokenizer, texts: list[str], *, desc: str = "tokenize", progress: bool = True) -> np.ndarray:
    """Token count of each text including special tokens, exactly as the model would see it."""
    from transformers.utils import logging as hf_logging

    out = np.empty(len(texts), dtype=np.int64)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "longer than the maximum" is what we are measuring, not a problem
    for start in tqdm(range(0, len(texts), _TOKENIZE_BATCH), desc=desc, disable=not progress or
                      len(texts) <= _TOKENIZE_BATCH):
        enc = tokenizer(texts[start:start + _TOKENIZE_BATCH], add_special_tokens=True, truncation=False,
                        return_attention_mask=False, return_token_type_ids=False)
        out[start:start + len(enc["input_ids"])] = [len(ids) for ids in enc["input_ids"]]
    hf_logging.set_verbosity(verbosity)
    return out


def length_stats(lengths: np.ndarray, limit: int) -> dict:
    """What the report shows for one group of texts against the model's window."""
    if len(lengths) == 0:
        return {"count": 0}
    over = lengths > limit
    lost = np.clip(lengths - limit, 0, None)
    return {
        "count": len(lengths),
        "max": int(lengths.max()),
        "mean": round(float(lengths.mean()), 2),
        "p50": float(np.percentile(lengths, 50)),
        "p95": float(np.percentile(lengths, 95)),
        "p99": float(np.percentile(lengths, 99)),
        "limit": int(limit),
        "over_limit": int(over.sum()),
        "share_over_limit": round(float(over.mean()), 6),
        "tokens_lost": int(lost.sum()),
        "share_tokens_lost": round(float(lost.sum() / max(1, lengths.sum())), 6),
    }


@dataclass
class Windows:
    """Corpus view that is actually encoded: each window points at its parent document and char span."""

    parents: np.ndarray  # (n_windows,) int64 document positions
    starts: np.ndarray  # (n_windows,) int64 char offsets into the document text
    ends: np.ndarray

    @classmethod
    def identity(cls, texts: list[str]) -> Windows:
        n = len(texts)
        return cls(np.arange(n, dtype=np.int64), np.zeros(n, dtype=np.int64),
                   np.array([len(t) for t in texts], dtype=np.int64))

    def texts(self, documents: list[str]) -> list[str]:
        return [documents[p][s:e] for p, s, e in zip(self.parents, self.starts, self.ends, strict=True)]

    def __len__(self) -> int:
        return len(self.parents)

    def to_dict(self) -> dict:
        return {"parents": self.parents.tolist(), "starts": self.starts.tolist(), "ends": self.ends.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> Windows:
        return cls(*(np.asarray(d[key], dtype=np.int64) for key in ("parents", "starts", "ends")))


def make_windows(tokenizer, documents: list[str], lengths: np.ndarray, max_tokens: int,
                 overlap: int) -> Windows:
    """Splits documents longer than `max_tokens` into windows of whole words that fit, with
    `overlap` tokens shared by neighbours; documents that fit stay whole."""
    budget = max_tokens - tokenizer.num_special_tokens_to_add(pair=False)
    if budget <= overlap:
        raise ValueError(f"chunk overlap {overlap} must be smaller than the window's {budget} content tokens")
    parents, starts, ends = [], [], []
    for doc, (text, n) in enumerate(zip(documents, lengths, strict=True)):
        if n <= max_tokens:
            parents.append(doc)
            starts.append(0)
            ends.append(len(text))
            continue
        for s, e in _word_windows(tokenizer, text, budget, overlap):
            parents.append(doc)
            starts.append(s)
            ends.append(e)
    return Windows(np.asarray(parents, dtype=np.int64), np.asarray(starts, dtype=np.int64),
                   np.asarray(ends, dtype=np.int64))


def _word_windows(tokenizer, text: str, budget: int, overlap: int) -> list[tuple[int, int]]:
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, truncation=False)
    offsets = enc["offset_mapping"]
    words = enc.word_ids()
    # a window may only start and end on a word boundary, so re-tokenizing its text gives the same tokens
    starts_word = [i == 0 or words[i] is None or words[i] != words[i - 1] for i in range(len(offsets))]
    spans, start = [], 0
    n = len(offsets)
    while start < n:
        end = min(start + budget, n)
        if end < n:
            cut = end
            while cut > start and not starts_word[cut]:
                cut -= 1
            end = cut if cut > start else end  # a single word longer than the window is cut inside
        spans.append((offsets[start][0], offsets[end - 1][1]))
        if end >= n:
            break
        nxt = max(end - overlap, start + 1)
        while nxt > start + 1 and not starts_word[nxt]:
            nxt -= 1
        start = nxt
    return spans
