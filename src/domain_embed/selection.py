"""The article's embedding-selection guide as plain functions on metric tables (no models, no I/O).

A table row is one evaluated candidate model, as the `compare` stage writes it:
`model`, `kind` ("general" | "domain"), `metrics` (means such as `recall@10`, `ndcg@10`), `dims`,
`window` (`effective` tokens), `doc_tokens` (length statistics of the corpus with the model's own tokenizer,
`over_limit` / `share_over_limit` against that window; None for a served model with no tokenizer known offline),
`chunked` (whether long documents were split into windows rather than cut by the model), `mrl_trained` (True,
False or None for unknown), `mrl_curve` (`[{"dims": d, "ndcg@10": ...}, ...]`, the full dimension last),
`chunk_sizes` (`[{"size": s, "ndcg@10": ...}, ...]`), `mteb_retrieval` and `throughput` (`docs_per_s`, None where
not measured). A served model at each requested dimension is a row of its own.
"""

from __future__ import annotations

import math
import re

MILLION = 1_000_000
FINE_TUNE_STAGES = "stages=[mine,triplets,finetune,evaluate]"
MIN_TRIPLETS = 500  # the article's minimum viable fine-tuning set

# a name that starts a word with one of these is a domain model (legal-bert, voyage-law-2, Fin-E5, BioBERT,
# PubMedBERT, MedCPT, ChemBERTa); "medium" is a size and "fine"(-tuned) a method, not a domain (a run's
# finetune/model is listed in compare.domain_models when it is meant as one)
_DOMAIN_NAME = re.compile(r"(?<![a-z])(legal|law|fin(?!e)|med(?!ium)|clinic|bio|pubmed|chem)", re.IGNORECASE)


def model_kind(name: str, domain_models: list[str] | tuple[str, ...] = ()) -> str:
    """General vs domain model: from the name unless the caller lists it in `domain_models`."""
    return "domain" if name in domain_models or _DOMAIN_NAME.search(name) else "general"


def storage_gb(dims: int, n_docs: int = MILLION, bytes_per_value: int = 4) -> float:
    """Raw vector storage of an index (no index overhead): dims x bytes x documents."""
    return dims * bytes_per_value * n_docs / 1e9


def reencode_hours(docs_per_s: float, n_docs: int = MILLION) -> float:
    """Switching models re-embeds the whole corpus: its wall time at the measured throughput."""
    return n_docs / docs_per_s / 3600 if docs_per_s > 0 else math.inf


def reindex_cost(dims: list[int], docs_per_s: float | None, usd_per_doc: float | None = None) -> dict:
    """What re-indexing one million documents costs at each candidate dimension: storage, hours at the measured
    throughput (None: not measured), and for a paid API its bill (None: no price known)."""
    return {"gb_per_million_docs": {dtype: {str(d): round(storage_gb(d, bytes_per_value=size), 4) for d in dims}
                                    for dtype, size in (("float32", 4), ("float16", 2))},
            "hours_per_million_docs": None if docs_per_s is None else round(reencode_hours(docs_per_s), 3),
            "usd_per_million_docs": None if usd_per_doc is None else round(usd_per_doc * MILLION, 2)}


def rank(rows: list[dict], metric: str = "ndcg@10") -> list[dict]:
    """Rows best-first on this domain, with `domain_rank` and `mteb_rank` (among rows with a published score)."""
    ranked = sorted(rows, key=lambda r: -r["metrics"][metric])
    published = sorted((r for r in ranked if r.get("mteb_retrieval") is not None), key=lambda r: -r["mteb_retrieval"])
    mteb = {r["model"]: i for i, r in enumerate(published, 1)}
    return [{**r, "domain_rank": i, "mteb_rank": mteb.get(r["model"])} for i, r in enumerate(ranked, 1)]


def rank_correlation(rows: list[dict], metric: str = "ndcg@10") -> dict:
    """Spearman correlation of the published MTEB retrieval score with quality on this domain: the article's
    claim is that it is weak, so the leaderboard is where to start, not where to stop."""
    from scipy.stats import spearmanr

    pairs = [(r["model"], r["mteb_retrieval"], r["metrics"][metric]) for r in rows
             if r.get("mteb_retrieval") is not None and not r.get("endpoint")]  # a served row repeats its twin's
    out = {"metric": metric, "n": len(pairs), "models": [p[0] for p in pairs], "spearman": None, "p_value": None}
    if len(pairs) < 3:
        out["note"] = f"needs at least 3 evaluated models with a published MTEB retrieval score, have {len(pairs)}"
        return out
    res = spearmanr([p[1] for p in pairs], [p[2] for p in pairs])
    if not math.isnan(res.statistic):  # constant scores have no ranking to correlate
        out["spearman"], out["p_value"] = round(float(res.statistic), 4), round(float(res.pvalue), 4)
    return out


def domain_gap(rows: list[dict], bm25: dict | None, gap_points: float, metric: str = "recall@10") -> dict:
    """Guide step 1: does the best general model trail the best candidate (or BM25) by more than `gap_points`, a
    fraction (0.05 = 5 points)? Served and local candidates alike: each row is one model at one dimension."""
    general = [r for r in rows if r["kind"] == "general"]
    systems = [(r["model"], r["kind"], r["metrics"][metric]) for r in rows]
    if bm25 is not None:
        systems.append(("bm25", "lexical", bm25[metric]))
    leader = max(systems, key=lambda s: s[2])
    if not general:
        top = max(rows, key=lambda r: r["metrics"][metric])
        return {"action": "best-candidate", "model": top["model"], "metric": metric, "gap": None,
                "reason": f"no general-purpose model was evaluated: use the best candidate {top['model']} "
                          f"({metric} {top['metrics'][metric]:.4f}; {leader[0]} leads with {leader[2]:.4f})"}
    best = max(general, key=lambda r: r["metrics"][metric])
    gap = leader[2] - best["metrics"][metric]
    head = (f"best general-purpose model {best['model']} has {metric} {best['metrics'][metric]:.4f}; "
            f"{leader[0]} has {leader[2]:.4f} ({gap * 100:+.1f} points)")
    out = {"metric": metric, "gap": round(gap, 6), "gap_points": gap_points, "best_general": best["model"],
           "leader": leader[0]}
    if gap <= gap_points:
        return {**out, "action": "general", "model": best["model"],
                "reason": f"{head}, not more than {gap_points * 100:.0f} points: use {best['model']} "
                          "for operational simplicity"}
    tune = (f"fine-tune {best['model']} on domain triplets ({MIN_TRIPLETS}+ (query, positive, hard negative) "
            f"triplets: `{FINE_TUNE_STAGES}`)")
    if leader[1] == "domain":
        return {**out, "action": "domain-model", "model": leader[0],
                "reason": f"{head}, more than {gap_points * 100:.0f} points: use the domain model {leader[0]}, "
                          f"or {tune}"}
    return {**out, "action": "fine-tune", "model": best["model"],
            "reason": f"{head}, more than {gap_points * 100:.0f} points: the general model's geometry is wrong "
                      f"for this domain (Semantic Compression Loss); {tune}"}


def best_chunk_size(row: dict, metric: str = "ndcg@10") -> dict | None:
    return max(row.get("chunk_sizes") or [], key=lambda c: c[metric], default=None)


def context_advice(rows: list[dict], metric: str = "ndcg@10") -> list[str]:
    """Guide: documents longer than a model's window are cut unless chunked; say so per model, with the fix."""
    fits = [r["model"] for r in rows if r["doc_tokens"] and r["doc_tokens"]["over_limit"] == 0]
    lines = []
    for r in rows:
        t, window = r["doc_tokens"], r["window"]["effective"]
        if not t or t["over_limit"] == 0:  # no tokenizer known (a served model): nothing to measure it with
            continue
        best = best_chunk_size(r, metric)
        at = (f"at {best['size']} tokens, its best measured chunk size ({metric} {best[metric]:.4f})" if best
              else "to fit the window")
        others = [m for m in fits if m != r["model"]]
        longer = "a longer-context model" + (f" ({', '.join(others)} fit every document)" if others else "")
        line = (f"{r['model']}: {t['over_limit']} documents ({t['share_over_limit']:.1%}) exceed its "
                f"{window}-token window (its own tokenizer; longest {t['max']} tokens, p99 {t['p99']:.0f}); ")
        if r.get("chunked"):
            line += f"they were split into windows here, so nothing was cut: keep chunking {at}, or use {longer}"
        else:
            line += f"the model silently cut them here: use {longer}, or chunk {at}"
        lines.append(line)
    return lines


def lowest_mrl_dims(curve: list[dict], tolerance: float, metric: str = "ndcg@10") -> dict:
    """The smallest dimension whose quality stays within `tolerance` of the full dimension (the last point)."""
    full = curve[-1]
    ok = [p for p in curve if p[metric] >= full[metric] - tolerance]
    low = min(ok, key=lambda p: p["dims"])
    return {"dims": low["dims"], "full_dims": full["dims"], metric: low[metric], f"full_{metric}": full[metric],
            "storage_saving": round(full["dims"] / low["dims"], 2)}


def mrl_advice(row: dict, tolerance: float, metric: str = "ndcg@10") -> dict:
    """Guide step 4: how far a model's vectors can be truncated on this domain, and whether it was built for it."""
    low = lowest_mrl_dims(row["mrl_curve"], tolerance, metric)
    trained = {True: "trained for MRL", False: "not trained for MRL", None: "MRL training unknown"}[
        row.get("mrl_trained")]
    if low["dims"] == low["full_dims"]:
        text = (f"{row['model']} ({trained}): no truncated dimension keeps {metric} within {tolerance:.3f} of "
                f"full; keep {low['full_dims']} dims")
        if len(row["mrl_curve"]) > 1:
            near = row["mrl_curve"][-2]
            text += f" ({near['dims']} dims: {near[metric]:.4f}, {near[metric] - low[f'full_{metric}']:+.4f})"
        else:
            text += " (no smaller dimension was measured)"
    else:
        text = (f"{row['model']} ({trained}): {low['dims']} dims keep {metric} within {tolerance:.3f} of the full "
                f"{low['full_dims']} ({low[metric]:.4f} vs {low[f'full_{metric}']:.4f}), "
                f"{low['storage_saving']:g}x less storage")
        if row.get("mrl_trained") is not True:
            text += " (measured here, not guaranteed on other data)"
    return {**low, "mrl_trained": row.get("mrl_trained"), "text": text}


def _unavailable_lines(unavailable) -> list[str]:
    return [f"{u['model']} not evaluated: {u['reason']}" for u in unavailable]


def recommend(rows: list[dict], bm25: dict | None, gap_points: float, mrl_tolerance: float,
              unavailable: list[dict] | tuple = ()) -> dict:
    """The decision guide end to end: the domain gap, context windows and MRL dimensions, as reasons."""
    if not rows:
        return {"action": "none", "model": None,
                "lines": ["no candidate model could be evaluated", *_unavailable_lines(unavailable)]}
    gap = domain_gap(rows, bm25, gap_points)
    context = context_advice(rows)
    mrl = {r["model"]: mrl_advice(r, mrl_tolerance) for r in rows}
    lines = [gap["reason"], *context, *(m["text"] for m in mrl.values()), *_unavailable_lines(unavailable)]
    return {"action": gap["action"], "model": gap["model"], "gap": gap, "context": context, "mrl": mrl,
            "lines": lines}
