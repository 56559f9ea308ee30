"""Stage `compare`: candidate embedding models and BM25 on one split, scored by the shared evaluator, and the
article's selection guide applied to what was measured (`domain_embed.selection`).

Each candidate sees the corpus through its own tokenizer and window. A candidate that cannot be loaded is listed
under `unavailable` with its reason and the comparison goes on. Writes compare/compare.json and
compare/quality_vs_dims.png."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

import domain_embed
from domain_embed.config import ModelConfig, Truncation
from domain_embed.context import RunContext
from domain_embed.data.chunking import Windows, length_stats, make_windows, token_lengths
from domain_embed.data.domain import DomainData
from domain_embed.errors import ConfigError, ModelLoadError
from domain_embed.report.plots import plot_quality_vs_dims
from domain_embed.retrieval.embed import Embedder
from domain_embed.retrieval.evaluate import SystemResult, evaluate_bm25, evaluate_dense
from domain_embed.rundir import atomic_write_json
from domain_embed.selection import model_kind, rank, rank_correlation, recommend, reindex_cost
from domain_embed.stages.base import Stage, register

log = logging.getLogger(__name__)

MODEL_CONFIGS = Path(domain_embed.__file__).parent / "conf" / "model"
_SHOWN = ("ndcg@10", "recall@10", "mrr@10")


@dataclass(frozen=True)
class Candidate:
    label: str  # the entry as the user wrote it in compare.models
    model: ModelConfig
    source: str  # conf (published facts from conf/model/<name>.yaml) | path | hub


def resolve_candidate(entry: str) -> Candidate:
    """A conf/model/ name, else a local path (one that exists or is written as a path), else a hub id."""
    conf = MODEL_CONFIGS / f"{entry}.yaml"
    if conf.is_file():
        try:  # through the typed schema, as Hydra reads model=<name>: an unknown key or a wrong type fails
            model = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.load(conf)))
        except OmegaConfBaseException as exc:
            raise ConfigError(f"{conf}: not a valid model config: {str(exc).splitlines()[0]} "
                              f"(key '{exc.full_key}')") from exc
        return Candidate(entry, model, "conf")
    if entry.startswith(("/", ".", "~")) or Path(entry).expanduser().exists():
        return Candidate(entry, ModelConfig(name=entry, path=entry), "path")
    return Candidate(entry, ModelConfig(name=entry, hub_id=entry), "hub")


def candidates(cc) -> list[Candidate]:
    """compare.models resolved, duplicates dropped."""
    if not cc.models:
        raise ConfigError("compare.models is empty: list conf/model names, local paths or hub ids, "
                          "e.g. compare.models=[minilm,bge-small,e5-base]")
    return [resolve_candidate(entry) for entry in dict.fromkeys(cc.models)]


def _weights(c: Candidate) -> str | None:
    """A local model's content hash, so a model retrained in place is compared again."""
    if c.model.path and Path(c.model.path).expanduser().is_dir():
        return Embedder(c.model, cache_dir=None).fingerprint
    return None


def _inputs(ctx: RunContext) -> dict:
    cfg = ctx.cfg
    d, e = cfg.data, cfg.eval
    return {"data": ctx.data_fingerprint, "compare": dataclasses.asdict(cfg.compare),
            "candidates": [{"entry": c.label, "model": dataclasses.asdict(c.model), "weights": _weights(c)}
                           for c in candidates(cfg.compare)],
            "k_values": list(e.k_values), "bm25": vars(e.bm25) if e.bm25.enabled else None,
            "truncation": d.truncation.value, "chunk_overlap": d.chunk_overlap, "use_title": d.use_title,
            "seed": cfg.seed}


def fit_overlap(tokenizer, max_tokens: int, overlap: int) -> int:
    """data.chunk_overlap, or half the window where a small window (or chunk size) leaves no room for it: one
    small candidate must not stop the comparison."""
    budget = max_tokens - tokenizer.num_special_tokens_to_add(pair=False)
    return overlap if overlap < budget else max(0, budget // 2)


def _machine(emb: Embedder) -> str:
    import torch

    device = emb.model.device
    what = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        f"CPU, {torch.get_num_threads()} torch threads of {os.cpu_count()} cores")
    return f"this machine ({what})"


def measure_throughput(emb: Embedder, documents: list[str], windows: Windows, sample: int, seed: int) -> dict:
    """Documents per second of an uncached encode of a random document sample (all of its windows): what
    re-indexing costs. It calls the model directly: through the cache, a hit would time the disk."""
    rng = np.random.default_rng(seed)
    docs = rng.choice(len(documents), size=min(sample, len(documents)), replace=False)
    keep = np.isin(windows.parents, docs)
    texts = Windows(windows.parents[keep], windows.starts[keep], windows.ends[keep]).texts(documents)
    kwargs = {"prompt": emb.cfg.document_prompt or None, "batch_size": emb.batch_size,
              "normalize_embeddings": emb.cfg.normalize, "show_progress_bar": False}
    emb.model.encode(texts[:8], **kwargs)  # warm-up: first-call allocations are not throughput
    t0 = time.perf_counter()
    emb.model.encode(texts, **kwargs)
    seconds = time.perf_counter() - t0
    return {"docs_per_s": round(len(docs) / seconds, 2), "documents": len(docs), "windows": len(texts),
            "seconds": round(seconds, 3), "measured_on": _machine(emb)}


def _shown(result: SystemResult) -> dict:
    return {m: v for m, v in result.metrics.mean().items() if m in _SHOWN}


def evaluate_candidate(ctx: RunContext, data: DomainData, c: Candidate, emb: Embedder) -> dict:
    """One table row: quality, window vs corpus lengths, MRL curve, chunk sizes, throughput, re-indexing cost."""
    cfg, cc = ctx.cfg, ctx.cfg.compare
    use_title, split = cfg.data.use_title, cc.split
    documents = data.documents(use_title)
    tokenizer, window = emb.tokenizer, emb.max_seq_length
    lengths = token_lengths(tokenizer, documents, desc=f"tokenize for {c.label}")
    overlap = fit_overlap(tokenizer, window, cfg.data.chunk_overlap)
    # the corpus view the audit would build for this model: windows in chunk mode, else whole documents
    windows = (make_windows(tokenizer, documents, lengths, window, overlap)
               if cfg.data.truncation is Truncation.chunk else Windows.identity(documents))
    full = evaluate_dense(c.label, emb, data, windows, split, cfg.eval, use_title)
    curve = [{"dims": d, **_shown(evaluate_dense(c.label, emb, data, windows, split, cfg.eval, use_title, dims=d))}
             for d in sorted(set(cc.mrl_dims)) if d < emb.dim]
    curve.append({"dims": emb.dim, **_shown(full)})
    chunks = []
    for size in cc.chunk_sizes:
        size_overlap = fit_overlap(tokenizer, size, cfg.data.chunk_overlap)
        sized = make_windows(tokenizer, documents, lengths, size, size_overlap)
        res = evaluate_dense(c.label, emb, data, sized, split, cfg.eval, use_title)
        chunks.append({"size": size, "overlap": size_overlap, "windows": len(sized), "over_window": size > window,
                       **_shown(res)})
    speed = measure_throughput(emb, documents, windows, cc.throughput_sample, cfg.seed)
    tok_limit = getattr(tokenizer, "model_max_length", None)
    m = c.model
    return {"model": c.label, "kind": model_kind(c.label, cc.domain_models), "source": c.source,
            "location": emb.location, "licence": m.licence, "mteb_retrieval": m.mteb_retrieval,
            "mrl_trained": m.mrl if c.source == "conf" else None, "dims": emb.dim,
            "window": {"effective": window, "max_seq_length": emb.model.max_seq_length,
                       "tokenizer_limit": tok_limit if tok_limit and tok_limit < 1_000_000 else None,
                       "published": m.context_window},
            "doc_tokens": length_stats(lengths, window), "windows": len(windows),
            "chunked": len(windows) > len(documents), "overlap": overlap, "metrics": full.metrics.mean(),
            "mrl_curve": curve, "chunk_sizes": chunks, "throughput": speed,
            "reindex": reindex_cost([p["dims"] for p in curve], speed["docs_per_s"])}


def _run(ctx: RunContext, out: Path, extras: dict) -> None:
    cfg, cc = ctx.cfg, ctx.cfg.compare
    data = ctx.data.sliced(cc.max_queries, None, cfg.seed)  # fewer queries, the same corpus (and cache)
    data.split(cc.split)  # a missing split fails here, before any candidate loads
    rows, unavailable, encodes = [], [], 0
    for c in candidates(cc):
        try:
            emb = ctx.embedder if c.model == cfg.model else ctx.make_embedder(c.model)
            _ = emb.model  # load now: an unreachable candidate is reported, not fatal
        except ModelLoadError as exc:
            log.warning("compare: %s unavailable: %s", c.label, exc)
            unavailable.append({"model": c.label, "reason": str(exc)})
            continue
        before = emb.stats.corpus_encodes
        rows.append(evaluate_candidate(ctx, data, c, emb))
        encodes += emb.stats.corpus_encodes - before
    bm25 = None
    if cfg.eval.bm25.enabled:
        bm25 = evaluate_bm25(data, cc.split, cfg.eval, cfg.data.use_title).metrics.mean()
    rows = rank(rows)
    result = {"split": cc.split, "n_queries": len(data.split(cc.split)[0]), "documents": len(data),
              "rows": rows, "bm25": bm25, "rank_correlation": rank_correlation(rows), "unavailable": unavailable,
              "recommendation": recommend(rows, bm25, cc.gap_points, cc.mrl_tolerance, unavailable)}
    atomic_write_json(out / "compare.json", result)
    plot_quality_vs_dims({r["model"]: r["mrl_curve"] for r in rows}, out / "quality_vs_dims.png")
    for r in rows:
        log.info("compare: #%d %s nDCG@10 %.4f Recall@10 %.4f, %d dims, window %d (%.1f%% of documents over), "
                 "%.1f docs/s", r["domain_rank"], r["model"], r["metrics"]["ndcg@10"], r["metrics"]["recall@10"],
                 r["dims"], r["window"]["effective"], 100 * r["doc_tokens"]["share_over_limit"],
                 r["throughput"]["docs_per_s"])
    for line in result["recommendation"]["lines"]:
        log.info("compare: %s", line)
    extras["cost"] = {"corpus_encodes": encodes}


register(Stage("compare", requires=("audit",), inputs=_inputs, run=_run))
