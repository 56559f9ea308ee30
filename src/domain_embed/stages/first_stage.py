"""A first stage's ranking for any queries, as the stage that scored it ranks: the reranker trains on the lists its
first stage gives the training queries, which no stage stores (baseline and evaluate rank the dev and evaluated
splits). The corpus vectors come from the embedding cache those stages filled (no corpus encode), BM25 is indexed
again, and a hybrid is fused with the setting its stage chose on dev (its metrics.json)."""

from __future__ import annotations

import dataclasses

import numpy as np

from domain_embed.context import RunContext
from domain_embed.errors import ConfigError
from domain_embed.retrieval.bm25 import BM25Index
from domain_embed.retrieval.evaluate import hybrid_skipped
from domain_embed.retrieval.fusion import Fusion, fuse
from domain_embed.retrieval.search import search_documents, windows_by_doc
from domain_embed.rundir import read_json
from domain_embed.stages.evaluate import tuned_embedder
from domain_embed.tuning.mining import best_window
from domain_embed.tuning.reranker import Text

# each first stage: the stage that scores it, and its dense model (None: BM25 alone)
FIRST_STAGES = {"bm25": ("baseline", None), "baseline": ("baseline", "baseline"),
                "hybrid_base": ("baseline", "baseline"), "tuned": ("evaluate", "tuned"),
                "hybrid_tuned": ("evaluate", "tuned")}


def source_stage(system: str) -> str:
    """The stage whose outputs hold `system`'s rankings (its manifest key is what those rankings depend on)."""
    if system not in FIRST_STAGES:
        raise ConfigError(f"rerank.lists_from={system!r}: expected one of {sorted(FIRST_STAGES)}")
    return FIRST_STAGES[system][0]


def lists_source(ctx: RunContext, system: str) -> str:
    """`system`, or where it is a hybrid this run does not score (`eval.hybrid.enabled=false`, BM25 off, no dev split
    to choose its fusion on), its dense side: the lists the run has."""
    if system.startswith("hybrid_") and hybrid_skipped(ctx.cfg.eval, ctx.data) is not None:
        return FIRST_STAGES[system][1]
    return system


def lists_key(ctx: RunContext, system: str) -> dict:
    """What `system`'s rankings depend on: the data, base model and BM25/hybrid settings (the baseline stage's key),
    the tuned model where it ranks (the finetune stage's key), and the eval settings that shape a ranking (search;
    the primary metric the hybrid's fusion is chosen by). Not the evaluate stage's whole key, whose report-only
    settings (formats, bars, bootstrap) would retrain a reranker for nothing."""
    e = ctx.cfg.eval
    key = {"baseline": ctx.run_dir.manifest("baseline")["key"], "search": dataclasses.asdict(e.search),
           "primary_metric": e.primary_metric}
    if source_stage(system) == "evaluate":
        key["finetune"] = ctx.run_dir.manifest("finetune")["key"]
    return key


def _dense(ctx: RunContext, model: str, queries: list[str], depth: int) -> tuple[np.ndarray, np.ndarray]:
    embedder = ctx.embedder if model == "baseline" else tuned_embedder(ctx)
    windows = ctx.windows()
    corpus = embedder.encode_documents(windows.texts(ctx.documents))  # cached by the stage that scored it
    res = search_documents(embedder.encode_queries(queries), corpus, windows.parents, len(ctx.documents), depth,
                           ctx.cfg.eval.search)
    return res.indices, res.scores


def _bm25(ctx: RunContext, queries: list[str], depth: int) -> tuple[np.ndarray, np.ndarray]:
    return BM25Index(ctx.documents, ctx.cfg.eval.bm25).search(queries, depth)


def rank(ctx: RunContext, system: str, queries: list[str], depth: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, scores) of `system`'s top `depth` documents for `queries` (-1 / -inf padding)."""
    stage, dense = source_stage(system), FIRST_STAGES[system][1]
    if dense is None:
        return _bm25(ctx, queries, depth)
    if not system.startswith("hybrid_"):
        return _dense(ctx, dense, queries, depth)
    how = read_json(ctx.run_dir.stage_dir(stage) / "metrics.json")["hybrid"].get(system, {"skipped": "not scored"})
    if "skipped" in how:
        raise ConfigError(f"rerank.lists_from={system}: the {stage} stage did not score it ({how['skipped']})")
    d = how["depth"]  # each side's list, as the stage fused them
    return fuse(_dense(ctx, dense, queries, d), _bm25(ctx, queries, d), depth,
                Fusion(how["method"], alpha=how["alpha"], rrf_k=how["rrf_k"]))


def window_text(ctx: RunContext, queries: list[str]) -> Text:
    """A document's text for a query (row of `queries`): its window closest to the query by the base model, as the
    bi-encoder's triplets saw it, in training and in scoring alike (the vectors come from the cache)."""
    windows = ctx.windows()
    texts = windows.texts(ctx.documents)
    window_emb = ctx.embedder.encode_documents(texts)
    windows_of = windows_by_doc(windows.parents)
    query_emb = ctx.embedder.encode_queries(queries)

    def text(row: int, doc: int) -> str:
        return texts[best_window(query_emb[row], window_emb, windows_of, doc)]

    return text
