"""Reranking a first stage's candidates: equal to scoring each pair alone and sorting, each pair scored once, the
tail below the depth left in the first stage's order."""

import numpy as np
import pytest
import torch
from sentence_transformers import CrossEncoder

from domain_embed.retrieval.rerank import PairScorer, candidates, latency_ms, rerank

QUERIES = [f"what does topic{i} rule{i} require" for i in range(4)]
DOCS = [f"topic{i} rule{i}: the firm shall notify the regulator within {i} days" for i in range(12)]


@pytest.fixture(scope="module")
def model(tiny_cross_encoder):
    return CrossEncoder(str(tiny_cross_encoder), device="cpu")


def _first_stage() -> np.ndarray:
    rng = np.random.default_rng(0)
    ranking = np.stack([rng.permutation(len(DOCS))[:8] for _ in QUERIES])
    ranking[3, 5:] = -1  # a query with fewer documents than the depth
    return ranking


class _Counting:
    def __init__(self, model):
        self.model, self.pairs = model, 0

    def predict(self, pairs, **kwargs):
        self.pairs += len(pairs)
        return self.model.predict(pairs, **kwargs)


def test_reranked_rankings_equal_a_brute_force_rerank_of_the_same_candidates(model):
    first, depth = _first_stage(), 6
    scorer = PairScorer(model, QUERIES, lambda q, d: DOCS[d], batch_size=3)
    scorer.score(candidates(first, depth))
    indices, scores = rerank(first, scorer.scores, depth)
    for q, query in enumerate(QUERIES):
        head = [int(d) for d in first[q, :depth] if d >= 0]
        alone = [float(model.predict([(query, DOCS[d])], activation_fn=torch.nn.Identity())[0]) for d in head]
        expected = [head[i] for i in sorted(range(len(head)), key=lambda i: -alone[i])]
        assert indices[q, :len(head)].tolist() == expected
        assert scores[q, :len(head)] == pytest.approx(sorted(alone, reverse=True), abs=1e-5)
        assert indices[q, len(head):].tolist() == first[q, len(head):].tolist()  # the tail keeps its order
        assert np.isneginf(scores[q, len(head):]).all()
    assert sorted(indices[0].tolist()) == sorted(first[0].tolist())  # the same candidates, reordered


def test_each_pair_is_scored_once_across_depths_and_first_stages(model):
    counting = _Counting(model)
    scorer = PairScorer(counting, QUERIES, lambda q, d: DOCS[d])
    first = _first_stage()
    scorer.score(candidates(first, 3))
    scorer.score(candidates(first, 6))  # the first 3 of each row are not scored again
    scorer.score(candidates(first[::-1].copy(), 2, rows=[0]))
    assert counting.pairs == len(scorer.scores) == len(set(candidates(first, 6)) | {(0, int(first[3, 0])),
                                                                                    (0, int(first[3, 1]))})
    assert scorer.pairs_per_second > 0


def test_ties_keep_the_first_stage_order():
    first = np.array([[4, 2, 9, 1]])
    indices, _ = rerank(first, {(0, 4): 0.0, (0, 2): 1.0, (0, 9): 0.0, (0, 1): 5.0}, 3)
    assert indices.tolist() == [[2, 4, 9, 1]]


def test_latency_is_measured_per_query(model):
    assert latency_ms(model, QUERIES[:2], [DOCS[:3], DOCS[3:6]]) > 0
    assert latency_ms(model, [], []) is None
