"""Stage `evaluate`: the tuned model and its hybrid with BM25 (`hybrid_tuned`) on the held-out split, with the same
evaluator and cache as the baseline (one corpus encode for the tuned model; the base model's vectors come from the
cache, or are re-encoded and counted when it was emptied), Matryoshka dimensions, and a forgetting check on another
domain. `hybrid_base` is scored once, by the baseline stage: its paired comparisons with the tuned systems read the
baseline's per-query values. The tuned model's vector formats (precision x dims) are scored from its cached vectors.
Writes evaluate/metrics.json, per_query.json, mrl.json, ood.json and formats.json, and the dev split's
metrics.json, per_query.json and rankings under evaluate/dev/ as the baseline stage does."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from domain_embed.config import EVAL_REPORT_ONLY
from domain_embed.context import RunContext
from domain_embed.data.chunking import Windows
from domain_embed.data.loader import load_domain_data
from domain_embed.retrieval.evaluate import evaluate_dense, hybrid_skipped, rank_bm25, rank_dense, scored_splits
from domain_embed.retrieval.formats import format_grid, rank_format
from domain_embed.rundir import atomic_write_json
from domain_embed.stages.base import Stage, register
from domain_embed.stages.baseline import add_hybrid, read_per_query, split_dir, write_splits
from domain_embed.stages.finetune import trained_model_path
from domain_embed.tuning.losses import matryoshka_dims

_SHOWN = ("ndcg@10", "recall@10", "mrr@10")


def tuned_embedder(ctx: RunContext):
    cfg = dataclasses.replace(ctx.cfg.model, path=str(trained_model_path(ctx)), packaged=None, revision=None)
    return ctx.make_embedder(cfg)


def _inputs(ctx: RunContext) -> dict:
    e = {k: v for k, v in dataclasses.asdict(ctx.cfg.eval).items() if k not in EVAL_REPORT_ONLY}
    return {"finetune": ctx.run_dir.manifest("finetune")["key"], "baseline": ctx.run_dir.manifest("baseline")["key"],
            "eval": e, "matryoshka_dims": list(ctx.cfg.training.matryoshka_dims)}


def _run(ctx: RunContext, out: Path, extras: dict) -> None:
    cfg, data = ctx.cfg, ctx.data
    before = ctx.embedder.stats.corpus_encodes
    tuned = tuned_embedder(ctx)
    windows = ctx.windows()
    e, use_title = cfg.eval, cfg.data.use_title
    grid = format_grid(e.formats, tuned.dim, cfg.training.matryoshka_dims) if e.formats.enabled else []
    split = e.split
    splits, skipped = scored_splits(e, data), hybrid_skipped(e, data)
    depth = e.hybrid.depth if skipped is None else 0
    base = rank_dense("baseline", ctx.embedder, data, windows, splits, e, use_title)
    dense = rank_dense("tuned", tuned, data, windows, splits, e, use_title, depth=depth)
    results, pairs, hybrid, sparse = {s: [base[s], dense[s]] for s in splits}, [("tuned", "baseline")], {}, None
    if e.bm25.enabled:
        sparse = rank_bm25(data, splits, e, use_title, depth=depth)
        for s in splits:
            results[s].append(sparse[s])
        pairs.append(("tuned", "bm25"))
    reference = {}
    if add_hybrid("hybrid_tuned", dense, sparse, skipped, ctx, results, hybrid):
        pairs += [("hybrid_tuned", "tuned"), ("hybrid_tuned", "bm25"), ("hybrid_tuned", "baseline")]
        stored = {s: read_per_query(split_dir(ctx.run_dir.stage_dir("baseline"), s, ctx), "hybrid_base")
                  for s in splits}
        if all(v is not None for v in stored.values()):
            reference = {s: {"hybrid_base": v} for s, v in stored.items()}
            pairs += [("hybrid_base", "tuned"), ("hybrid_tuned", "hybrid_base")]
    write_splits(out, results, ctx, pairs, hybrid, reference)

    mrl = {}
    for dims in matryoshka_dims(cfg.training.matryoshka_dims, tuned.dim):
        mrl[str(dims)] = {
            name: {m: v for m, v in evaluate_dense(name, emb, data, windows, split, cfg.eval, use_title,
                                                   dims=dims).metrics.mean().items() if m in _SHOWN}
            for name, emb in (("baseline", ctx.embedder), ("tuned", tuned))}
    atomic_write_json(out / "mrl.json", mrl)
    atomic_write_json(out / "ood.json", _ood(ctx, tuned))
    atomic_write_json(out / "formats.json", _formats(ctx, tuned, windows, grid))
    extras["cost"] = {"corpus_encodes": ctx.embedder.stats.corpus_encodes - before + tuned.stats.corpus_encodes}


def _formats(ctx: RunContext, tuned, windows: Windows, grid: list[tuple[int, str]]) -> list[dict]:
    """Quality against bytes per document for each (dims, precision) of the tuned model. Its corpus vectors come
    from the cache `rank_dense` just filled, so the formats cost no corpus encode; [] when switched off."""
    if not grid:
        return []
    e = ctx.cfg.eval
    corpus = tuned.encode_documents(windows.texts(ctx.documents))
    queries = tuned.encode_queries(ctx.data.split(e.split)[1])
    rows = []
    for dims, precision in grid:
        r = rank_format(queries, corpus, windows.parents, ctx.data, e.split, dims, precision, e)
        rows.append({"dims": dims, "precision": precision, "bytes_per_document": r.bytes_per_document,
                     **{m: v for m, v in r.result.metrics.mean().items() if m in _SHOWN}, "rescored": r.rescored})
    return rows


def _ood(ctx: RunContext, tuned) -> dict:
    """Base vs tuned on another domain: a large drop there means the tuned model forgot general skills."""
    ood = ctx.cfg.eval.ood
    if not ood.path:
        return {}
    other = load_domain_data(dataclasses.replace(ctx.cfg.data, path=ood.path)).sliced(
        ood.max_queries, ood.max_corpus, ctx.cfg.seed)
    windows = Windows.identity(other.documents(ctx.cfg.data.use_title))
    out = {"path": ood.path, "split": ood.split, "queries": len(other.qrels.get(ood.split, {})),
           "documents": len(other)}
    for name, emb in (("baseline", ctx.embedder), ("tuned", tuned)):
        res = evaluate_dense(name, emb, other, windows, ood.split, ctx.cfg.eval, ctx.cfg.data.use_title,
                             is_corpus=False)
        out[name] = {m: v for m, v in res.metrics.mean().items() if m in _SHOWN}
    out["delta"] = {m: out["tuned"][m] - out["baseline"][m] for m in _SHOWN}
    return out


register(Stage("evaluate", requires=("finetune",), inputs=_inputs, run=_run,
               does="the tuned model and its hybrid scored; vector formats"))
