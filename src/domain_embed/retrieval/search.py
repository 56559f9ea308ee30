"""Inner-product top-k search: the only module that touches FAISS.

Exact search has two backends with one contract: FAISS (`IndexFlatIP`, sharded over all visible GPUs
when faiss has them, or on the rank's own GPU under a launcher) and torch (`torch_search`: blocked matmul + top-k,
on CUDA when present) for machines without FAISS GPU. Both compute in float32 unless `search.fp16` asks for a
16-bit index, and then say so.
Mining at scale may use FAISS IVF (`index=ivf`, optionally with product quantisation).
The corpus may be a float16 memmap larger than RAM, so it is only ever read, converted and added in
blocks; queries are searched in blocks (`search.query_block`), which bounds the intermediate memory. Under a
launcher, when every rank searches together, the ranks split the query blocks and all-gather the results.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from domain_embed import distributed
from domain_embed.config import SearchConfig
from domain_embed.errors import ConfigError
from domain_embed.retrieval.torch_search import torch_searcher

log = logging.getLogger(__name__)

FAISS_GPU_MAX_K = 2048  # FAISS GPU's hard limit on k (and on nprobe)
_CORPUS_BLOCK = 65536  # corpus rows converted/moved/added at a time
_MIN_TRAIN_PER_CELL = 39  # faiss k-means wants at least this many training points per centroid
_PQ_CENTROIDS = 256  # 8-bit product quantiser: each sub-quantiser needs this many training points
_TRAIN_SEED = 0
_WINDOW_K_FACTOR = 4  # search_documents first fetches this many windows per document asked for

BlockSearch = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]  # (queries, k) -> scores, indices
T = TypeVar("T")


@dataclass
class SearchResult:
    scores: np.ndarray  # (n_queries, k) float32, best first
    indices: np.ndarray  # (n_queries, k) int64 positions in the searched matrix; -1 (score -inf) if IVF found < k
    backend: str  # what actually ran, e.g. "faiss-cpu", "faiss-gpu(2)", "faiss-ivf-cpu(nlist=1024,nprobe=32)",
    # "torch-cuda(fp16)"; several joined by "+" when search_documents outgrew FAISS GPU's k
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase: train, add, search


def _faiss():
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def _faiss_gpus() -> int:
    faiss = _faiss()
    return faiss.get_num_gpus() if faiss is not None and hasattr(faiss, "get_num_gpus") else 0


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _sync_cuda() -> None:
    """Waits for the GPUs this process searches on: CUDA calls return before the work is done. Every visible one
    without a launcher (FAISS shards over them all); under one, the rank's own (`_to_gpu`): a sync of the others
    would open a CUDA context on each of them, in every rank."""
    import torch

    if torch.cuda.is_available():
        own = [distributed.cuda_device()] if distributed.world_size() > 1 else range(torch.cuda.device_count())
        for device in own:
            torch.cuda.synchronize(device)


@contextmanager
def _timed(timings: dict[str, float], phase: str, *, gpu: bool = False) -> Iterator[None]:
    """Adds the seconds of a phase to `timings`; on a GPU only once its work is done, else it times the launch."""
    t0 = time.perf_counter()
    yield
    if gpu:
        _sync_cuda()
    timings[phase] = timings.get(phase, 0.0) + time.perf_counter() - t0


def choose_backend(backend: str, device: str, k: int, *, index: str = "flat", allow_cpu_fallback: bool = False) -> str:
    """Resolves `auto` to what this machine has: faiss-cpu | faiss-gpu | torch-cpu | torch-cuda.

    A GPU request (device=cuda, or auto on a machine with a GPU) that cannot be met is a ConfigError,
    or, with allow_cpu_fallback, a WARNING naming what was asked and what runs instead."""
    if backend not in ("auto", "faiss", "torch"):
        raise ConfigError(f"unknown search backend '{backend}' (auto | faiss | torch)")
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"unknown search device '{device}' (auto | cpu | cuda)")
    if index not in ("flat", "ivf"):
        raise ConfigError(f"unknown search index '{index}' (flat | ivf)")
    if index == "ivf" and backend == "torch":
        raise ConfigError("search.index=ivf needs FAISS: the torch backend only does exact search "
                          "(set search.backend=faiss or search.index=flat)")
    faiss = _faiss()
    if faiss is None and (backend == "faiss" or index == "ivf"):
        raise ConfigError(f"search backend=faiss / index={index} needs faiss, which is not installed "
                          "(install the 'cpu' or 'gpu' extra)")
    use_faiss = backend == "faiss" or (backend == "auto" and faiss is not None)
    faiss_gpus, cuda = _faiss_gpus(), _cuda_available()
    if device == "cpu" or (device == "auto" and faiss_gpus == 0 and not cuda):
        return "faiss-cpu" if use_faiss else "torch-cpu"
    if use_faiss and faiss_gpus > 0 and k <= FAISS_GPU_MAX_K:
        return "faiss-gpu"
    if cuda and index == "flat" and (backend != "faiss" or faiss_gpus > 0):
        if faiss_gpus > 0 and use_faiss:
            log.info("k=%d exceeds FAISS GPU's limit (%d): exact search with torch on CUDA instead", k, FAISS_GPU_MAX_K)
        return "torch-cuda"
    if not cuda and (faiss_gpus == 0 or not use_faiss):
        reason = "no CUDA device is visible"
    elif faiss_gpus == 0:
        reason = "this faiss build has no GPU support (install the 'gpu' extra)"
    elif index == "ivf":
        reason = f"k={k} exceeds FAISS GPU's limit ({FAISS_GPU_MAX_K}) and the torch backend has no IVF"
    else:
        reason = f"k={k} exceeds FAISS GPU's limit ({FAISS_GPU_MAX_K}) and torch sees no CUDA device"
    requested = f"search on GPU (backend={backend}, device={device}, index={index})"
    fallback = "faiss-cpu" if use_faiss else "torch-cpu"
    if not allow_cpu_fallback:
        raise ConfigError(f"{requested} cannot run: {reason}; set search.device=cpu, or "
                          f"search.allow_cpu_fallback=true to run {fallback}")
    log.warning("%s cannot run: %s; running %s instead (search.allow_cpu_fallback=true)", requested, reason, fallback)
    return fallback


def search(queries: np.ndarray, corpus: np.ndarray, k: int, cfg: SearchConfig | None = None) -> SearchResult:
    """Top-k by inner product (cosine when both sides are normalised), searched one query block at a time."""
    cfg = cfg or SearchConfig()
    k = min(k, corpus.shape[0])
    timings: dict[str, float] = {}
    search_block, label, _ = _searcher(corpus, k, cfg, timings)
    scores = np.empty((len(queries), k), dtype=np.float32)
    indices = np.empty((len(queries), k), dtype=np.int64)
    blocks = _blocks(np.arange(len(queries)), cfg.query_block)
    with _timed(timings, "search"):
        found = _by_block(blocks, lambda rows: search_block(np.ascontiguousarray(queries[rows], dtype=np.float32), k))
    for rows, (block_scores, block_indices) in zip(blocks, found, strict=True):
        scores[rows], indices[rows] = block_scores, block_indices
    log.info("search: %d queries x %d docs, k=%d, backend=%s, %.1fs", len(queries), corpus.shape[0], k, label,
             sum(timings.values()))
    return SearchResult(scores, indices, label, timings)


def _blocks(rows: np.ndarray, size: int) -> list[np.ndarray]:
    return [rows[start:start + size] for start in range(0, len(rows), size)]


def _by_block(blocks: list[np.ndarray], search_rows: Callable[[np.ndarray], T]) -> list[T]:
    """`search_rows` of each block of query rows, in block order. When the ranks of a launch search together,
    each searches a contiguous run of whole blocks, the very blocks one process would search (a query's scores
    can depend on the other queries of its block: FAISS and BLAS pick kernels by block size), so every rank ends
    with the single-process result to the bit, ties included."""
    own = distributed.share(len(blocks))
    parts = distributed.gather(lambda: [search_rows(blocks[b]) for b in own])
    return [found for part in parts for found in part]


def _searcher(corpus, k: int, cfg: SearchConfig, timings: dict[str, float]) -> tuple[BlockSearch, str, str]:
    """The backend `choose_backend` picks for top-`k`, its index filled: (search, label, chosen backend)."""
    chosen = choose_backend(cfg.backend, cfg.device, k, index=cfg.index, allow_cpu_fallback=cfg.allow_cpu_fallback)
    if chosen.startswith("faiss"):
        return *_faiss_searcher(corpus, cfg, gpu=chosen == "faiss-gpu", timings=timings), chosen
    with _timed(timings, "add", gpu=chosen == "torch-cuda"):  # building it moves the corpus to the device
        return *torch_searcher(corpus, fp16=cfg.fp16, device=chosen.removeprefix("torch-"), block=_CORPUS_BLOCK), chosen


def _corpus_blocks(corpus, lo: int = 0, hi: int | None = None):
    """Float32 copies of corpus rows [lo, hi), one block at a time: never the whole corpus."""
    hi = corpus.shape[0] if hi is None else hi
    for start in range(lo, hi, _CORPUS_BLOCK):
        yield np.ascontiguousarray(corpus[start:min(start + _CORPUS_BLOCK, hi)], dtype=np.float32)


def _faiss_searcher(corpus, cfg: SearchConfig, *, gpu: bool, timings: dict[str, float]) -> tuple[BlockSearch, str]:
    """Builds the flat or IVF index (sharded over all GPUs when asked) and fills it block by block."""
    faiss = _faiss()
    n, d = corpus.shape
    params: list[str] = []
    if cfg.index == "ivf":
        with _timed(timings, "train", gpu=gpu):
            index, ivf_params = _trained_ivf(corpus, cfg, gpu=gpu)
        params += ivf_params
        kind = "ivfpq-" if cfg.pq_m else "ivf-"
    else:
        index, kind = faiss.IndexFlatIP(d), ""
    if gpu:
        index, where = _to_gpu(index, fp16=cfg.fp16)
        params = [where, *params, *(["fp16"] if cfg.fp16 else [])]
    with _timed(timings, "add", gpu=gpu):
        if isinstance(index, faiss.IndexShards) and index.successive_ids:
            # sharded flat indexes accept a single add(): fill each shard with its contiguous slice instead
            for shard in range(index.count()):
                for block in _corpus_blocks(corpus, shard * n // index.count(), (shard + 1) * n // index.count()):
                    index.at(shard).add(block)
            index.syncWithSubIndexes()
        else:
            for block in _corpus_blocks(corpus):
                index.add(block)
    label = f"faiss-{kind}{'gpu' if gpu else 'cpu'}" + (f"({','.join(params)})" if params else "")

    def search_block(q: np.ndarray, k: int):
        scores, indices = index.search(q, k)
        scores[indices < 0] = -np.inf  # IVF found fewer than k: faiss pads with -1 and -FLT_MAX
        return scores, indices

    return search_block, label


def _to_gpu(index, *, fp16: bool, shard: bool = True):
    """(GPU index, where it lives for the label). Without a launcher: every visible GPU, the corpus sharded across
    them (`shard`) or copied onto each. Under one, every rank searches its own share of the queries at the same
    time, so each puts the index on its own GPU only (LOCAL_RANK's, the one it trains on): spread over all GPUs
    from every rank, each GPU would hold world-size copies and serve every rank at once."""
    faiss = _faiss()
    co = faiss.GpuMultipleClonerOptions()
    co.shard = shard
    co.useFloat16 = fp16
    if distributed.world_size() > 1:
        device = distributed.cuda_device()
        return faiss.index_cpu_to_gpus_list(index, co=co, gpus=[device]), f"cuda:{device}"
    return faiss.index_cpu_to_all_gpus(index, co=co), str(_faiss_gpus())


def _trained_ivf(corpus, cfg: SearchConfig, *, gpu: bool):
    """An empty IVF(-PQ) index trained on a seeded random sample of `train_size` corpus rows."""
    faiss = _faiss()
    n, d = corpus.shape
    n_train = min(cfg.train_size, n)
    if cfg.pq_m and d % cfg.pq_m:
        raise ConfigError(f"search.pq_m={cfg.pq_m} must divide the embedding dimension {d}")
    if cfg.pq_m and n_train < _PQ_CENTROIDS:
        raise ConfigError(f"IVF-PQ needs at least {_PQ_CENTROIDS} training vectors, the corpus has {n}: "
                          "use search.index=flat or drop search.pq_m")
    nlist = min(cfg.nlist, max(1, n_train // _MIN_TRAIN_PER_CELL))
    if nlist < cfg.nlist:
        log.warning("search.nlist=%d clipped to %d: faiss wants >= %d training vectors per cell and has %d "
                    "(raise search.train_size or lower search.nlist)", cfg.nlist, nlist, _MIN_TRAIN_PER_CELL, n_train)
    nprobe = min(cfg.nprobe, nlist, FAISS_GPU_MAX_K if gpu else nlist)
    quantizer = faiss.IndexFlatIP(d)
    if cfg.pq_m:
        index = faiss.IndexIVFPQ(quantizer, d, nlist, cfg.pq_m, 8, faiss.METRIC_INNER_PRODUCT)
    else:
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    rows = np.sort(np.random.default_rng(_TRAIN_SEED).choice(n, n_train, replace=False))
    sample = np.ascontiguousarray(corpus[rows], dtype=np.float32)
    if gpu:  # k-means assignment on the GPUs: hours on CPU at nlist=65536
        clustering, _ = _to_gpu(faiss.IndexFlatIP(d), fp16=False, shard=False)  # held: faiss keeps no reference
        index.clustering_index = clustering
        index.train(sample)
        index.clustering_index = None
    else:
        index.train(sample)
    index.nprobe = nprobe  # copied to GPU clones
    return index, [f"nlist={nlist}", f"nprobe={nprobe}"] + ([f"m={cfg.pq_m}"] if cfg.pq_m else [])


def scalar_quantized_8bit(corpus: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FAISS's 8-bit scalar quantizer (`ScalarQuantizer` QT_8bit, the codec of `IndexScalarQuantizer`), its
    per-dimension ranges trained on `corpus`: the uint8 codes an index stores, and the float32 vectors they decode to,
    which such an index scores a float32 query against."""
    faiss = _faiss()
    if faiss is None:
        raise ConfigError("int8 vectors are FAISS's 8-bit scalar quantizer: install faiss-cpu (or faiss-gpu)")
    x = np.ascontiguousarray(corpus, dtype=np.float32)
    quantizer = faiss.ScalarQuantizer(x.shape[1], faiss.ScalarQuantizer.QT_8bit)
    quantizer.train(x)
    codes = quantizer.compute_codes(x)
    return codes, quantizer.decode(codes)


def windows_by_doc(parents: np.ndarray) -> list[np.ndarray]:
    """Each document's window positions, in window order."""
    order = np.argsort(parents, kind="stable")
    bounds = np.searchsorted(parents[order], np.arange(int(parents.max()) + 2))
    return [order[bounds[i]:bounds[i + 1]] for i in range(len(bounds) - 1)]


def documents_by_best_window(window_scores: np.ndarray, window_docs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A document scores its best window: the one rule that evaluation and mining share.

    Returns (documents, scores), best first; a tie goes to the document whose window comes first."""
    order = np.argsort(-window_scores, kind="stable")
    docs = window_docs[order]
    first = np.sort(np.unique(docs, return_index=True)[1])
    return docs[first], window_scores[order][first]


def search_documents(queries: np.ndarray, windows: np.ndarray, parents: np.ndarray, n_docs: int, k: int,
                     cfg: SearchConfig | None = None) -> SearchResult:
    """Top-k documents when documents are split into windows: a document scores its best window.

    Windows are fetched with a bounded k; only rows whose windows name fewer than k documents are searched
    again, with twice the k (and proportionally fewer rows at a time), until they name k or no more windows
    can come. The ranking is that of fetching every window (exact for flat search) while memory stays that of
    the first pass. An IVF index may find fewer: the rest is -1 / -inf. FAISS GPU never gets a k above its
    limit: there IVF stops, and flat search goes on with the backend `choose_backend` picks for the larger k."""
    if len(parents) == n_docs:
        return search(queries, windows, k, cfg)
    cfg = cfg or SearchConfig()
    k = min(k, n_docs)
    window_k = min(len(parents), _WINDOW_K_FACTOR * k, max(k, FAISS_GPU_MAX_K))  # FAISS GPU stays possible
    hits_per_search = cfg.query_block * window_k
    timings: dict[str, float] = {}
    search_block, label, chosen = _searcher(windows, window_k, cfg, timings)
    labels = [label]
    last_k = min(len(parents), FAISS_GPU_MAX_K) if chosen == "faiss-gpu" and cfg.index == "ivf" else len(parents)
    scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    indices = np.full((len(queries), k), -1, dtype=np.int64)
    pending = np.arange(len(queries))
    while True:
        blocks = _blocks(pending, max(1, hits_per_search // window_k))
        with _timed(timings, "search"):
            found = _by_block(blocks, lambda rows, run=search_block, wk=window_k: _best_documents(
                run, queries, rows, parents, wk, k))
        short: list[int] = []
        for rows, (block_scores, block_indices, block_short) in zip(blocks, found, strict=True):
            scores[rows], indices[rows] = block_scores, block_indices
            short += block_short
        pending = np.array(short, dtype=np.int64)
        if not pending.size or window_k >= last_k:
            break
        step = min(2 * window_k, last_k)
        if chosen == "faiss-gpu" and window_k < FAISS_GPU_MAX_K < step:
            step = FAISS_GPU_MAX_K  # FAISS GPU up to its limit before moving on
        window_k = step
        if chosen == "faiss-gpu" and window_k > FAISS_GPU_MAX_K:
            del search_block  # frees the GPU index before the next backend fills its memory
            search_block, label, chosen = _searcher(windows, window_k, cfg, timings)
            labels.append(label)
    log.info("search_documents: %d queries, %d windows of %d documents, k=%d, backend=%s", len(queries),
             len(parents), n_docs, k, "+".join(labels))
    return SearchResult(scores, indices, "+".join(labels), timings)


def _best_documents(search_block: BlockSearch, queries: np.ndarray, rows: np.ndarray, parents: np.ndarray,
                    window_k: int, k: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """The top-k documents of these query rows from their top `window_k` windows (-1 / -inf past what was found),
    and the rows that must be searched again deeper: they named fewer than k documents, and more windows exist."""
    hit_s, hit_i = search_block(np.ascontiguousarray(queries[rows], dtype=np.float32), window_k)
    scores = np.full((len(rows), k), -np.inf, dtype=np.float32)
    indices = np.full((len(rows), k), -1, dtype=np.int64)
    short = []
    for pos, (row, row_s, row_i) in enumerate(zip(rows, hit_s, hit_i, strict=True)):
        found = row_i >= 0  # IVF may find fewer windows than asked: then no more will come
        docs, best = documents_by_best_window(row_s[found], parents[row_i[found]])
        n = min(k, len(docs))
        scores[pos, :n], indices[pos, :n] = best[:n], docs[:n]
        if n < k and found.all():
            short.append(int(row))
    return scores, indices, short
