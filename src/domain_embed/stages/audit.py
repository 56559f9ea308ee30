"""Stage `audit`: token lengths with the model's own tokenizer, and the windows the corpus is encoded as.

Writes audit/summary.json (length statistics per split, what truncation would cost) and
audit/windows.json (the corpus view every later encode uses)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from domain_embed.config import Truncation
from domain_embed.context import RunContext
from domain_embed.data.chunking import Windows, length_stats, make_windows, token_lengths
from domain_embed.errors import TruncationError
from domain_embed.rundir import atomic_write_json
from domain_embed.stages.base import Stage, register

log = logging.getLogger(__name__)


def _inputs(ctx: RunContext) -> dict:
    d = ctx.cfg.data
    return {"data": ctx.data_fingerprint, "model": ctx.embedder.fingerprint,
            "max_seq_length": ctx.embedder.max_seq_length, "truncation": d.truncation.value,
            "chunk_overlap": d.chunk_overlap, "use_title": d.use_title}


def _offenders(ids: list[str], lengths: np.ndarray, kind: str, limit: int, n: int) -> list[dict]:
    order = np.argsort(-lengths, kind="stable")[:n]
    return [{"kind": kind, "id": ids[i], "tokens": int(lengths[i])} for i in order if lengths[i] > limit]


def _run(ctx: RunContext, out: Path, extras: dict) -> None:
    cfg, data, emb = ctx.cfg.data, ctx.data, ctx.embedder
    limit, tokenizer = emb.max_seq_length, emb.tokenizer
    doc_len = token_lengths(tokenizer, ctx.documents, desc="audit corpus")
    qids = sorted(data.queries)
    q_len = token_lengths(tokenizer, [data.queries[q] for q in qids], desc="audit queries")
    q_pos = {q: i for i, q in enumerate(qids)}

    splits = {}
    for split, qrels in data.qrels.items():
        positives = sorted({d for rel in qrels.values() for d in rel})
        splits[split] = {
            "queries": length_stats(q_len[[q_pos[q] for q in qrels]], limit),
            "positives": length_stats(doc_len[[data.doc_index(d) for d in positives]], limit),
        }
    worst = sorted(_offenders(data.corpus_ids, doc_len, "document", limit, cfg.worst_offenders)
                   + _offenders(qids, q_len, "query", limit, cfg.worst_offenders),
                   key=lambda o: -o["tokens"])[:cfg.worst_offenders]
    summary = {"model": emb.location, "max_seq_length": limit, "truncation": cfg.truncation.value,
               "corpus": length_stats(doc_len, limit), "queries": length_stats(q_len, limit),
               "splits": splits, "worst_offenders": worst}

    if cfg.truncation is Truncation.error and worst:
        listing = ", ".join(f"{o['kind']} {o['id']} ({o['tokens']} tokens)" for o in worst)
        raise TruncationError(
            f"{summary['corpus']['over_limit']} documents and {summary['queries']['over_limit']} queries "
            f"exceed max_seq_length={limit} of {emb.location} and data.truncation=error. Worst: {listing}. "
            "Use data.truncation=chunk to split long documents, or a model with a longer window.")

    if cfg.truncation is Truncation.chunk:
        windows = make_windows(tokenizer, ctx.documents, doc_len, limit, cfg.chunk_overlap)
        per_doc = np.bincount(windows.parents, minlength=len(data))
        win_len = token_lengths(tokenizer, windows.texts(ctx.documents), desc="audit windows")
        summary["chunking"] = {
            "overlap": cfg.chunk_overlap, "windows": len(windows), "documents_split": int((per_doc > 1).sum()),
            "max_windows_per_document": int(per_doc.max()),
            "windows_over_limit": int((win_len > limit).sum()),
            "window_tokens": length_stats(win_len, limit),
        }
        lost_docs = summary["chunking"]["windows_over_limit"]
    else:
        windows = Windows.identity(ctx.documents)
        lost_docs = summary["corpus"]["over_limit"]
    summary["truncated"] = {
        "documents": lost_docs, "queries": summary["queries"]["over_limit"],
        "note": _truncation_note(cfg.truncation, summary, limit),
    }
    if summary["truncated"]["documents"] or summary["truncated"]["queries"]:
        log.warning("audit: %s", summary["truncated"]["note"])
    atomic_write_json(out / "summary.json", summary)
    atomic_write_json(out / "windows.json", windows.to_dict())


def _truncation_note(mode: Truncation, s: dict, limit: int) -> str:
    c, q = s["corpus"], s["queries"]
    queries = (f"{q['over_limit']} queries ({q['share_over_limit']:.2%}) exceed {limit} tokens and are "
               f"truncated ({q['tokens_lost']} tokens lost)" if q["over_limit"] else "no query is truncated")
    if mode is Truncation.chunk:
        ch = s["chunking"]
        docs = (f"{ch['documents_split']} documents split into windows ({ch['windows']} windows in all); "
                f"{ch['windows_over_limit']} windows still over the limit")
    else:
        docs = (f"{c['over_limit']} documents ({c['share_over_limit']:.2%}) exceed {limit} tokens and are "
                f"truncated: {c['tokens_lost']} tokens ({c['share_tokens_lost']:.2%} of the corpus) never "
                "reach the model" if c["over_limit"] else "no document is truncated")
    return f"{docs}; {queries}"


register(Stage("audit", requires=(), inputs=_inputs, run=_run,
               does="token lengths with the model's own tokenizer; long documents as windows"))
