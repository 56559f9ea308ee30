import numpy as np
import pytest

from domain_embed.config import SearchConfig
from domain_embed.errors import ConfigError
from domain_embed.retrieval.search import choose_backend, search, search_documents, search_to_disk


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


# --- scale: IVF, float16 memmaps, streaming to disk, device rules -------------------------------------------------

def _clustered(n, dim=32, n_centroids=50, nq=200, seed=0):
    """Normalised points around random centroids; queries are perturbed corpus points (as in mining)."""
    rng = np.random.default_rng(seed)
    centroids = rng.standard_normal((n_centroids, dim)).astype(np.float32)
    d = centroids[rng.integers(0, n_centroids, n)] + 0.3 * rng.standard_normal((n, dim)).astype(np.float32)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    q = d[rng.choice(n, nq, replace=False)] + 0.1 * rng.standard_normal((nq, dim)).astype(np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True), d


def _recall(approx, exact):
    return np.mean([len(set(a) & set(e)) / len(e) for a, e in zip(approx.tolist(), exact.tolist(), strict=True)])


def test_ivf_probing_every_cell_is_exact():
    q, d = _data(nd=2000)
    res = search(q, d, 10, SearchConfig(backend="faiss", device="cpu", index="ivf", nlist=16, nprobe=16))
    ref_s, ref_i = _brute(q, d, 10)
    np.testing.assert_array_equal(res.indices, ref_i)
    np.testing.assert_allclose(res.scores, ref_s, rtol=1e-5, atol=1e-5)
    assert res.backend == "faiss-ivf-cpu(nlist=16,nprobe=16)"
    assert set(res.timings) == {"train", "add", "search"}


def test_ivf_recall_at_moderate_nprobe_and_low_recall_at_one_probe():
    q, d = _clustered(5000, n_centroids=1000)  # more clusters than cells: neighbours straddle cells
    exact = _brute(q, d, 10)[1]
    cfg = SearchConfig(backend="faiss", device="cpu", index="ivf", nlist=64, nprobe=16)
    assert _recall(search(q, d, 10, cfg).indices, exact) > 0.9
    cfg.nprobe = 1  # guards the test: a single cell must miss neighbours, else the data is too easy
    assert _recall(search(q, d, 10, cfg).indices, exact) < 0.8


def test_ivf_short_result_lists_are_padded_with_minus_one_and_minus_inf():
    q, d = _clustered(400, n_centroids=10, nq=20)
    parents = np.repeat(np.arange(200), 2)  # two windows per document
    cfg = SearchConfig(backend="faiss", device="cpu", index="ivf", nlist=10, nprobe=1)
    for res, n_items in ((search(q, d, 150, cfg), 400), (search_documents(q, d, parents, 200, 150, cfg), 200)):
        missing = res.indices < 0
        assert missing.any() and not missing.all(axis=1).any()  # one cell of ~40 windows cannot fill k=150
        assert np.all(missing[:, :-1] <= missing[:, 1:])  # padding only at the end
        assert np.all(np.isneginf(res.scores[missing])) and np.all(np.isfinite(res.scores[~missing]))
        assert res.indices.max() < n_items
        assert all(len(set(r[r >= 0].tolist())) == (r >= 0).sum() for r in res.indices)  # distinct hits


def test_ivf_nlist_is_clipped_to_what_the_training_sample_supports(caplog):
    q, d = _data(nd=400)
    with caplog.at_level("WARNING"):
        res = search(q, d, 5, SearchConfig(backend="faiss", device="cpu", index="ivf", nlist=4096, nprobe=4,
                                           train_size=200))
    assert res.backend == "faiss-ivf-cpu(nlist=5,nprobe=4)"  # 200 // 39
    assert "nlist=4096 clipped to 5" in caplog.text


def test_ivf_pq_returns_valid_results():
    q, d = _clustered(1000, dim=16)  # small: PQ trains a 256-centroid k-means per sub-quantizer
    res = search(q, d, 10, SearchConfig(backend="faiss", device="cpu", index="ivf", nlist=8, nprobe=4, pq_m=8))
    assert res.backend == "faiss-ivfpq-cpu(nlist=8,nprobe=4,m=8)"
    assert res.indices.shape == res.scores.shape == (len(q), 10)
    assert res.indices.min() >= 0 and res.indices.max() < len(d)
    assert np.all(np.diff(res.scores, axis=1) <= 1e-6)  # best first
    assert _recall(res.indices, _brute(q, d, 10)[1]) > 0.6  # compressed (2 dims per byte), still finds neighbours


def test_ivf_pq_rejects_impossible_settings():
    q, d = _data(nd=3000)
    with pytest.raises(ConfigError, match="divide"):
        search(q, d, 5, SearchConfig(backend="faiss", device="cpu", index="ivf", nlist=4, pq_m=5))
    with pytest.raises(ConfigError, match="at least 256"):
        search(q, d[:100], 5, SearchConfig(backend="faiss", device="cpu", index="ivf", nlist=2, pq_m=4))


@pytest.mark.parametrize("backend,index", [("faiss", "flat"), ("torch", "flat"), ("faiss", "ivf")])
def test_float16_memmap_corpus_matches_float32(tmp_path, monkeypatch, backend, index):
    import domain_embed.retrieval.search as mod

    monkeypatch.setattr(mod, "_CORPUS_BLOCK", 300)  # corpus read, converted and added in several blocks
    q, d = _clustered(2000)
    np.save(tmp_path / "corpus.npy", d.astype(np.float16))
    mm = np.load(tmp_path / "corpus.npy", mmap_mode="r")
    cfg = SearchConfig(backend=backend, device="cpu", index=index, nlist=8, nprobe=8)
    res = search(q, mm, 10, cfg)
    same_values = search(q, np.asarray(mm, dtype=np.float32), 10, cfg)  # float16 -> float32 is exact
    np.testing.assert_array_equal(res.indices, same_values.indices)
    np.testing.assert_array_equal(res.scores, same_values.scores)
    assert _recall(res.indices, _brute(q, d, 10)[1]) > 0.97  # rounding to float16 only reorders near-ties


class _BlockReadOnly:
    """A corpus that records how many rows each read takes and cannot be turned into one array."""

    def __init__(self, a):
        self.a, self.shape, self.dtype, self.max_rows = a, a.shape, a.dtype, 0

    def __getitem__(self, item):
        rows = self.a[item]
        self.max_rows = max(self.max_rows, len(rows))
        return rows


@pytest.mark.parametrize("backend,index", [("faiss", "flat"), ("torch", "flat"), ("faiss", "ivf")])
def test_corpus_is_only_read_in_blocks(monkeypatch, backend, index):
    import domain_embed.retrieval.search as mod

    monkeypatch.setattr(mod, "_CORPUS_BLOCK", 128)
    q, d = _data(nd=1000)
    corpus = _BlockReadOnly(d)
    res = search(q, corpus, 10, SearchConfig(backend=backend, device="cpu", index=index, nlist=4, nprobe=4,
                                             train_size=256))
    np.testing.assert_array_equal(res.indices, _brute(q, d, 10)[1])
    assert corpus.max_rows == (256 if index == "ivf" else 128)  # training sample, else one block


@pytest.mark.parametrize("index", ["flat", "ivf"])
def test_search_to_disk_equals_search(tmp_path, index):
    q, d = _clustered(2000, nq=300)
    cfg = SearchConfig(backend="faiss", device="cpu", index=index, nlist=16, nprobe=4, query_block=64)
    res = search_to_disk(q, d, 10, cfg, tmp_path / "out")
    ref = search(q, d, 10, cfg)
    assert isinstance(res.indices, np.memmap) and isinstance(res.scores, np.memmap)
    np.testing.assert_array_equal(res.indices, ref.indices)
    np.testing.assert_array_equal(res.scores, ref.scores)
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "indices.npy"), ref.indices)
    assert res.backend == ref.backend


def _no_gpu(monkeypatch, faiss_gpus=0, cuda=False):
    import domain_embed.retrieval.search as mod

    monkeypatch.setattr(mod, "_faiss_gpus", lambda: faiss_gpus)
    monkeypatch.setattr(mod, "_cuda_available", lambda: cuda)


@pytest.mark.parametrize("backend", ["auto", "faiss", "torch"])
def test_unmet_gpu_request_is_an_error_unless_cpu_fallback_is_allowed(monkeypatch, caplog, backend):
    _no_gpu(monkeypatch)
    q, d = _data()
    with pytest.raises(ConfigError, match="no CUDA"):
        search(q, d, 10, SearchConfig(backend=backend, device="cuda"))
    with caplog.at_level("WARNING"):
        res = search(q, d, 10, SearchConfig(backend=backend, device="cuda", allow_cpu_fallback=True))
    ran = "torch-cpu" if backend == "torch" else "faiss-cpu"
    assert res.backend == ran
    np.testing.assert_array_equal(res.indices, _brute(q, d, 10)[1])
    [warning] = [r for r in caplog.records if r.levelname == "WARNING"]
    assert "device=cuda" in warning.message and f"running {ran}" in warning.message


def test_device_rules_with_cuda_but_cpu_only_faiss(monkeypatch, caplog):
    _no_gpu(monkeypatch, cuda=True)
    assert choose_backend("auto", "cuda", 10) == "torch-cuda"  # exact on the GPU without FAISS GPU
    assert choose_backend("auto", "auto", 10) == "torch-cuda"
    with pytest.raises(ConfigError, match="no GPU support"):
        choose_backend("faiss", "cuda", 10)
    with pytest.raises(ConfigError, match="no GPU support"):
        choose_backend("auto", "auto", 10, index="ivf")  # auto resolved to the GPU: not met either
    with caplog.at_level("WARNING"):
        assert choose_backend("auto", "cuda", 10, index="ivf", allow_cpu_fallback=True) == "faiss-cpu"
    assert "index=ivf" in caplog.text and "running faiss-cpu" in caplog.text


def test_k_above_faiss_gpu_limit(monkeypatch, caplog):
    _no_gpu(monkeypatch, faiss_gpus=8, cuda=True)
    assert choose_backend("auto", "auto", 2048) == "faiss-gpu"
    with caplog.at_level("INFO"):
        assert choose_backend("faiss", "cuda", 2049) == "torch-cuda"  # still exact
    assert "exceeds FAISS GPU's limit" in caplog.text
    with pytest.raises(ConfigError, match="no IVF"):
        choose_backend("faiss", "cuda", 2049, index="ivf")


def test_ivf_needs_faiss():
    with pytest.raises(ConfigError, match="torch backend only does exact"):
        search(*_data(), 10, SearchConfig(backend="torch", device="cpu", index="ivf"))
    with pytest.raises(ConfigError, match="unknown search index"):
        choose_backend("auto", "cpu", 10, index="hnsw")


@pytest.mark.parametrize("index", ["flat", "ivf"])
def test_gpu_sharding_adds_in_blocks(monkeypatch, index):
    """Simulates faiss's multi-GPU cloner on CPU (IndexShards of empty copies, as faiss builds them):
    sharded flat indexes take a single add(), so blocks must go to each shard directly."""
    import faiss

    import domain_embed.retrieval.search as mod

    def to_all_gpus(cpu_index, co=None):
        if co is None:  # k-means assignment index
            return cpu_index
        assert co.shard
        shards = faiss.IndexShards(cpu_index.d, True, isinstance(cpu_index, faiss.IndexFlat))
        for _ in range(3):
            shards.add_shard(faiss.clone_index(cpu_index))
        return shards

    _no_gpu(monkeypatch, faiss_gpus=3)
    monkeypatch.setattr(faiss, "GpuMultipleClonerOptions", lambda: type("Co", (), {})(), raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", to_all_gpus, raising=False)
    monkeypatch.setattr(mod, "_CORPUS_BLOCK", 100)
    q, d = _data(nd=1000)
    res = search(q, d, 10, SearchConfig(index=index, nlist=8, nprobe=8, fp16=True))
    np.testing.assert_array_equal(res.indices, _brute(q, d, 10)[1])
    assert res.backend == ("faiss-gpu(3,fp16)" if index == "flat" else "faiss-ivf-gpu(3,nlist=8,nprobe=8,fp16)")
