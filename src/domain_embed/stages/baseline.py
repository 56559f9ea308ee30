"""Stage `baseline`: the base model, BM25 and their hybrid (`hybrid_base`), scored by the same code on the evaluation
split and, where the data has one, on the dev split the recommendation is chosen on.

Writes baseline/metrics.json (means, bootstrap CIs, the paired comparisons, how the hybrid was fused),
baseline/per_query.json (per-query values, for later paired tests against the tuned systems) and
baseline/ranking_<system>.npz; the same files for the dev split under baseline/dev/ (absent where the evaluated
split is dev, or there is no dev split)."""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path

import numpy as np

from domain_embed.context import RunContext
from domain_embed.retrieval.evaluate import (
    SystemResult,
    evaluate_hybrid,
    hybrid_skipped,
    rank_bm25,
    rank_dense,
    scored_splits,
)
from domain_embed.retrieval.metrics import PerQueryMetrics, bootstrap_ci, compare_systems
from domain_embed.rundir import atomic_write_json, read_json
from domain_embed.stages.base import Stage, register

log = logging.getLogger(__name__)


def _inputs(ctx: RunContext) -> dict:
    e = ctx.cfg.eval
    return {"audit": ctx.run_dir.manifest("audit")["key"], "model": ctx.embedder.fingerprint,
            "encode_dtype": ctx.embedder.encode_dtype, "splits": scored_splits(e, ctx.data),
            "k_values": list(e.k_values),
            "bm25": vars(e.bm25) if e.bm25.enabled else None,
            "hybrid": dataclasses.asdict(e.hybrid) if e.hybrid.enabled else None,
            "bootstrap": [e.bootstrap_samples, e.bootstrap_seed],
            "prompts": [ctx.cfg.model.query_prompt, ctx.cfg.model.document_prompt]}


def ranking_file(system: str) -> str:
    """The file of a system's ranking; characters outside [A-Za-z0-9_.-] (the parentheses of `rerank(bm25)`) become
    `-`, so the name needs no quoting in a shell."""
    return f"ranking_{re.sub(r'[^A-Za-z0-9_.-]+', '-', system).strip('-')}.npz"


def write_results(out: Path, results: list[SystemResult], ctx: RunContext,
                  pairs: list[tuple[str, str]] | None = None, hybrid: dict | None = None, split: str | None = None,
                  reference: dict[str, PerQueryMetrics] | None = None) -> dict:
    """Means, CIs and per-query values of each system on `split` (None: `eval.split`), and paired comparisons
    `"A-vs-B"` (delta = A - B over the same queries) for `pairs`, by default each system against the first one;
    `hybrid`: how each hybrid was fused, or why it was not; `reference`: per-query values of systems an earlier
    stage scored and wrote, compared here but not written again (`compare_systems` checks the query order)."""
    e = ctx.cfg.eval
    qids = list(results[0].metrics.qids)
    summary = {"split": split or e.split, "n_queries": len(qids), "systems": {}, "ci95": {},
               "backends": {}, "comparisons": {}, "hybrid": hybrid or {}}
    per_query = {"qids": qids, "systems": {}}
    for r in results:
        summary["systems"][r.name] = r.metrics.mean()
        summary["ci95"][r.name] = {m: bootstrap_ci(v, e.bootstrap_samples, e.bootstrap_seed)
                                   for m, v in r.metrics.values.items()}
        summary["backends"][r.name] = r.backend
        per_query["systems"][r.name] = {m: v.tolist() for m, v in r.metrics.values.items()}
        np.savez_compressed(out / ranking_file(r.name), indices=r.indices.astype(np.int32),
                            scores=r.scores.astype(np.float32))
    by_name = {**(reference or {}), **{r.name: r.metrics for r in results}}
    for a, b in pairs or [(r.name, results[0].name) for r in results[1:]]:
        summary["comparisons"][f"{a}-vs-{b}"] = compare_systems(
            by_name[b], by_name[a], list(by_name[b].values), e.bootstrap_samples, e.bootstrap_seed)
    atomic_write_json(out / "metrics.json", summary)
    atomic_write_json(out / "per_query.json", per_query)
    return summary


def split_dir(stage_dir: Path, split: str, ctx: RunContext) -> Path:
    """Where a stage keeps a split's results: the evaluated split in the stage folder, dev in its dev/ folder."""
    return stage_dir if split == ctx.cfg.eval.split else stage_dir / split


def write_splits(out: Path, results: dict[str, list[SystemResult]], ctx: RunContext, pairs: list[tuple[str, str]],
                 hybrid: dict, reference: dict[str, dict[str, PerQueryMetrics]] | None = None) -> None:
    """`write_results` for each scored split (`scored_splits`), into `split_dir`."""
    for split, systems in results.items():
        folder = split_dir(out, split, ctx)
        folder.mkdir(exist_ok=True)
        write_results(folder, systems, ctx, pairs, hybrid, split, (reference or {}).get(split))


def read_per_query(folder: Path, system: str) -> PerQueryMetrics | None:
    """A system's per-query values as `write_results` stored them in `folder`; None where it was not scored."""
    stored = read_json(folder / "per_query.json")
    values = stored["systems"].get(system)
    return None if values is None else PerQueryMetrics(stored["qids"], {m: np.asarray(v, dtype=np.float64)
                                                                         for m, v in values.items()})


def add_hybrid(name: str, dense: dict[str, SystemResult], sparse: dict[str, SystemResult] | None,
               skipped: str | None, ctx: RunContext, results: dict[str, list[SystemResult]], hybrid: dict) -> bool:
    """Appends the hybrid of `dense` and BM25 to each split's `results` and how it was fused to `hybrid`, or there
    the reason it was not scored, `skipped` (then False)."""
    if skipped is not None:
        log.warning("%s not scored: %s", name, skipped)
        hybrid[name] = {"skipped": skipped}
        return False
    fused, hybrid[name] = evaluate_hybrid(name, dense, sparse, ctx.data, ctx.cfg.eval)
    for split, result in fused.items():
        results[split].append(result)
    return True


def _run(ctx: RunContext, out: Path, extras: dict) -> None:
    cfg, e = ctx.cfg, ctx.cfg.eval
    before = ctx.embedder.stats.corpus_encodes
    splits, skipped = scored_splits(e, ctx.data), hybrid_skipped(e, ctx.data)
    depth = e.hybrid.depth if skipped is None else 0
    dense = rank_dense("baseline", ctx.embedder, ctx.data, ctx.windows(), splits, e, cfg.data.use_title, depth=depth)
    results, hybrid, sparse = {s: [dense[s]] for s in splits}, {}, None
    if e.bm25.enabled:
        sparse = rank_bm25(ctx.data, splits, e, cfg.data.use_title, depth=depth)
        for s in splits:
            results[s].append(sparse[s])
    pairs = [("bm25", "baseline")] if sparse else []
    if add_hybrid("hybrid_base", dense, sparse, skipped, ctx, results, hybrid):
        pairs += [("hybrid_base", "baseline"), ("hybrid_base", "bm25")]
    write_splits(out, results, ctx, pairs, hybrid)
    extras["cost"] = {"corpus_encodes": ctx.embedder.stats.corpus_encodes - before}


register(Stage("baseline", requires=("audit",), inputs=_inputs, run=_run,
               does="the base model, BM25 and their hybrid scored with bootstrap CIs"))
