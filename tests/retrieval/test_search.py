import numpy as np
import pytest

from domain_embed.config import SearchConfig
from domain_embed.errors import ConfigError
from domain_embed.retrieval.search import (
    FAISS_GPU_MAX_K,
    choose_backend,
    documents_by_best_window,
    search,
    search_documents,
)


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


def test_torch_precision_is_float32_unless_fp16_is_asked():
    """The CUDA decision, checked on CPU: "exact" must not silently mean float16 on a GPU."""
    import torch

    from domain_embed.retrieval.torch_search import _torch_precision

    assert _torch_precision("cuda", False) == (torch.float32, "torch-cuda")
    assert _torch_precision("cuda", True) == (torch.float16, "torch-cuda(fp16)")


def test_torch_fp16_runs_on_any_device_and_says_so():
    q, d = _clustered(500, dim=16, nq=20)
    res = search(q, d, 10, SearchConfig(backend="torch", device="cpu", fp16=True))
    assert res.backend == "torch-cpu(fp16)"
    assert _recall(res.indices, _brute(q, d, 10)[1]) > 0.9  # 16-bit rounding only reorders near-ties


def test_torch_backend_reports_the_corpus_upload_as_add():
    res = search(*_data(), 5, SearchConfig(backend="torch", device="cpu"))
    assert set(res.timings) == {"add", "search"}


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


def _brute_documents(q, w, parents, n_docs, k):
    """Every window scored, each document by its best one: the ranking search_documents must reproduce."""
    doc_scores = np.full((n_docs, len(q)), -np.inf, dtype=np.float32)
    np.maximum.at(doc_scores, parents, (q @ w.T).T)
    idx = np.argsort(-doc_scores.T, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(doc_scores.T, idx, 1), idx


def test_search_documents_scores_a_document_by_its_best_window():
    rng = np.random.default_rng(1)
    n_docs = 40
    parents = np.sort(rng.integers(0, n_docs, 120))
    parents[:n_docs] = np.arange(n_docs)  # every document has at least one window
    parents = np.sort(parents)
    q, w = _data(nq=11, nd=len(parents), seed=2)
    res = search_documents(q, w, parents, n_docs, 15, SearchConfig(backend="faiss", device="cpu"))
    ref_s, ref_i = _brute_documents(q, w, parents, n_docs, 15)
    np.testing.assert_array_equal(res.indices, ref_i)
    np.testing.assert_allclose(res.scores, ref_s, rtol=1e-5, atol=1e-5)
    assert all(len(set(row)) == 15 for row in res.indices.tolist())


def test_best_window_rule_breaks_ties_by_window_order():
    docs, scores = documents_by_best_window(np.array([0.5, 0.9, 0.9, 0.1, 0.7], dtype=np.float32),
                                            np.array([2, 1, 0, 2, 0]))
    assert docs.tolist() == [1, 0, 2]
    np.testing.assert_array_equal(scores, np.array([0.9, 0.9, 0.5], dtype=np.float32))


def _long_documents(near_docs, windows_each, far_docs, nq_near=4, nq_far=2, dim=8, seed=3):
    """`near_docs` documents of `windows_each` windows around a centroid, `far_docs` one-window documents
    opposite, windows of a document scattered: queries near the centroid need every near window before
    they see k documents; queries opposite find k in their first windows."""
    rng = np.random.default_rng(seed)
    c = np.zeros(dim, dtype=np.float32)
    c[0] = 3
    parents = np.concatenate([np.repeat(np.arange(near_docs), windows_each), near_docs + np.arange(far_docs)])
    w = np.where((parents < near_docs)[:, None], c, -c) + rng.standard_normal((len(parents), dim)).astype(np.float32)
    q = np.concatenate([np.tile(c, (nq_near, 1)), np.tile(-c, (nq_far, 1))])
    q += rng.standard_normal(q.shape).astype(np.float32)
    order = rng.permutation(len(parents))
    return q, w[order], parents[order]


def _record_searches(monkeypatch):
    """(rows, k) of every block search, whatever the backend."""
    import domain_embed.retrieval.search as mod

    calls, searcher = [], mod._searcher

    def recording(corpus, k, cfg, timings):
        search_block, label, chosen = searcher(corpus, k, cfg, timings)

        def search_and_record(q, k):
            calls.append((len(q), k))
            return search_block(q, k)

        return search_and_record, label, chosen

    monkeypatch.setattr(mod, "_searcher", recording)
    return calls


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_search_documents_requeries_only_short_rows_and_stays_exact(monkeypatch, backend):
    import domain_embed.retrieval.search as mod

    monkeypatch.setattr(mod, "_CORPUS_BLOCK", 64)  # torch merges k across many corpus blocks
    calls = _record_searches(monkeypatch)
    q, w, parents = _long_documents(near_docs=6, windows_each=50, far_docs=30)
    n_docs, k = 36, 10
    res = search_documents(q, w, parents, n_docs, k, SearchConfig(backend=backend, device="cpu", query_block=4))
    ref_s, ref_i = _brute_documents(q, w, parents, n_docs, k)
    np.testing.assert_array_equal(res.indices, ref_i)
    np.testing.assert_allclose(res.scores, ref_s, rtol=1e-5, atol=1e-5)
    assert calls[:2] == [(4, 40), (2, 40)]  # every row once, in query blocks
    requeried = {kk: sum(rows for rows, c in calls[2:] if c == kk) for _, kk in calls[2:]}
    assert requeried == {80: 4, 160: 4, 320: 4}  # only the 4 near queries, until 6 x 50 + 4 windows are in
    assert all(rows * kk <= 4 * 40 or rows == 1 for rows, kk in calls)  # fewer rows per search as k grows


class _Options:
    """faiss's GpuMultipleClonerOptions: plain attributes, defaults as in faiss."""

    def __init__(self):
        self.shard, self.useFloat16 = False, False


def _fake_faiss_gpus(monkeypatch, n_gpus, to_gpu):
    """FAISS GPU simulated on CPU: `to_gpu(cpu_index)` plays the sharded clone; k-means stays on the CPU index."""
    import faiss

    def index_cpu_to_all_gpus(index, co=None):
        if not co.shard:  # k-means assignment index
            return index
        return to_gpu(index)

    _no_gpu(monkeypatch, faiss_gpus=n_gpus)
    monkeypatch.setattr(faiss, "GpuMultipleClonerOptions", _Options, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", index_cpu_to_all_gpus, raising=False)


def _fake_faiss_on_gpus(monkeypatch, n_gpus: int) -> list[tuple]:
    """Every FAISS GPU entry point on CPU indexes; returns the calls made, with the options as they were."""
    import faiss

    import domain_embed.retrieval.search as mod

    calls = []

    def index_cpu_to_gpus_list(index, co=None, gpus=None, ngpu=-1):
        calls.append(("list", gpus, co.shard, co.useFloat16, type(index).__name__))
        return index

    def index_cpu_to_all_gpus(index, co=None, ngpu=-1):
        calls.append(("all", None, co.shard, co.useFloat16, type(index).__name__))
        return index

    monkeypatch.setattr(mod, "_faiss_gpus", lambda: n_gpus)
    monkeypatch.setattr(mod, "_cuda_available", lambda: True)
    monkeypatch.setattr("torch.cuda.device_count", lambda: n_gpus)
    for name, value in (("GpuMultipleClonerOptions", _Options), ("index_cpu_to_gpus_list", index_cpu_to_gpus_list),
                        ("index_cpu_to_all_gpus", index_cpu_to_all_gpus)):
        monkeypatch.setattr(faiss, name, value, raising=False)
    return calls


@pytest.mark.parametrize("index", ["flat", "ivf"])
@pytest.mark.parametrize("local_rank", [None, "0", "2"])
def test_faiss_gpu_index_spans_all_gpus_alone_and_only_the_ranks_gpu_under_a_launcher(monkeypatch, index,
                                                                                      local_rank):
    from domain_embed.retrieval.search import _faiss_searcher

    calls = _fake_faiss_on_gpus(monkeypatch, n_gpus=4)
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    if local_rank is not None:  # what torchrun / accelerate launch set in each of 4 processes
        monkeypatch.setenv("WORLD_SIZE", "4")
        monkeypatch.setenv("RANK", local_rank)
        monkeypatch.setenv("LOCAL_RANK", local_rank)
    q, d = _clustered(1000, nq=20)
    cfg = SearchConfig(backend="faiss", device="cuda", index=index, nlist=4, nprobe=4, fp16=True)
    search_block, label = _faiss_searcher(d, cfg, gpu=True, timings={})
    kind = "IndexIVFFlat" if index == "ivf" else "IndexFlatIP"
    where = ("all", None) if local_rank is None else ("list", [int(local_rank)])  # under a launcher: its GPU only
    assert calls[-1] == (*where, True, True, kind)  # the corpus sliced over the GPUs named, in fp16 as asked
    gpus = "4" if local_rank is None else f"cuda:{local_rank}"
    assert label.startswith(f"faiss-{'ivf-' if index == 'ivf' else ''}gpu({gpus},")
    if index == "ivf":  # k-means assignment on the same GPUs: copies, never a shard, and float32
        assert calls[:-1] == [(*where, False, False, "IndexFlatIP")]
    else:
        assert len(calls) == 1
    _, found = search_block(q, 5)
    assert _recall(found, _brute(q, d, 5)[1]) > (0.6 if index == "ivf" else 0.999)


def test_a_rank_that_sees_fewer_gpus_than_its_local_rank_is_refused(monkeypatch):
    from domain_embed.retrieval.search import _faiss_searcher

    _fake_faiss_on_gpus(monkeypatch, n_gpus=2)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "3")
    with pytest.raises(ConfigError, match="LOCAL_RANK=3 but this process sees 2 GPU"):
        _faiss_searcher(_data()[1], SearchConfig(backend="faiss", device="cuda"), gpu=True, timings={})


class _KRecordingIndex:
    """A CPU index standing in for a FAISS GPU one: remembers every k it was asked for."""

    def __init__(self, index):
        self.index, self.ks = index, []

    def add(self, x):
        self.index.add(x)

    def search(self, q, k):
        self.ks.append(k)
        return self.index.search(q, k)


@pytest.mark.parametrize("index", ["flat", "ivf"])
def test_search_documents_never_asks_faiss_gpu_for_more_than_its_k_limit(monkeypatch, caplog, index):
    gpu_indexes = []

    def to_gpu(cpu_index):
        gpu_indexes.append(_KRecordingIndex(cpu_index))
        return gpu_indexes[-1]

    _fake_faiss_gpus(monkeypatch, 1, to_gpu)
    q, w, parents = _long_documents(near_docs=9, windows_each=300, far_docs=20)  # 2,720 windows
    n_docs, k = 29, 10
    cfg = SearchConfig(index=index, nlist=4, nprobe=4, allow_cpu_fallback=True)
    with caplog.at_level("WARNING"):
        res = search_documents(q, w, parents, n_docs, k, cfg)
    [gpu_index] = gpu_indexes
    assert max(gpu_index.ks) == FAISS_GPU_MAX_K  # doubled up to the limit, never past it
    ref_s, ref_i = _brute_documents(q, w, parents, n_docs, k)
    if index == "flat":  # beyond the limit: the backend choose_backend picks for that k (no CUDA here: faiss-cpu)
        assert res.backend == "faiss-gpu(1)+faiss-cpu" and "k=2720 exceeds FAISS GPU's limit" in caplog.text
        np.testing.assert_array_equal(res.indices, ref_i)
        np.testing.assert_allclose(res.scores, ref_s, rtol=1e-5, atol=1e-5)
    else:  # IVF stops at the limit: the near queries see 9 documents in 2,048 windows, the 10th is padding
        assert res.backend.startswith("faiss-ivf-gpu(1,") and "+" not in res.backend
        np.testing.assert_array_equal(res.indices[:4, :9], ref_i[:4, :9])
        assert np.all(res.indices[:4, 9] == -1) and np.all(np.isneginf(res.scores[:4, 9]))
        np.testing.assert_array_equal(res.indices[4:], ref_i[4:])


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
    sharded flat indexes take a single add(), so blocks must go to each shard directly. GPU phases are
    timed once the GPUs are done (the CUDA synchronisation is counted)."""
    import faiss

    import domain_embed.retrieval.search as mod

    def to_all_gpus(cpu_index):
        shards = faiss.IndexShards(cpu_index.d, True, isinstance(cpu_index, faiss.IndexFlat))
        for _ in range(3):
            shards.add_shard(faiss.clone_index(cpu_index))
        return shards

    _fake_faiss_gpus(monkeypatch, 3, to_all_gpus)
    syncs = []
    monkeypatch.setattr(mod, "_sync_cuda", lambda: syncs.append(1))
    monkeypatch.setattr(mod, "_CORPUS_BLOCK", 100)
    q, d = _data(nd=1000)
    res = search(q, d, 10, SearchConfig(index=index, nlist=8, nprobe=8, fp16=True))
    np.testing.assert_array_equal(res.indices, _brute(q, d, 10)[1])
    assert res.backend == ("faiss-gpu(3,fp16)" if index == "flat" else "faiss-ivf-gpu(3,nlist=8,nprobe=8,fp16)")
    assert len(syncs) == (1 if index == "flat" else 2)  # add; train and add


def test_a_rank_waits_for_its_own_gpu_only(monkeypatch):
    """Under a launcher each rank searches on its own GPU: a sync of every visible one would open a CUDA context on
    each of them, from every rank (hundreds of MB each). Without a launcher FAISS shards over them all."""
    import torch

    import domain_embed.retrieval.search as mod

    synced = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: synced.append(device))
    mod._sync_cuda()
    assert synced == [0, 1, 2, 3]
    synced.clear()
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "2")
    mod._sync_cuda()
    assert synced == [2]
