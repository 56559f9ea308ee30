"""Stage `compare`: candidate embedding models and BM25 on one split, scored by the shared evaluator, and the
article's selection guide applied to what was measured (`domain_embed.selection`).

Each candidate sees the corpus through its own tokenizer and window; the run's own model keeps the run's window (the
audit's). A served candidate (`openai:<model>@dims` or `<url>#<model>@dims`, `domain_embed.retrieval.served`) is
scored by the same evaluator through its endpoint, with its local twin (a conf/model name, folder or cached hub id
of the same name) lending it a tokenizer, prompts and published facts where one exists. A candidate that cannot be
loaded, or whose server answers wrongly, is listed under `unavailable` with its reason and the comparison goes on.
Writes compare/compare.json and compare/quality_vs_dims.png."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

import domain_embed
from domain_embed import devices
from domain_embed.config import ModelConfig, Truncation
from domain_embed.context import RunContext
from domain_embed.data.chunking import Windows, length_stats, make_windows, token_lengths
from domain_embed.data.domain import DomainData
from domain_embed.errors import ConfigError, ModelLoadError
from domain_embed.report.plots import plot_quality_vs_dims
from domain_embed.retrieval.embed import Embedder, resolve_model_location
from domain_embed.retrieval.evaluate import SystemResult, evaluate_bm25, evaluate_dense
from domain_embed.retrieval.metrics import bootstrap_ci
from domain_embed.retrieval.served import (
    OPENAI_MAX_TOKENS,
    ServedEmbedder,
    ServedError,
    ServedSpec,
    api_key,
    check_egress,
    is_served,
    parse_spec,
    tiktoken_counter,
)
from domain_embed.rundir import atomic_write_json
from domain_embed.selection import model_kind, rank, rank_correlation, recommend, reindex_cost
from domain_embed.stages.base import Stage, register

log = logging.getLogger(__name__)

MODEL_CONFIGS = Path(domain_embed.__file__).parent / "conf" / "model"
_SHOWN = ("ndcg@10", "recall@10", "mrr@10")


@dataclass(frozen=True)
class Candidate:
    label: str  # the entry as the user wrote it in compare.models (a served one: one per requested dimension)
    model: ModelConfig  # a served candidate's local twin: its tokenizer, prompts and published facts, where known
    source: str  # conf (published facts from conf/model/<name>.yaml) | path | hub | served
    spec: ServedSpec | None = None
    dims: int | None = None  # requested from the server (`dimensions`); None: its own
    published: bool = False  # `model` holds published facts (a conf/model/<name>.yaml)


def _conf(path: Path) -> ModelConfig:
    try:  # through the typed schema, as Hydra reads model=<name>: an unknown key or a wrong type fails
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.load(path)))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{path}: not a valid model config: {str(exc).splitlines()[0]} "
                          f"(key '{exc.full_key}')") from exc


def resolve_candidate(entry: str) -> Candidate:
    """A conf/model/ name, else a local path (one that exists or is written as a path), else a hub id."""
    conf = MODEL_CONFIGS / f"{entry}.yaml"
    if conf.is_file():
        return Candidate(entry, _conf(conf), "conf", published=True)
    if entry.startswith(("/", ".", "~")) or Path(entry).expanduser().exists():
        return Candidate(entry, ModelConfig(name=entry, path=entry), "path")
    return Candidate(entry, ModelConfig(name=entry, hub_id=entry), "hub")


def served_candidates(entry: str) -> list[Candidate]:
    """One candidate per requested dimension. The twin: the served name as a conf name, a conf's hub id, a folder
    or a hub id (OpenAI's models have none)."""
    spec = parse_spec(entry)
    twin = next((c for c in (MODEL_CONFIGS / f"{spec.model}.yaml", *sorted(MODEL_CONFIGS.glob("*.yaml")))
                 if c.is_file() and (c.stem == spec.model or _conf(c).hub_id == spec.model)), None)
    if spec.is_openai:
        model = ModelConfig(name=spec.model, hub_id=spec.model, packaged=None)
    else:
        model = _conf(twin) if twin else resolve_candidate(spec.model).model
    return [Candidate(spec.label(d), model, "served", spec, d, published=twin is not None and not spec.is_openai)
            for d in (spec.dims or (None,))]


def candidates(cc) -> list[Candidate]:
    """compare.models resolved, duplicates dropped; a remote endpoint without compare.allow_remote is refused here,
    before any request."""
    if not cc.models:
        raise ConfigError("compare.models is empty: list conf/model names, local paths, hub ids or served models, "
                          "e.g. compare.models=[minilm,bge-small,e5-base]")
    out = [c for entry in dict.fromkeys(cc.models)
           for c in (served_candidates(entry) if is_served(entry) else [resolve_candidate(entry)])]
    check_egress(list(dict.fromkeys(c.spec for c in out if c.spec)), cc.allow_remote)
    return out


def _weights(c: Candidate) -> str | None:
    """A local model's content hash, so a model retrained in place is compared again (a served one's twin too)."""
    if c.model.path and Path(c.model.path).expanduser().is_dir():
        return Embedder(c.model, cache_dir=None).fingerprint
    return None


def _inputs(ctx: RunContext) -> dict:
    cfg = ctx.cfg
    d, e = cfg.data, cfg.eval
    return {"data": ctx.data_fingerprint, "compare": dataclasses.asdict(cfg.compare),
            "candidates": [{"entry": c.label, "model": dataclasses.asdict(c.model), "weights": _weights(c),
                            "served": dataclasses.asdict(c.spec) if c.spec else None, "dims": c.dims}
                           for c in candidates(cfg.compare)],
            "run_model": dataclasses.asdict(cfg.model),  # its window is the run's (model.max_seq_length)
            "k_values": list(e.k_values), "bm25": vars(e.bm25) if e.bm25.enabled else None,
            "bootstrap": [e.bootstrap_samples, e.bootstrap_seed],
            "truncation": d.truncation.value, "chunk_overlap": d.chunk_overlap, "use_title": d.use_title,
            "seed": cfg.seed}


def is_run_model(ctx: RunContext, model: ModelConfig) -> bool:
    """The candidate is the run's own model: it is used with the run's settings (window, prompts), as the audit."""
    try:
        return resolve_model_location(model) == ctx.embedder.location
    except ModelLoadError:
        return False


def fit_overlap(tokenizer, max_tokens: int, overlap: int) -> int:
    """data.chunk_overlap, or half the window where a small window (or chunk size) leaves no room for it: one
    small candidate must not stop the comparison."""
    budget = max_tokens - tokenizer.num_special_tokens_to_add(pair=False)
    return overlap if overlap < budget else max(0, budget // 2)


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
            "seconds": round(seconds, 3), "measured_on": f"this machine ({devices.machine(emb.model.device)})"}


def _shown(result: SystemResult) -> dict:
    return {m: v for m, v in result.metrics.mean().items() if m in _SHOWN}


def _quality(ctx: RunContext, data: DomainData, c: Candidate, emb, tokenizer, window: int | None,
             lengths: np.ndarray | None) -> dict:
    """What every row measures the same way, local or served: metrics with bootstrap CIs, the MRL curve (first d
    coordinates, re-normalised) and the optional chunk sizes (these need the candidate's own tokenizer)."""
    cfg, cc = ctx.cfg, ctx.cfg.compare
    use_title, split, e = cfg.data.use_title, cc.split, cfg.eval
    documents = data.documents(use_title)
    overlap = fit_overlap(tokenizer, window, cfg.data.chunk_overlap) if tokenizer is not None else 0
    # the corpus view the audit would build for this model: windows in chunk mode, else whole documents
    windows = (make_windows(tokenizer, documents, lengths, window, overlap)
               if tokenizer is not None and cfg.data.truncation is Truncation.chunk else Windows.identity(documents))
    full = evaluate_dense(c.label, emb, data, windows, split, e, use_title)
    curve = [{"dims": d, **_shown(evaluate_dense(c.label, emb, data, windows, split, e, use_title, dims=d))}
             for d in sorted(set(cc.mrl_dims)) if d < emb.dim]
    curve.append({"dims": emb.dim, **_shown(full)})
    chunks = []
    for size in cc.chunk_sizes if tokenizer is not None else ():
        size_overlap = fit_overlap(tokenizer, size, cfg.data.chunk_overlap)
        sized = make_windows(tokenizer, documents, lengths, size, size_overlap)
        res = evaluate_dense(c.label, emb, data, sized, split, e, use_title)
        chunks.append({"size": size, "overlap": size_overlap, "windows": len(sized), "over_window": size > window,
                       **_shown(res)})
    ci = {m: bootstrap_ci(full.metrics[m], e.bootstrap_samples, e.bootstrap_seed) for m in _SHOWN}
    m = c.model
    return {"model": c.label, "kind": model_kind(c.label, cc.domain_models), "source": c.source,
            "location": emb.location, "licence": m.licence, "mteb_retrieval": m.mteb_retrieval,
            "mrl_trained": m.mrl if c.published else None,
            "dims": emb.dim, "doc_tokens": length_stats(lengths, window) if lengths is not None else None,
            "windows": len(windows), "chunked": len(windows) > len(documents), "overlap": overlap,
            "metrics": full.metrics.mean(), "ci95": ci, "mrl_curve": curve, "chunk_sizes": chunks,
            "_windows": windows}


def evaluate_candidate(ctx: RunContext, data: DomainData, c: Candidate, emb: Embedder) -> dict:
    """One table row: quality, window vs corpus lengths, MRL curve, chunk sizes, throughput, re-indexing cost."""
    cfg, cc = ctx.cfg, ctx.cfg.compare
    documents = data.documents(cfg.data.use_title)
    tokenizer, window = emb.tokenizer, emb.max_seq_length
    lengths = token_lengths(tokenizer, documents, desc=f"tokenize for {c.label}")
    row = _quality(ctx, data, c, emb, tokenizer, window, lengths)
    speed = measure_throughput(emb, documents, row.pop("_windows"), cc.throughput_sample, cfg.seed)
    tok_limit = getattr(tokenizer, "model_max_length", None)
    return {**row, "window": {"effective": window, "max_seq_length": emb.model.max_seq_length,
                              "tokenizer_limit": tok_limit if tok_limit and tok_limit < 1_000_000 else None,
                              "published": c.model.context_window},
            "token_audit": "the model's own tokenizer",
            "tokens": {"corpus": int(lengths.sum()), "source": "the model's own tokenizer"}, "cost": None,
            "throughput": speed, "reindex": reindex_cost([p["dims"] for p in row["mrl_curve"]], speed["docs_per_s"])}


def _twin_tokenizer(ctx: RunContext, c: Candidate):
    """A served model's tokenizer and window from its local twin, read offline, or (None, None, why)."""
    if is_run_model(ctx, c.model):
        return ctx.embedder.tokenizer, ctx.embedder.max_seq_length, "its local twin's tokenizer (the run's model)"
    from transformers import AutoTokenizer

    try:
        location = resolve_model_location(c.model)
        tokenizer = AutoTokenizer.from_pretrained(location, revision=c.model.revision, local_files_only=True)
    except Exception as exc:  # not a folder, not in the hub cache: nothing to count tokens with offline
        return None, None, f"unknown (no tokenizer for '{c.spec.model}' available offline: {exc.__class__.__name__})"
    window = c.model.max_seq_length or _st_max_seq_length(location)
    limit = getattr(tokenizer, "model_max_length", None)
    if limit and limit < 1_000_000:
        window = min(window, limit) if window else limit
    return tokenizer, window, f"its local twin's tokenizer ({location})"


def _st_max_seq_length(location: str) -> int | None:
    """sentence-transformers' own window for a folder or a cached hub snapshot (what a server running it uses)."""
    from huggingface_hub import try_to_load_from_cache

    path = Path(location) / "sentence_bert_config.json"
    if not path.is_file():
        found = try_to_load_from_cache(location, "sentence_bert_config.json")
        path = Path(found) if isinstance(found, str) else None
    return json.loads(path.read_text()).get("max_seq_length") if path else None


def evaluate_served(ctx: RunContext, data: DomainData, c: Candidate) -> dict:
    """A served candidate's row: the same quality measures, then tokens and cost from the server's `usage`, the
    request throughput seen from here, and where the corpus went."""
    cfg, cc = ctx.cfg, ctx.cfg.compare
    documents = data.documents(cfg.data.use_title)
    spec, twin = c.spec, c.model
    counter, lengths = None, None
    if spec.is_openai:
        tokenizer, window = None, OPENAI_MAX_TOKENS
        counter, audit = tiktoken_counter(spec.model)
        lengths = counter(documents) if counter else None
    else:
        tokenizer, window, audit = _twin_tokenizer(ctx, c)
        if tokenizer is not None:
            lengths = token_lengths(tokenizer, documents, desc=f"tokenize for {c.label}")

            def counter(texts):
                return token_lengths(tokenizer, texts, progress=False)
    emb = ServedEmbedder(spec, c.dims, cc.client, api_key=api_key(cc.api_key_env, spec), cache_dir=ctx.cache_dir,
                         query_prompt=twin.query_prompt, document_prompt=twin.document_prompt,
                         normalize=twin.normalize, expected_dim=None if spec.is_openai else twin.dims,
                         count_tokens=counter, weights=_weights(c))
    row = _quality(ctx, data, c, emb, tokenizer, window, lengths)
    windows = row.pop("_windows")
    texts = windows.texts(documents)
    corpus_tokens = emb.tokens(texts)
    price = cc.prices.get(spec.model)
    usd = None if price is None or corpus_tokens is None else corpus_tokens / 1e6 * price
    sent, wall = emb.stats.sent.get("corpus", 0), emb.stats.wall.get("corpus", 0.0)
    docs_per_s = round(sent / wall * len(documents) / len(windows), 2) if sent and wall > 0 else None
    return {**row, "window": {"effective": window, "max_seq_length": None, "tokenizer_limit": None,
                              "published": twin.context_window},
            "token_audit": audit, "endpoint": spec.base_url, "served_model": spec.model, "remote": spec.remote,
            "requested_dims": c.dims,
            "tokens": {"corpus": corpus_tokens, "source": "usage reported by the server",
                       "billed_this_run": emb.stats.tokens_billed, "requests_this_run": emb.stats.requests,
                       "texts_sent_this_run": emb.stats.texts_sent, "texts_from_cache": emb.stats.cache_hits},
            "cost": {"usd_per_1m_tokens": price, "prices_date": cc.prices_date if price is not None else None,
                     "corpus_usd": usd, "this_run_usd": None if price is None else
                     emb.stats.tokens_billed / 1e6 * price},
            "throughput": {"docs_per_s": docs_per_s, "documents": round(sent * len(documents) / len(windows)),
                           "seconds": round(wall, 3),
                           "measured_on": f"{spec.base_url}, seen from this machine (concurrency "
                                          f"{cc.client.concurrency})" if docs_per_s else
                                          "not measured: every corpus vector came from the cache"},
            "reindex": reindex_cost([p["dims"] for p in row["mrl_curve"]], docs_per_s,
                                    usd / len(documents) if usd is not None else None)}


def _run(ctx: RunContext, out: Path, extras: dict) -> None:
    cfg, cc = ctx.cfg, ctx.cfg.compare
    data = ctx.data.sliced(cc.max_queries, None, cfg.seed)  # fewer queries, the same corpus (and cache)
    data.split(cc.split)  # a missing split fails here, before any candidate loads
    rows, unavailable, encodes = [], [], 0
    for c in candidates(cc):
        if c.spec:
            try:
                rows.append(evaluate_served(ctx, data, c))
            except ServedError as exc:  # answered wrongly: this candidate only (a silent server stops the stage)
                log.warning("compare: %s unavailable: %s", c.label, exc)
                unavailable.append({"model": c.label, "reason": str(exc)})
            continue
        try:
            emb = ctx.embedder if is_run_model(ctx, c.model) else ctx.make_embedder(c.model)
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
    sent_to = [{"model": r["model"], "endpoint": r["endpoint"], "remote": r["remote"]} for r in rows if "endpoint" in r]
    sent_to += [{"model": c.label, "endpoint": c.spec.base_url, "remote": c.spec.remote} for c in candidates(cc)
                if c.spec and any(u["model"] == c.label for u in unavailable)]  # it may have received part
    result = {"split": cc.split, "n_queries": len(data.split(cc.split)[0]), "documents": len(data),
              "rows": rows, "bm25": bm25, "rank_correlation": rank_correlation(rows), "unavailable": unavailable,
              "corpus_sent_to": sent_to, "gap_points": cc.gap_points,
              "recommendation": recommend(rows, bm25, cc.gap_points, cc.mrl_tolerance, unavailable)}
    atomic_write_json(out / "compare.json", result)
    plot_quality_vs_dims({r["model"]: r["mrl_curve"] for r in rows}, out / "quality_vs_dims.png")
    for r in rows:
        over = (f"{100 * r['doc_tokens']['share_over_limit']:.1f}% of documents over" if r["doc_tokens"]
                else "token counts unknown")
        speed = r["throughput"]["docs_per_s"]
        log.info("compare: #%d %s nDCG@10 %.4f Recall@10 %.4f, %d dims, window %s (%s), %s docs/s", r["domain_rank"],
                 r["model"], r["metrics"]["ndcg@10"], r["metrics"]["recall@10"], r["dims"], r["window"]["effective"],
                 over, "-" if speed is None else f"{speed:.1f}")
    for s in sent_to:
        log.warning("compare: the corpus was sent to %s (%s, %s)", s["endpoint"], s["model"],
                    "off this machine" if s["remote"] else "loopback")
    for line in result["recommendation"]["lines"]:
        log.info("compare: %s", line)
    extras["cost"] = {"corpus_encodes": encodes,
                      "served_tokens_billed": sum(r["tokens"]["billed_this_run"] for r in rows if "endpoint" in r)}


register(Stage("compare", requires=("audit",), inputs=_inputs, run=_run,
               does="candidate models scored, and the model-selection guide"))
