"""Per-query IR metrics (trec_eval conventions) and paired significance tests.

Values are kept per query, not only as means, because the baseline-vs-tuned comparison needs them for
the paired bootstrap and the sign-flip test. Conventions follow trec_eval so that figures match
published numbers: precision divides by k even when fewer docs were retrieved, recall and MAP divide by
the total number of relevant docs, nDCG uses gain = relevance grade and a log2(rank + 1) discount.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

METRIC_NAMES = ("ndcg", "recall", "precision", "mrr", "map", "accuracy")

# bound on the elements of one resampling block (float64/int64: 32 MiB), whatever the query count
_BLOCK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class PerQueryMetrics:
    """One float64 array per metric name (e.g. `ndcg@10`), aligned with `qids`."""

    qids: list[str]
    values: dict[str, np.ndarray]

    def __getitem__(self, metric: str) -> np.ndarray:
        return self.values[metric]

    def mean(self) -> dict[str, float]:
        return {name: float(v.mean()) for name, v in self.values.items()}


def compute_metrics(ranked: Sequence[Sequence[str]], qids: Sequence[str],
                    qrels: Mapping[str, Mapping[str, int]], k_values: Sequence[int]) -> PerQueryMetrics:
    """Score ranked doc ids (best first, one list per query in `qids`) against graded `qrels`.

    A doc is relevant when its grade is > 0. Queries without any relevant doc raise ValueError: they
    would count as zero (or be dropped, depending on the tool), so the caller must decide explicitly.
    """
    if len(ranked) != len(qids):
        raise ValueError(f"{len(ranked)} rankings for {len(qids)} query ids")
    ks = sorted({int(k) for k in k_values})
    if not ks or ks[0] < 1:
        raise ValueError(f"k values must be positive integers, got {list(k_values)}")
    depth = ks[-1]
    n = len(qids)

    grades = np.zeros((n, depth))  # grade of the doc at each rank (0 beyond the end of a short list)
    ideal = np.zeros((n, depth))  # best possible grades at each rank
    n_rel = np.zeros(n)
    missing = []
    for i, (qid, docs) in enumerate(zip(qids, ranked, strict=True)):
        judged = qrels.get(qid, {})
        positive = sorted((g for g in judged.values() if g > 0), reverse=True)
        if not positive:
            missing.append(qid)
            continue
        n_rel[i] = len(positive)
        top = positive[:depth]
        ideal[i, :len(top)] = top
        top_docs = docs[:depth]
        if len(set(top_docs)) != len(top_docs):
            raise ValueError(f"query {qid!r}: a doc id appears twice in its ranking (merge chunks first)")
        row = [judged.get(d, 0) for d in top_docs]
        grades[i, :len(row)] = row
    if missing:
        raise ValueError(f"{len(missing)} queries have no relevant document in qrels "
                         f"(first: {missing[:5]}); filter them before evaluating")

    gains = np.maximum(grades, 0.0)
    hits = grades > 0
    ranks = np.arange(1, depth + 1, dtype=np.float64)
    discount = 1.0 / np.log2(ranks + 1.0)
    cum_hits = np.cumsum(hits, axis=1, dtype=np.float64)
    dcg = np.cumsum(gains * discount, axis=1)
    idcg = np.cumsum(ideal * discount, axis=1)
    cum_prec_at_hits = np.cumsum(np.where(hits, cum_hits / ranks, 0.0), axis=1)
    first_hit = np.where(hits.any(axis=1), hits.argmax(axis=1) + 1, depth + 1)

    values: dict[str, np.ndarray] = {}
    for k in ks:
        c = k - 1
        values[f"ndcg@{k}"] = dcg[:, c] / idcg[:, c]
        values[f"recall@{k}"] = cum_hits[:, c] / n_rel
        values[f"precision@{k}"] = cum_hits[:, c] / k
        values[f"mrr@{k}"] = np.where(first_hit <= k, 1.0 / first_hit, 0.0)
        values[f"map@{k}"] = cum_prec_at_hits[:, c] / n_rel
        values[f"accuracy@{k}"] = (cum_hits[:, c] > 0).astype(np.float64)
    return PerQueryMetrics(qids=list(qids), values=values)


def _rngs(seed: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Independent streams, so the CI does not depend on whether the p-value is computed too."""
    boot, perm = np.random.SeedSequence(seed).spawn(2)
    return np.random.default_rng(boot), np.random.default_rng(perm)


def _block_rows(n: int, n_samples: int) -> int:
    return max(1, min(n_samples, _BLOCK_ELEMENTS // n))


def _as_values(values: np.ndarray, name: str) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array of per-query values, got shape {v.shape}")
    return v


def _bootstrap_means(values: np.ndarray, n_samples: int, rng: np.random.Generator) -> np.ndarray:
    """Means of `n_samples` resamples of the queries (with replacement)."""
    n = values.size
    step = _block_rows(n, n_samples)
    out = np.empty(n_samples)
    for start in range(0, n_samples, step):
        rows = min(step, n_samples - start)
        out[start:start + rows] = values[rng.integers(0, n, size=(rows, n))].mean(axis=1)
    return out


def _percentile_ci(means: np.ndarray) -> list[float]:
    lo, hi = np.percentile(means, [2.5, 97.5])
    return [float(lo), float(hi)]


def bootstrap_ci(values: np.ndarray, n_samples: int = 1000, seed: int = 0) -> list[float]:
    """95% percentile bootstrap interval of one system's mean over queries."""
    v = _as_values(values, "values")
    return _percentile_ci(_bootstrap_means(v, n_samples, _rngs(seed)[0]))


def paired_bootstrap(a: np.ndarray, b: np.ndarray, n_samples: int = 1000, seed: int = 0) -> dict:
    """Paired comparison of systems A and B on the same queries (per-query values, same order).

    Resampling queries with the same indices for both systems is resampling the differences b - a.
    The p-value is a two-sided sign-flip randomisation test of the mean difference, add-one smoothed
    so that it is never 0 with a finite number of samples.
    """
    a, b = _as_values(a, "a"), _as_values(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"paired values differ in length: {a.size} vs {b.size}")
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    diff = b - a
    n = diff.size
    observed = float(diff.mean())
    rng_boot, rng_perm = _rngs(seed)

    ci = _percentile_ci(_bootstrap_means(diff, n_samples, rng_boot))

    # tolerance: flipping signs of the same values can change the mean by rounding only
    threshold = abs(observed) - 1e-12
    extreme = 0
    step = _block_rows(n, n_samples)
    for start in range(0, n_samples, step):
        rows = min(step, n_samples - start)
        signs = rng_perm.integers(0, 2, size=(rows, n)) * 2.0 - 1.0
        extreme += int(np.count_nonzero(np.abs(signs @ diff) / n >= threshold))
    p_value = (extreme + 1) / (n_samples + 1)

    return {"delta": observed, "ci95": ci, "p_value": p_value, "n_queries": n}


def compare_systems(per_query_a: PerQueryMetrics, per_query_b: PerQueryMetrics,
                    metrics: Sequence[str] | None = None, n_samples: int = 1000,
                    seed: int = 0) -> dict[str, dict]:
    """`paired_bootstrap` of B against A for each metric (all shared metrics when None).

    Each entry also holds `base_mean` (A's), `mean` (B's) and `relative` = delta / (1 - base_mean): the
    share of the gap to a perfect score that B closed (None when A is already perfect). In a report's
    "X-vs-Y" comparison, Y is A (the base) and X is B.
    """
    if list(per_query_a.qids) != list(per_query_b.qids):
        raise ValueError("systems were evaluated on different queries (or in a different order)")
    if metrics is None:
        metrics = [m for m in per_query_a.values if m in per_query_b.values]
    out: dict[str, dict] = {}
    for metric in metrics:
        for name, pq in (("A", per_query_a), ("B", per_query_b)):
            if metric not in pq.values:
                raise KeyError(f"metric {metric!r} missing for system {name}")
        a, b = per_query_a[metric], per_query_b[metric]
        result = paired_bootstrap(a, b, n_samples=n_samples, seed=seed)
        base_mean = float(a.mean())
        gap = 1.0 - base_mean
        result.update(base_mean=base_mean, mean=float(b.mean()),
                      relative=result["delta"] / gap if gap > 1e-12 else None)
        out[metric] = result
    return out
