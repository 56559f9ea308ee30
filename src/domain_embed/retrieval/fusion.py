"""Hybrid retrieval: one ranking from a dense and a BM25 ranking of the same queries.

Pure numpy over each system's top-`depth` lists (document positions and scores, shape (n_queries, depth), -1
padding allowed), so the rules are tested on hand-made rankings. A document only one side found gets only that
side's contribution; equal fused scores are ordered by document position, so the output is reproducible. On the
sparse side a score <= 0 means no query term matched (bm25s still fills the top `depth` with such documents): those
entries count as padding, so filler never earns fused credit."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Fusion:
    """How two rankings are fused: `rrf` (1 / (rrf_k + rank) per side) or `convex` (alpha x dense + (1 - alpha) x
    sparse, on per-query min-max normalised scores)."""

    method: str
    alpha: float | None = None  # convex only: weight of the dense side
    rrf_k: int = 60  # rrf only


def _rrf(indices: np.ndarray, rrf_k: int) -> np.ndarray:
    ranks = np.arange(1, indices.shape[1] + 1, dtype=np.float64)
    return np.where(indices >= 0, 1.0 / (rrf_k + ranks), 0.0)


def min_max(indices: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Scores mapped to [0, 1] per query over its valid entries; a list whose scores are all equal separates
    nothing (e.g. BM25 for a query with no indexed word) and contributes 0."""
    valid = indices >= 0
    s = scores.astype(np.float64)
    lo = np.where(valid, s, np.inf).min(axis=1, keepdims=True)
    span = np.where(valid, s, -np.inf).max(axis=1, keepdims=True) - lo  # -inf on an all-padding row
    with np.errstate(invalid="ignore"):
        return np.divide(s - lo, span, out=np.zeros_like(s), where=valid & (span > 0))


def fuse(dense: tuple[np.ndarray, np.ndarray], sparse: tuple[np.ndarray, np.ndarray], k: int,
         fusion: Fusion) -> tuple[np.ndarray, np.ndarray]:
    """Top-`k` fused (indices, scores) of a dense and a sparse (BM25) ranking, each (indices, scores), best first;
    rows with fewer than `k` distinct documents are padded with -1 / -inf."""
    (d_idx, d_scores), (s_idx, s_scores) = dense, sparse
    s_idx = np.where(s_scores > 0, s_idx, -1)  # no term match: not evidence for the document
    if fusion.method == "rrf":
        d_part, s_part = _rrf(d_idx, fusion.rrf_k), _rrf(s_idx, fusion.rrf_k)
    elif fusion.method == "convex":
        d_part = fusion.alpha * min_max(d_idx, d_scores)
        s_part = (1.0 - fusion.alpha) * min_max(s_idx, s_scores)
    else:
        raise ValueError(f"unknown fusion method {fusion.method!r} (rrf | convex)")
    docs = np.concatenate([d_idx, s_idx], axis=1).astype(np.int64)
    parts = np.concatenate([d_part, s_part], axis=1)
    # sort each row by document: a document both sides found sits in two adjacent cells, summed into the first
    order = np.argsort(docs, axis=1, kind="stable")
    docs, parts = np.take_along_axis(docs, order, axis=1), np.take_along_axis(parts, order, axis=1)
    dup = (docs[:, 1:] == docs[:, :-1]) & (docs[:, 1:] >= 0)
    parts[:, :-1] += np.where(dup, parts[:, 1:], 0.0)
    docs[:, 1:][dup] = -1
    fused = np.where(docs >= 0, parts, -np.inf)
    # best score first, then the lower document position; padding (-inf) last
    order = np.lexsort((np.where(docs >= 0, docs, np.iinfo(np.int64).max), -fused), axis=1)[:, :k]
    docs, fused = np.take_along_axis(docs, order, axis=1), np.take_along_axis(fused, order, axis=1)
    if docs.shape[1] < k:
        pad = k - docs.shape[1]
        docs = np.pad(docs, ((0, 0), (0, pad)), constant_values=-1)
        fused = np.pad(fused, ((0, 0), (0, pad)), constant_values=-np.inf)
    return np.where(np.isfinite(fused), docs, -1), fused
