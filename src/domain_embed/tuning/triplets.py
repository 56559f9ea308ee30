"""Triplet rows from mined negatives: a leak-free train/dev split and the shapes the losses take.

No query and no positive document may sit on both sides of the split, or the dev metric that picks
the best checkpoint would reward memorisation.
"""

from __future__ import annotations

import hashlib

import numpy as np
from datasets import Dataset

from domain_embed.retrieval.search import windows_by_doc
from domain_embed.tuning.mining import MiningResult, best_window

COLUMNS = ("query_id", "query", "positive_id", "positive", "positive_score", "negative_ids", "negatives",
           "negative_scores", "split")


def build_rows(result: MiningResult, queries: dict[str, str], query_emb: np.ndarray, query_row: dict[str, int],
               window_emb: np.ndarray, parents: np.ndarray, window_texts: list[str],
               corpus_ids: list[str]) -> list[dict]:
    """One row per (query, positive) pair with at least one negative. Long documents contribute the
    window closest to the query, so no training text exceeds the model's window."""
    doc_pos = {d: i for i, d in enumerate(corpus_ids)}
    windows_of = windows_by_doc(parents)
    rows = []
    for mq in result.queries:
        if not mq.negative_ids:
            continue
        q = query_emb[query_row[mq.query_id]]
        negatives = [window_texts[best_window(q, window_emb, windows_of, doc_pos[d])] for d in mq.negative_ids]
        for pid, pscore in zip(mq.positive_ids, mq.positive_scores, strict=True):
            rows.append({"query_id": mq.query_id, "query": queries[mq.query_id], "positive_id": pid,
                         "positive": window_texts[best_window(q, window_emb, windows_of, doc_pos[pid])],
                         "positive_score": pscore, "negative_ids": list(mq.negative_ids), "negatives": negatives,
                         "negative_scores": list(mq.negative_scores), "split": mq.split})
    return rows


def _hash_unit(text: str, seed: int) -> float:
    return int(hashlib.sha256(f"{seed}:{text}".encode()).hexdigest()[:12], 16) / 16**12


def leak_free_split(rows: list[dict], dev_split: str, dev_fraction: float, seed: int) -> tuple[list, list, dict]:
    """Rows of `dev_split` go to dev, others to train; without such rows, whole groups of queries
    linked by a shared positive are hashed to dev. Dev rows whose query or positive also occurs in
    train are dropped, and counted."""
    if any(r["split"] == dev_split for r in rows):
        side = {r["query_id"]: ("dev" if r["split"] == dev_split else "train") for r in rows}
    else:
        side = _group_sides(rows, dev_fraction, seed)
    train = [r for r in rows if side[r["query_id"]] == "train"]
    train_q = {r["query_id"] for r in train}
    train_pos = {r["positive_id"] for r in train}
    dev, dropped = [], 0
    for r in rows:
        if side[r["query_id"]] != "dev":
            continue
        if r["query_id"] in train_q or r["positive_id"] in train_pos:
            dropped += 1
            continue
        dev.append(r)
    return train, dev, {"train_rows": len(train), "dev_rows": len(dev), "dev_rows_dropped_for_leakage": dropped,
                        "dev_source": dev_split if any(r["split"] == dev_split for r in rows) else "hashed groups"}


def _group_sides(rows: list[dict], dev_fraction: float, seed: int) -> dict[str, str]:
    """Union-find over queries sharing a positive: a group goes to one side as a whole."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for r in rows:
        a, b = find("q:" + r["query_id"]), find("d:" + r["positive_id"])
        if a != b:
            parent[max(a, b)] = min(a, b)
    return {r["query_id"]: "dev" if _hash_unit(find("q:" + r["query_id"]), seed) < dev_fraction else "train"
            for r in rows}


def to_dataset(rows: list[dict]) -> Dataset:
    return Dataset.from_dict({c: [r[c] for r in rows] for c in COLUMNS})


def mnrl_view(ds: Dataset, num_negatives: int) -> Dataset:
    """(anchor, positive, negative_1..n) for MNRL-style losses (the losses read columns by position);
    rows with fewer negatives are left out."""
    keep = [i for i, negs in enumerate(ds["negatives"]) if len(negs) >= num_negatives]
    queries, positives, negatives = ds["query"], ds["positive"], ds["negatives"]
    return Dataset.from_dict({"anchor": [queries[i] for i in keep], "positive": [positives[i] for i in keep],
                              **{f"negative_{j + 1}": [negatives[i][j] for i in keep] for j in range(num_negatives)}})


def triplet_view(ds: Dataset) -> Dataset:
    """(anchor, positive, negative) rows for TripletLoss: one row per negative."""
    rows = [(q, p, n) for q, p, negs in zip(ds["query"], ds["positive"], ds["negatives"], strict=True) for n in negs]
    return Dataset.from_dict({"anchor": [r[0] for r in rows], "positive": [r[1] for r in rows],
                              "negative": [r[2] for r in rows]})
