"""Fusion on hand-made rankings: exact scores, order, ties, one-sided documents and padding."""

import numpy as np
import pytest

from domain_embed.retrieval.fusion import Fusion, fuse


def _rows(*rows):
    return np.array(rows, dtype=np.int64)


def test_rrf_sums_reciprocal_ranks_of_both_sides():
    dense = (_rows([3, 1, 2]), np.array([[0.9, 0.8, 0.1]]))
    sparse = (_rows([1, 4, 3]), np.array([[7.0, 5.0, 1.0]]))
    indices, scores = fuse(dense, sparse, 4, Fusion("rrf", rrf_k=60))
    expected = {1: 1 / 62 + 1 / 61, 3: 1 / 61 + 1 / 63, 4: 1 / 62, 2: 1 / 63}  # 4 sparse only, 2 dense only
    assert indices.tolist() == [[1, 3, 4, 2]]
    assert scores[0] == pytest.approx([expected[d] for d in (1, 3, 4, 2)], abs=1e-15)


def test_convex_weights_min_max_normalised_scores():
    dense = (_rows([0, 1, 2]), np.array([[1.0, 0.5, 0.0]]))  # normalised 1, 0.5, 0
    sparse = (_rows([2, 1, 3]), np.array([[10.0, 6.0, 2.0]]))  # normalised 1, 0.5, 0
    indices, scores = fuse(dense, sparse, 4, Fusion("convex", alpha=0.7))
    # 0: 0.7; 1: 0.35 + 0.15; 2: 0 + 0.3; 3 (sparse only, its side's minimum): 0
    assert indices.tolist() == [[0, 1, 2, 3]]
    assert scores[0] == pytest.approx([0.7, 0.5, 0.3, 0.0])
    swapped, _ = fuse(dense, sparse, 4, Fusion("convex", alpha=0.2))
    assert swapped.tolist() == [[2, 1, 0, 3]]  # 2: 0.8, 1: 0.5, 0: 0.2


def test_ties_go_to_the_lower_document_position():
    dense = (_rows([5, 2]), np.array([[1.0, 0.0]]))
    sparse = (_rows([2, 5]), np.array([[3.0, 1.0]]))
    for fusion in (Fusion("rrf"), Fusion("convex", alpha=0.5)):
        indices, scores = fuse(dense, sparse, 2, fusion)
        assert scores[0, 0] == scores[0, 1] and indices.tolist() == [[2, 5]]


def test_padding_is_ignored_and_short_results_are_padded():
    dense = (_rows([4, -1, -1], [-1, -1, -1]), np.array([[0.5, -np.inf, -np.inf], [-np.inf] * 3]))
    sparse = (_rows([4, 0, -1], [1, -1, -1]), np.array([[2.0, 1.0, 0.0], [3.0, 0.0, 0.0]]))
    indices, scores = fuse(dense, sparse, 3, Fusion("rrf", rrf_k=1))
    assert indices.tolist() == [[4, 0, -1], [1, -1, -1]]
    assert scores[0, :2].tolist() == pytest.approx([1 / 2 + 1 / 2, 1 / 3]) and scores[1, 0] == pytest.approx(1 / 2)
    assert np.isneginf(scores[0, 2]) and np.isneginf(scores[1, 1:]).all()
    convex, _ = fuse(dense, sparse, 3, Fusion("convex", alpha=0.5))
    assert convex.tolist() == [[4, 0, -1], [1, -1, -1]]  # a one-entry list is still fused, with weight 0


def test_a_bm25_document_with_no_term_match_gains_no_credit():
    """bm25s fills its top k with zero-score documents: they are padding, not a second vote."""
    dense = (_rows([0, 1]), np.array([[0.9, 0.8]]))
    sparse = (_rows([5, 1, 2]), np.array([[3.0, 0.0, 0.0]]))  # only document 5 shares a term with the query
    indices, scores = fuse(dense, sparse, 4, Fusion("rrf", rrf_k=60))
    assert indices.tolist() == [[0, 5, 1, -1]] and scores[0, :3] == pytest.approx([1 / 61, 1 / 61, 1 / 62])
    convex, _ = fuse(dense, sparse, 4, Fusion("convex", alpha=0.5))
    assert convex.tolist() == [[0, 1, 5, -1]]  # 5 alone on its side separates nothing; 2 is not fused at all


def test_a_side_whose_scores_are_all_equal_adds_nothing():
    """BM25 for a query without any indexed word: zero scores in corpus order, which must not reorder the dense."""
    dense = (_rows([2, 0, 1]), np.array([[0.9, 0.5, 0.1]]))
    sparse = (_rows([0, 1, 2]), np.zeros((1, 3)))
    indices, scores = fuse(dense, sparse, 3, Fusion("convex", alpha=0.5))
    assert indices.tolist() == [[2, 0, 1]] and scores[0] == pytest.approx([0.5, 0.25, 0.0])


def test_unknown_method_is_refused():
    one = (_rows([0]), np.ones((1, 1)))
    with pytest.raises(ValueError, match="unknown fusion method"):
        fuse(one, one, 1, Fusion("sum"))
