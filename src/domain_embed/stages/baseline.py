"""Stage `baseline`: the base model, BM25 and their hybrid (`hybrid_base`) on the evaluation split, scored by the
same code.

Writes baseline/metrics.json (means, bootstrap CIs, the paired comparisons, how the hybrid was fused),
baseline/per_query.json (per-query values, for later paired tests against the tuned model) and
baseline/ranking_<system>.npz."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np

from domain_embed.context import RunContext
from domain_embed.retrieval.evaluate import SystemResult, evaluate_hybrid, hybrid_splits, rank_bm25, rank_dense
from domain_embed.retrieval.metrics import bootstrap_ci, compare_systems
from domain_embed.rundir import atomic_write_json
from domain_embed.stages.base import Stage, register

log = logging.getLogger(__name__)


def _inputs(ctx: RunContext) -> dict:
    e = ctx.cfg.eval
    return {"audit": ctx.run_dir.manifest("audit")["key"], "model": ctx.embedder.fingerprint,
            "encode_dtype": ctx.embedder.encode_dtype, "split": e.split, "k_values": list(e.k_values),
            "bm25": vars(e.bm25) if e.bm25.enabled else None,
            "hybrid": dataclasses.asdict(e.hybrid) if e.hybrid.enabled else None,
            "bootstrap": [e.bootstrap_samples, e.bootstrap_seed],
            "prompts": [ctx.cfg.model.query_prompt, ctx.cfg.model.document_prompt]}


def write_results(out: Path, results: list[SystemResult], ctx: RunContext,
                  pairs: list[tuple[str, str]] | None = None, hybrid: dict | None = None) -> dict:
    """Means, CIs and per-query values of each system, and paired comparisons `"A-vs-B"` (delta = A - B over
    the same queries) for `pairs`, by default each system against the first one; `hybrid`: how each hybrid
    was fused, or why it was not."""
    e = ctx.cfg.eval
    summary = {"split": e.split, "n_queries": len(results[0].metrics.qids), "systems": {}, "ci95": {},
               "backends": {}, "comparisons": {}, "hybrid": hybrid or {}}
    per_query = {"qids": list(results[0].metrics.qids), "systems": {}}
    for r in results:
        summary["systems"][r.name] = r.metrics.mean()
        summary["ci95"][r.name] = {m: bootstrap_ci(v, e.bootstrap_samples, e.bootstrap_seed)
                                   for m, v in r.metrics.values.items()}
        summary["backends"][r.name] = r.backend
        per_query["systems"][r.name] = {m: v.tolist() for m, v in r.metrics.values.items()}
        np.savez_compressed(out / f"ranking_{r.name}.npz", indices=r.indices.astype(np.int32),
                            scores=r.scores.astype(np.float32))
    by_name = {r.name: r for r in results}
    for a, b in pairs or [(r.name, results[0].name) for r in results[1:]]:
        summary["comparisons"][f"{a}-vs-{b}"] = compare_systems(
            by_name[b].metrics, by_name[a].metrics, list(by_name[b].metrics.values), e.bootstrap_samples,
            e.bootstrap_seed)
    atomic_write_json(out / "metrics.json", summary)
    atomic_write_json(out / "per_query.json", per_query)
    return summary


def add_hybrid(name: str, dense: dict[str, SystemResult], sparse: dict[str, SystemResult] | None,
               skipped: str | None, ctx: RunContext, results: list[SystemResult], hybrid: dict) -> bool:
    """Appends the hybrid of `dense` and BM25 to `results` and how it was fused to `hybrid`, or there the reason
    it was not scored, `skipped` (then False)."""
    if skipped is not None:
        log.warning("%s not scored: %s", name, skipped)
        hybrid[name] = {"skipped": skipped}
        return False
    result, hybrid[name] = evaluate_hybrid(name, dense, sparse, ctx.data, ctx.cfg.eval)
    results.append(result)
    return True


def _run(ctx: RunContext, out: Path, extras: dict) -> None:
    cfg, e = ctx.cfg, ctx.cfg.eval
    before = ctx.embedder.stats.corpus_encodes
    splits, skipped = hybrid_splits(e, ctx.data)
    depth = e.hybrid.depth if skipped is None else 0
    dense = rank_dense("baseline", ctx.embedder, ctx.data, ctx.windows(), splits, e, cfg.data.use_title, depth=depth)
    results, hybrid, sparse = [dense[e.split]], {}, None
    if e.bm25.enabled:
        sparse = rank_bm25(ctx.data, splits, e, cfg.data.use_title, depth=depth)
        results.append(sparse[e.split])
    pairs = [("bm25", "baseline")] if sparse else []
    if add_hybrid("hybrid_base", dense, sparse, skipped, ctx, results, hybrid):
        pairs += [("hybrid_base", "baseline"), ("hybrid_base", "bm25")]
    write_results(out, results, ctx, pairs, hybrid)
    extras["cost"] = {"corpus_encodes": ctx.embedder.stats.corpus_encodes - before}


register(Stage("baseline", requires=("audit",), inputs=_inputs, run=_run))
