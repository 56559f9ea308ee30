"""Vector formats: float32 at full dims is the plain dense ranking, bytes per document follow the format, and binary
candidates are re-ranked with the float32 query."""

import numpy as np
import pytest

from domain_embed.config import EvalConfig, FormatsConfig, SearchConfig
from domain_embed.data.domain import DomainData
from domain_embed.errors import ConfigError
from domain_embed.retrieval.formats import format_grid, rank_format
from domain_embed.retrieval.search import search_documents

CFG = EvalConfig(k_values=[1, 10], search=SearchConfig(backend="torch", device="cpu"))


def _data(n_docs: int, n_queries: int) -> DomainData:
    return DomainData(corpus_ids=[f"d{i}" for i in range(n_docs)], corpus_titles=[""] * n_docs,
                      corpus_texts=["x"] * n_docs, queries={f"q{i}": "y" for i in range(n_queries)},
                      qrels={"test": {f"q{i}": {f"d{i % n_docs}": 1} for i in range(n_queries)}}, source="test")


def _random(n_queries=12, n_docs=40, dim=24):
    """Unit vectors; every fourth document has a second window."""
    rng = np.random.default_rng(0)
    parents = np.sort(np.concatenate([np.arange(n_docs), np.arange(0, n_docs, 4)]))
    unit = [rng.standard_normal((n, dim)).astype(np.float32) for n in (n_queries, len(parents))]
    q, c = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in unit)
    return q, c, parents, _data(n_docs, n_queries)


def test_float32_at_full_dims_is_the_plain_dense_ranking():
    q, c, parents, data = _random()
    got = rank_format(q, c, parents, data, "test", 24, "float32", CFG)
    ref = search_documents(q, c, parents, len(data), 10, CFG.search)
    np.testing.assert_array_equal(got.result.indices, ref.indices)
    np.testing.assert_array_equal(got.result.scores, ref.scores)
    assert not got.rescored


@pytest.mark.parametrize(("dims", "precision", "per_window"), [
    (24, "float32", 96), (16, "float32", 64), (24, "int8", 24), (12, "int8", 12), (24, "binary", 3), (12, "binary", 2)])
def test_bytes_per_document_count_every_window_in_its_format(dims, precision, per_window):
    q, c, parents, data = _random()
    got = rank_format(q, c, parents, data, "test", dims, precision, CFG)
    assert got.bytes_per_document == pytest.approx(per_window * len(parents) / len(data))  # 50 windows, 40 documents
    assert got.result.indices.shape == (len(q), 10) and (got.result.indices >= 0).all()


def test_binary_candidates_are_reranked_with_the_float32_query():
    # query bits are all 1. d0 differs in 1 bit (Hamming-closest) but loses the heavy first coordinate; d1 differs
    # in 3 bits and keeps it: the float32 query puts d1 first. d0's second window (all bits 0) never counts.
    q = np.array([[1.0] + [0.1] * 7], dtype=np.float32)
    c = np.array([[-1] + [1] * 7, [1, -1, -1, -1, 1, 1, 1, 1], [-1] * 8], dtype=np.float32) * 0.3
    parents = np.array([0, 1, 0])
    data = _data(2, 1)  # q0's positive is d0
    cfg = EvalConfig(k_values=[1, 10], search=CFG.search, formats=FormatsConfig(rescore_depth=2))
    signs = np.sign(c)
    hamming = search_documents(np.sign(q), signs, parents, 2, 2, cfg.search)
    assert hamming.indices.tolist() == [[0, 1]]
    got = rank_format(q, c, parents, data, "test", 8, "binary", cfg)
    assert got.rescored and got.result.indices[0, :2].tolist() == [1, 0]
    assert got.result.scores[0, :2] == pytest.approx([1.0 - 0.3 + 0.4, -1.0 + 0.7])
    assert got.result.metrics.mean()["recall@1"] == 0.0  # the re-ranked order is the one scored
    assert got.bytes_per_document == 3 / 2


def test_grid_defaults_to_full_and_matryoshka_dims_and_rejects_unknown_formats():
    assert format_grid(FormatsConfig(precisions=["float32", "binary"]), 32, [16, 32]) == [
        (32, "float32"), (32, "binary"), (16, "float32"), (16, "binary")]
    with pytest.raises(ConfigError, match=r"^eval\.formats\.precisions=\['int4'\]"):
        format_grid(FormatsConfig(precisions=["int4"]), 32, [])
    with pytest.raises(ConfigError, match=r"eval\.formats\.dims"):
        format_grid(FormatsConfig(dims=[64]), 32, [])
    q, c, parents, data = _random()
    with pytest.raises(ConfigError, match=r"eval\.formats\.precisions"):
        rank_format(q, c, parents, data, "test", 24, "int4", CFG)


def test_int8_ranks_exactly_as_faiss_index_scalar_quantizer():
    """int8 is an IndexScalarQuantizer (QT_8bit): the float32 query against the corpus's decoded 8-bit codes."""
    import faiss

    q, c, _, _ = _random()
    parents = np.arange(len(c))  # one window per document: the index's own ranking is the document ranking
    index = faiss.IndexScalarQuantizer(c.shape[1], faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    index.train(c)
    index.add(c)
    scores, indices = index.search(q, 10)
    got = rank_format(q, c, parents, _data(len(c), len(q)), "test", 24, "int8", CFG)
    np.testing.assert_array_equal(got.result.indices, indices)
    np.testing.assert_allclose(got.result.scores, scores, rtol=1e-5, atol=1e-6)
    assert got.bytes_per_document == 24 and not got.rescored
