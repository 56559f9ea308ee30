import numpy as np
import pytest

from domain_embed.config import SearchConfig
from domain_embed.errors import ConfigError
from domain_embed.retrieval.search import choose_backend, search, search_documents


def _data(nq=37, nd=501, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((nq, dim)).astype(np.float32)
    d = rng.standard_normal((nd, dim)).astype(np.float32)
    return q, d


def _brute(q, d, k):
    s = q @ d.T
    idx = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, idx, 1), idx


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_exact_search_matches_brute_force(backend):
    q, d = _data()
    res = search(q, d, 10, SearchConfig(backend=backend, device="cpu", query_block=8))  # several query blocks
    ref_s, ref_i = _brute(q, d, 10)
    np.testing.assert_array_equal(res.indices, ref_i)
    np.testing.assert_allclose(res.scores, ref_s, rtol=1e-5, atol=1e-5)
    assert res.backend == f"{backend}-cpu"


def test_torch_backend_merges_corpus_blocks(monkeypatch):
    import domain_embed.retrieval.search as mod

    monkeypatch.setattr(mod, "_CORPUS_BLOCK", 64)  # 501 docs -> 8 blocks, top-k merged across them
    q, d = _data()
    res = search(q, d, 20, SearchConfig(backend="torch", device="cpu"))
    np.testing.assert_array_equal(res.indices, _brute(q, d, 20)[1])


def test_k_is_clipped_to_corpus_size():
    q, d = _data(nd=5)
    assert search(q, d, 100, SearchConfig(backend="faiss", device="cpu")).indices.shape == (37, 5)


def test_backend_choice_and_impossible_requests():
    assert choose_backend("auto", "cpu", 10) == "faiss-cpu"
    assert choose_backend("torch", "cpu", 10) == "torch-cpu"
    with pytest.raises(ConfigError):
        choose_backend("annoy", "cpu", 10)
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA"):
            choose_backend("auto", "cuda", 10)


def test_search_documents_scores_a_document_by_its_best_window():
    rng = np.random.default_rng(1)
    n_docs = 40
    parents = np.sort(rng.integers(0, n_docs, 120))
    parents[:n_docs] = np.arange(n_docs)  # every document has at least one window
    parents = np.sort(parents)
    q, w = _data(nq=11, nd=len(parents), seed=2)
    res = search_documents(q, w, parents, n_docs, 15, SearchConfig(backend="faiss", device="cpu"))
    s = q @ w.T
    doc_scores = np.full((len(q), n_docs), -np.inf, dtype=np.float32)
    for j, p in enumerate(parents):
        doc_scores[:, p] = np.maximum(doc_scores[:, p], s[:, j])
    ref = np.argsort(-doc_scores, axis=1, kind="stable")[:, :15]
    np.testing.assert_array_equal(res.indices, ref)
    np.testing.assert_allclose(res.scores, np.take_along_axis(doc_scores, ref, 1), rtol=1e-5, atol=1e-5)
    assert all(len(set(row)) == 15 for row in res.indices.tolist())
