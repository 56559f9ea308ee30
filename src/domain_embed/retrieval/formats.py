"""The cost of each vector format: quality against bytes per document for float32, int8 and binary vectors.

Every format is scored from the same fp32 vectors (the embedding cache) as an index stores and scores them: int8 as
FAISS's 8-bit scalar quantizer (`IndexScalarQuantizer`), binary with sentence-transformers' `quantize_embeddings` and
its rescoring, each with the shared best-window rule of `search_documents` and the shared metric code, so a row
differs from the plain dense ranking only by what storing the vectors in that format loses. The query stays float32
in every format, as it does in such an index.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sentence_transformers.util.quantization import quantize_embeddings

from domain_embed.config import EvalConfig, FormatsConfig
from domain_embed.data.domain import DomainData
from domain_embed.errors import ConfigError
from domain_embed.retrieval.evaluate import SystemResult, _score, truncate
from domain_embed.retrieval.search import (
    documents_by_best_window,
    scalar_quantized_8bit,
    search_documents,
    windows_by_doc,
)

PRECISIONS = ("float32", "int8", "binary")


@dataclass
class FormatResult:
    result: SystemResult
    bytes_per_document: float  # bytes of the stored window vectors / number of documents
    rescored: bool  # binary: candidates re-ranked with the fp32 query


def format_grid(cfg: FormatsConfig, full_dim: int, matryoshka_dims: Sequence[int]) -> list[tuple[int, str]]:
    """The (dims, precision) pairs to score, largest dims first; checked before any ranking so a typo costs
    nothing. Empty `dims`: the full dimension and every Matryoshka dimension the model was trained for."""
    if not cfg.precisions or not set(cfg.precisions) <= set(PRECISIONS):
        raise ConfigError(f"eval.formats.precisions={list(cfg.precisions)}: use some of {', '.join(PRECISIONS)}")
    dims = sorted(set(cfg.dims or [full_dim, *matryoshka_dims]), reverse=True)
    if not all(1 <= d <= full_dim for d in dims):
        raise ConfigError(f"eval.formats.dims: {dims} must lie in 1..{full_dim} (the model's dimension)")
    if cfg.rescore_depth < 1:
        raise ConfigError(f"eval.formats.rescore_depth: {cfg.rescore_depth} must be at least 1")
    return [(d, p) for d in dims for p in dict.fromkeys(cfg.precisions)]


def rank_format(queries: np.ndarray, corpus: np.ndarray, parents: np.ndarray, data: DomainData, split: str,
                dims: int, precision: str, cfg: EvalConfig) -> FormatResult:
    """Ranks `split` with the corpus windows stored as `precision` at `dims` (first dims, re-normalised).

    int8 is FAISS's 8-bit scalar quantizer, its per-dimension ranges trained on the corpus vectors (what an index
    holds once built): each window is stored as dims bytes, and the float32 query is scored against the vectors
    those codes decode to, exactly as `IndexScalarQuantizer` scores it (exact search). The query is not quantised:
    an index never stores it, and quantising it too (with offsets) adds an error that does not preserve the order.

    binary is the rescoring of the sentence-transformers quantization docs: the first stage ranks every window by
    Hamming distance (the dot product of the +-1 vectors, same order), then the top `rescore_depth` documents (at
    least max(k_values), so the ranking is as deep as the other formats') are re-scored with the fp32 query against
    the +-1 vectors of their windows. No fp32 document vector is needed, so a window still costs dims/8 bytes."""
    full = corpus.shape[1]
    q, c = (np.asarray(truncate(x, dims if dims < full else None), dtype=np.float32) for x in (queries, corpus))
    k, n_docs = max(cfg.k_values), len(data)
    if precision == "float32":
        stored = quantize_embeddings(c, "float32")
        res = search_documents(q, stored, parents, n_docs, k, cfg.search)
        indices, scores, backend = res.indices, res.scores, res.backend
    elif precision == "int8":
        stored, decoded = scalar_quantized_8bit(c)
        res = search_documents(q, decoded, parents, n_docs, k, cfg.search)
        indices, scores, backend = res.indices, res.scores, f"faiss-sq8({res.backend})"
    elif precision == "binary":
        stored = quantize_embeddings(c, "ubinary")
        signs = _signs(stored, dims)
        first = search_documents(_signs(quantize_embeddings(q, "ubinary"), dims), signs, parents, n_docs,
                                 max(k, cfg.formats.rescore_depth), cfg.search)
        indices, scores = _rescore(q, signs, parents, first.indices, k)
        backend = f"binary({first.backend})+rescore"
    else:
        raise ConfigError(f"eval.formats.precisions: unknown '{precision}' (known: {', '.join(PRECISIONS)})")
    result = _score(f"tuned-{precision}@{dims}", data, split, indices, scores, backend, cfg.k_values)
    return FormatResult(result, stored.nbytes / n_docs, precision == "binary")


def _signs(packed: np.ndarray, dims: int) -> np.ndarray:
    """Packed bits as +-1 float32 (padding bits of the last byte dropped): their dot product is dims - 2 x Hamming
    distance, so exact inner-product search over them is Hamming search."""
    return np.unpackbits(packed, axis=-1, count=dims).astype(np.float32) * 2 - 1


def _rescore(queries: np.ndarray, signs: np.ndarray, parents: np.ndarray, candidates: np.ndarray,
             k: int) -> tuple[np.ndarray, np.ndarray]:
    """Re-ranks each query's candidate documents (-1: none) by fp32 query . +-1 window vector, a document scoring its
    best window, and keeps the top k. Against sentence-transformers' query . {0,1} bits this differs by the
    per-query constant sum(query), so the order is the same. Ties keep the first stage's order."""
    windows_of = windows_by_doc(parents)
    scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    indices = np.full((len(queries), k), -1, dtype=np.int64)
    for row, (query, cand) in enumerate(zip(queries, candidates, strict=True)):
        win = np.concatenate([windows_of[d] for d in cand[cand >= 0]] or [np.empty(0, np.int64)])
        docs, best = documents_by_best_window(signs[win] @ query, parents[win])
        n = min(k, len(docs))
        scores[row, :n], indices[row, :n] = best[:n], docs[:n]
    return indices, scores
