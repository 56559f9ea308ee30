"""The evaluator every stage shares: rank the corpus for a split's queries and score the ranking.

Baseline, tuned model and candidate models all go through `evaluate_dense`, so their numbers are
comparable by construction; BM25 goes through `evaluate_bm25` and the same metric code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from domain_embed.config import EvalConfig
from domain_embed.data.chunking import Windows
from domain_embed.data.domain import DomainData
from domain_embed.retrieval.bm25 import BM25Index
from domain_embed.retrieval.embed import Embedder
from domain_embed.retrieval.metrics import PerQueryMetrics, compute_metrics
from domain_embed.retrieval.search import search_documents


@dataclass
class SystemResult:
    name: str
    metrics: PerQueryMetrics
    indices: np.ndarray  # (n_queries, k) document positions, best first
    scores: np.ndarray
    backend: str


def _score(name: str, data: DomainData, split: str, indices: np.ndarray, scores: np.ndarray, backend: str,
           k_values: list[int]) -> SystemResult:
    qids, _, qrels = data.split(split)
    ids = np.asarray(data.corpus_ids, dtype=object)
    ranked = [ids[row].tolist() for row in indices]
    return SystemResult(name, compute_metrics(ranked, qids, qrels, k_values), indices, scores, backend)


def truncate(emb: np.ndarray, dims: int | None) -> np.ndarray:
    """First `dims` coordinates, re-normalised: how a Matryoshka embedding is used at lower cost."""
    if dims is None:
        return emb
    out = np.asarray(emb[:, :dims], dtype=np.float32)
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def evaluate_dense(name: str, embedder: Embedder, data: DomainData, windows: Windows, split: str,
                   cfg: EvalConfig, use_title: bool = True, *, dims: int | None = None,
                   is_corpus: bool = True) -> SystemResult:
    """Encodes the corpus windows (cached) and the split's queries, then exact search. `is_corpus=False`
    for a side corpus (e.g. another domain) that must not count as this run's corpus encode."""
    documents = data.documents(use_title)
    corpus = truncate(embedder.encode_documents(windows.texts(documents), is_corpus=is_corpus), dims)
    _, query_texts, _ = data.split(split)
    queries = truncate(embedder.encode_queries(query_texts), dims)
    res = search_documents(queries, corpus, windows.parents, len(documents), max(cfg.k_values), cfg.search)
    return _score(name, data, split, res.indices, res.scores, res.backend, cfg.k_values)


def evaluate_bm25(data: DomainData, split: str, cfg: EvalConfig, use_title: bool = True) -> SystemResult:
    """BM25 sees whole documents: it has no window, so it is the untruncated reference."""
    index = BM25Index(data.documents(use_title), cfg.bm25)
    _, query_texts, _ = data.split(split)
    indices, scores = index.search(query_texts, max(cfg.k_values))
    return _score("bm25", data, split, indices, scores, "bm25s", cfg.k_values)
