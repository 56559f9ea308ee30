"""Stage `mine`: hard negatives for the train/dev queries from the base model's cached embeddings (and BM25's
ranking with `mining.sources=[dense,bm25]`).

The corpus vectors come from the cache the baseline filled (an emptied cache is re-encoded, and counted).
Writes mine/mined.jsonl (one query per line) and mine/stats.json (parameters, rule counts, backend)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from domain_embed import devices
from domain_embed.context import RunContext
from domain_embed.retrieval.embed import Embedder
from domain_embed.rundir import atomic_write_json, atomic_write_text
from domain_embed.stages.base import Stage, register
from domain_embed.tuning.mining import MiningResult, mine_hard_negatives


def mined_splits(ctx: RunContext) -> list[str]:
    return [s for s in ctx.cfg.mining.splits if s in ctx.data.qrels]


def mined_queries(ctx: RunContext, embedder: Embedder) -> tuple[list[str], list[str], np.ndarray]:
    """Query ids, their split, and their (cached) embeddings by `embedder`, split after split."""
    ids, splits, embs = [], [], []
    for split in mined_splits(ctx):
        qids, texts, _ = ctx.data.split(split)
        ids += qids
        splits += [split] * len(qids)
        embs.append(np.asarray(embedder.encode_queries(texts)))
    return ids, splits, np.concatenate(embs) if embs else np.empty((0, 0), dtype=np.float32)


def _inputs(ctx: RunContext) -> dict:
    mining = dataclasses.asdict(ctx.cfg.mining)
    mining.pop("rounds")  # later rounds happen in the finetune stage; this stage is round 1 whatever their number
    inputs = {"audit": ctx.run_dir.manifest("audit")["key"], "model": ctx.embedder.fingerprint,
              "encode_dtype": ctx.embedder.encode_dtype, "mining": mining, "seed": ctx.cfg.seed,
              "query_prompt": ctx.cfg.model.query_prompt}
    if "bm25" in ctx.cfg.mining.sources:
        inputs["bm25"] = dataclasses.asdict(ctx.cfg.eval.bm25)
    return inputs


def _rescorer(ctx: RunContext, query_ids: list[str]):
    name = ctx.cfg.mining.rescorer
    if not name:
        return None
    import torch
    from sentence_transformers import CrossEncoder

    # raw logits, the scale of mining.rescorer_threshold: left to its default, a one-label model applies a
    # sigmoid, and every score would exceed the default threshold 0.0
    model = CrossEncoder(name, device=devices.placement(ctx.cfg.device),
                         trust_remote_code=ctx.cfg.model.trust_remote_code, activation_fn=torch.nn.Identity())
    queries, documents = ctx.data.queries, ctx.documents

    def rescore(row: int, docs: list[int]) -> np.ndarray:
        pairs = [(queries[query_ids[row]], documents[d]) for d in docs]
        return model.predict(pairs, batch_size=ctx.cfg.mining.rescorer_batch_size, show_progress_bar=False)

    return rescore


def mine_with(ctx: RunContext, embedder: Embedder) -> MiningResult:
    """The mining rules over `embedder`'s ranking (the base model here; the previous round's model when
    `mining.rounds` > 1), and over BM25's when configured."""
    windows = ctx.windows()
    window_emb = embedder.encode_documents(windows.texts(ctx.documents))
    query_ids, query_splits, query_emb = mined_queries(ctx, embedder)
    bm25_ranked = None
    if "bm25" in ctx.cfg.mining.sources:
        from domain_embed.retrieval.bm25 import BM25Index

        index = BM25Index(ctx.documents, ctx.cfg.eval.bm25, show_progress=True)
        bm25_ranked = index.search([ctx.data.queries[q] for q in query_ids], ctx.cfg.mining.range_max)[0]
    return mine_hard_negatives(
        query_ids=query_ids, query_splits=query_splits, query_emb=query_emb, window_emb=window_emb,
        parents=windows.parents, corpus_ids=ctx.data.corpus_ids, documents=ctx.documents,
        mined_qrels={s: ctx.data.qrels[s] for s in mined_splits(ctx)}, all_qrels=ctx.data.qrels,
        cfg=ctx.cfg.mining, seed=ctx.cfg.seed, rescore=_rescorer(ctx, query_ids), bm25_ranked=bm25_ranked)


def mining_stats(ctx: RunContext, result: MiningResult) -> dict:
    return {"parameters": dataclasses.asdict(ctx.cfg.mining), "splits": mined_splits(ctx), **result.stats()}


def _run(ctx: RunContext, out: Path, extras: dict) -> None:
    before = ctx.embedder.stats.corpus_encodes
    result = mine_with(ctx, ctx.embedder)
    atomic_write_text(out / "mined.jsonl", "".join(json.dumps(dataclasses.asdict(q)) + "\n"
                                                   for q in result.queries))
    atomic_write_json(out / "stats.json", mining_stats(ctx, result))
    extras["cost"] = {"corpus_encodes": ctx.embedder.stats.corpus_encodes - before}


register(Stage("mine", requires=("baseline",), inputs=_inputs, run=_run,
               does="hard negatives mined for the train and dev queries"))
