"""The evaluator every stage shares: rank the corpus for a split's queries and score the ranking.

Baseline, tuned model and candidate models all go through `evaluate_dense`, so their numbers are
comparable by construction; BM25 goes through `evaluate_bm25` and the same metric code, and the hybrids
(BM25 fused with a dense model) through `evaluate_hybrid`, whose free settings are chosen on the dev split.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from domain_embed.config import EvalConfig, FusionMethod, HybridConfig
from domain_embed.data.chunking import Windows
from domain_embed.data.domain import DomainData
from domain_embed.errors import ConfigError
from domain_embed.retrieval.bm25 import BM25Index
from domain_embed.retrieval.embed import Embedder
from domain_embed.retrieval.fusion import Fusion, fuse
from domain_embed.retrieval.metrics import PerQueryMetrics, compute_metrics
from domain_embed.retrieval.search import search_documents

log = logging.getLogger(__name__)

DEV_SPLIT = "dev"


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
    ranked = [ids[row[row >= 0]].tolist() for row in indices]  # -1: fewer documents than k
    return SystemResult(name, compute_metrics(ranked, qids, qrels, k_values), indices, scores, backend)


def truncate(emb: np.ndarray, dims: int | None) -> np.ndarray:
    """First `dims` coordinates, re-normalised: how a Matryoshka embedding is used at lower cost."""
    if dims is None:
        return emb
    out = np.asarray(emb[:, :dims], dtype=np.float32)
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def rank_dense(name: str, embedder: Embedder, data: DomainData, windows: Windows, splits: Sequence[str],
               cfg: EvalConfig, use_title: bool = True, *, dims: int | None = None, is_corpus: bool = True,
               depth: int = 0) -> dict[str, SystemResult]:
    """`evaluate_dense` for several splits over one corpus encode, each ranked `depth` deep when that is more
    than max(k) (a hybrid fuses deeper lists than the metrics read)."""
    documents = data.documents(use_title)
    corpus = truncate(embedder.encode_documents(windows.texts(documents), is_corpus=is_corpus), dims)
    out = {}
    for split in splits:
        _, query_texts, _ = data.split(split)
        queries = truncate(embedder.encode_queries(query_texts), dims)
        res = search_documents(queries, corpus, windows.parents, len(documents), max(*cfg.k_values, depth),
                               cfg.search)
        out[split] = _score(name, data, split, res.indices, res.scores, res.backend, cfg.k_values)
    return out


def evaluate_dense(name: str, embedder: Embedder, data: DomainData, windows: Windows, split: str,
                   cfg: EvalConfig, use_title: bool = True, *, dims: int | None = None,
                   is_corpus: bool = True) -> SystemResult:
    """Encodes the corpus windows (cached) and the split's queries, then exact search. `is_corpus=False`
    for a side corpus (e.g. another domain) that must not count as this run's corpus encode."""
    return rank_dense(name, embedder, data, windows, [split], cfg, use_title, dims=dims, is_corpus=is_corpus)[split]


def rank_bm25(data: DomainData, splits: Sequence[str], cfg: EvalConfig, use_title: bool = True,
              depth: int = 0) -> dict[str, SystemResult]:
    """`evaluate_bm25` for several splits over one index, `depth` deep as in `rank_dense`."""
    index = BM25Index(data.documents(use_title), cfg.bm25, show_progress=True)  # minutes on a large corpus
    out = {}
    for split in splits:
        _, query_texts, _ = data.split(split)
        indices, scores = index.search(query_texts, max(*cfg.k_values, depth))
        out[split] = _score("bm25", data, split, indices, scores, "bm25s", cfg.k_values)
    return out


def evaluate_bm25(data: DomainData, split: str, cfg: EvalConfig, use_title: bool = True) -> SystemResult:
    """BM25 sees whole documents: it has no window, so it is the untruncated reference."""
    return rank_bm25(data, [split], cfg, use_title)[split]


def fusion_options(h: HybridConfig) -> list[Fusion]:
    """The fusions the config leaves open, RRF first (parameter-free, so it wins ties on dev)."""
    alphas = h.alpha_grid if h.alpha is None else [h.alpha]
    if not alphas or not all(0.0 <= a <= 1.0 for a in alphas) or h.depth < 1 or h.rrf_k < 1:
        raise ConfigError(f"eval.hybrid: alpha and alpha_grid need values in [0, 1], depth and rrf_k >= 1; got "
                          f"alpha={h.alpha}, alpha_grid={list(h.alpha_grid)}, depth={h.depth}, rrf_k={h.rrf_k}")
    rrf = [Fusion("rrf", rrf_k=h.rrf_k)] if h.method in (FusionMethod.auto, FusionMethod.rrf) else []
    convex = [Fusion("convex", alpha=a) for a in alphas] if h.method != FusionMethod.rrf else []
    return rrf + convex


def scored_splits(cfg: EvalConfig, data: DomainData) -> list[str]:
    """The splits every system is scored on: the evaluated one, and dev where the data has it and it is not the
    evaluated one (the recommendation is chosen on dev; the evaluated split only reports its figures)."""
    return [cfg.split] + ([DEV_SPLIT] if DEV_SPLIT in data.qrels and cfg.split != DEV_SPLIT else [])


def hybrid_skipped(cfg: EvalConfig, data: DomainData) -> str | None:
    """Why no hybrid is scored, with the key that changes it; None when one is (its fusion fixed by the config, or
    chosen on the dev split that `scored_splits` then ranks)."""
    h = cfg.hybrid
    if not h.enabled:
        return "`eval.hybrid.enabled` is false"
    if not cfg.bm25.enabled:
        return "`eval.bm25.enabled` is false, and a hybrid fuses BM25 with a dense model"
    if len(fusion_options(h)) == 1:
        return None
    fixed = "or fix the fusion (`eval.hybrid.method=rrf`, or `method=convex` with `eval.hybrid.alpha`)"
    if cfg.split == DEV_SPLIT:
        return f"the fusion is chosen on the dev split, which is the evaluated split here; {fixed}"
    if DEV_SPLIT not in data.qrels:
        return f"no dev split to choose the fusion on (never the evaluated split): add one, {fixed}"
    return None


def _fused(name: str, fusion: Fusion, dense: SystemResult, sparse: SystemResult, data: DomainData, split: str,
           cfg: EvalConfig) -> SystemResult:
    d = cfg.hybrid.depth
    indices, scores = fuse((dense.indices[:, :d], dense.scores[:, :d]), (sparse.indices[:, :d], sparse.scores[:, :d]),
                           max(cfg.k_values), fusion)
    return _score(name, data, split, indices, scores, f"{fusion.method}({dense.backend}+{sparse.backend})",
                  cfg.k_values)


def evaluate_hybrid(name: str, dense: Mapping[str, SystemResult], sparse: Mapping[str, SystemResult],
                    data: DomainData, cfg: EvalConfig, fusion: Fusion | None = None
                    ) -> tuple[dict[str, SystemResult], dict]:
    """The fused system on every split both sides were ranked on, and how it was fused: `fusion`, else the one
    option the config leaves, else the best option on the dev split by `cfg.primary_metric` (first in
    `fusion_options` order on a tie); so its dev figures are those of the setting chosen there."""
    options = [fusion] if fusion is not None else fusion_options(cfg.hybrid)
    grid = []
    if len(options) > 1:
        grid = [{**asdict(o), "value": _fused(name, o, dense[DEV_SPLIT], sparse[DEV_SPLIT], data, DEV_SPLIT, cfg)
                 .metrics.mean()[cfg.primary_metric]} for o in options]
        options = [options[int(np.argmax([g["value"] for g in grid]))]]
        log.info("%s: %s chosen on the %s split (%s %.4f)", name, options[0], DEV_SPLIT, cfg.primary_metric,
                 max(g["value"] for g in grid))
    chosen = options[0]
    info = {**asdict(chosen), "depth": cfg.hybrid.depth, "dev_split": DEV_SPLIT if grid else None,
            "dev_metric": cfg.primary_metric, "dev_value": max(g["value"] for g in grid) if grid else None,
            "grid": grid}
    return {split: _fused(name, chosen, dense[split], sparse[split], data, split, cfg)
            for split in dense if split in sparse}, info
