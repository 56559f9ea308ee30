"""Second-stage reranking: a cross-encoder re-scores a first stage's top `depth` documents per query.

Scores are raw logits (a sigmoid would tie confident pairs at 1.0), mixed with the first stage's where asked. Each
(query, document) pair is scored once, however many first stages, depths and weights ask for it, by the ranks of a
launch together, and the time spent scoring is kept, so the report can give pairs per second as measured on the
machine that ran it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import numpy as np
import torch
from tqdm.auto import tqdm

from domain_embed import distributed
from domain_embed.retrieval.fusion import min_max

Pair = tuple[int, int]  # (query row, document position)


class PairScorer:
    """Cross-encoder scores of (query row, document) pairs, cached; `text(row, doc)` gives the document's text for
    that query (for a long document, its best window). When the ranks of a launch score together, each scores a
    contiguous run of whole blocks, the very blocks one process would score (a pair's logit can depend on the other
    pairs of its batch: padding, kernels picked by shape), and every rank ends with every score, to the bit."""

    def __init__(self, model, queries: list[str], text: Callable[[int, int], str], batch_size: int = 64):
        self.model, self.queries, self.text, self.batch_size = model, queries, text, batch_size
        self.scores: dict[Pair, float] = {}
        self.seconds = 0.0  # wall time spent scoring (with several ranks, all of them together)

    def score(self, pairs: Iterable[Pair]) -> None:
        todo = [p for p in dict.fromkeys(pairs) if p not in self.scores]
        if not todo:
            return
        size = self.batch_size * 16  # the run's own bar moves per block: the library's would nest in the console
        blocks = [todo[start:start + size] for start in range(0, len(todo), size)]
        with tqdm(total=len(todo), desc="rerank pairs", unit="pair", disable=not distributed.is_main()) as bar:
            t0 = time.perf_counter()
            parts = distributed.gather(lambda: [self._predict(blocks[b], bar) for b in distributed.share(len(blocks))])
            self.seconds += time.perf_counter() - t0
            bar.update(len(todo) - bar.n)  # the other ranks' blocks
        for block, values in zip(blocks, (values for part in parts for values in part), strict=True):
            self.scores.update(zip(block, values, strict=True))

    def _predict(self, block: list[Pair], bar) -> list[float]:
        values = self.model.predict([(self.queries[q], self.text(q, d)) for q, d in block], batch_size=self.batch_size,
                                    activation_fn=torch.nn.Identity(), convert_to_numpy=True, show_progress_bar=False)
        bar.update(len(block))
        return np.asarray(values, dtype=np.float64).ravel().tolist()

    @property
    def pairs_per_second(self) -> float | None:
        return len(self.scores) / self.seconds if self.seconds else None


def candidates(indices: np.ndarray, depth: int, rows: Iterable[int] | None = None) -> list[Pair]:
    """The (query row, document) pairs a rerank at `depth` scores: each row's first `depth` documents (-1: none)."""
    rows = range(len(indices)) if rows is None else rows
    return [(q, int(d)) for q in rows for d in indices[q, :depth] if d >= 0]


def rerank(indices: np.ndarray, scores: dict[Pair, float], depth: int, first_scores: np.ndarray | None = None,
           weight: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """A ranking shaped like the first stage's: each row's first `depth` documents ordered by their mixed score (the
    first stage's order breaks ties), then the rest in the first stage's order. The mixed score is `weight` x the
    reranker's score + (1 - weight) x the first stage's (`first_scores`, shaped like `indices`), each min-max
    normalised over the row's re-scored documents; at weight 1 it is the reranker's raw logit (the cross-encoder
    alone). Below `depth` the scores are -inf (so recall at k beyond `depth` is the first stage's). At weight 0 it is
    the first stage, its ranking and scores as they are (no pair needs a score)."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"the reranker's weight must be in [0, 1], got {weight}")
    if weight == 0:
        return indices.copy(), np.asarray(first_scores, dtype=np.float32).copy()
    head = indices[:, :depth]
    mixed = np.zeros(head.shape, dtype=np.float64)
    if weight > 0:
        ce = np.array([[scores[(q, int(d))] if d >= 0 else 0.0 for d in row] for q, row in enumerate(head)],
                      dtype=np.float64).reshape(head.shape)
        mixed += ce if weight == 1 else weight * min_max(head, ce)
    if weight < 1:
        mixed += (1.0 - weight) * min_max(head, first_scores[:, :depth])
    mixed = np.where(head >= 0, mixed, -np.inf)
    order = np.argsort(-mixed, axis=1, kind="stable")
    out_idx = indices.copy()
    out_idx[:, :depth] = np.take_along_axis(head, order, axis=1)
    out_scores = np.full(indices.shape, -np.inf, dtype=np.float32)
    out_scores[:, :depth] = np.take_along_axis(mixed, order, axis=1)
    return out_idx, out_scores


def latency_ms(model, queries: list[str], documents: list[list[str]], batch_size: int = 64) -> float | None:
    """Median milliseconds to rerank one query's documents with `CrossEncoder.rank`, one query at a time (as a
    service would), after one warm-up call."""
    if not queries:
        return None
    model.rank(queries[0], documents[0], batch_size=batch_size, show_progress_bar=False)
    times = []
    for q, docs in zip(queries, documents, strict=True):
        t0 = time.perf_counter()
        model.rank(q, docs, batch_size=batch_size, show_progress_bar=False)
        times.append((time.perf_counter() - t0) * 1000)
    return float(np.median(times))
