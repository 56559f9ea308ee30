"""Exact inner-product top-k search: the only module that touches FAISS.

Two backends with one contract: FAISS (`IndexFlatIP`, on all visible GPUs when faiss has them) and
torch (blocked matmul + top-k, on CUDA when present) for machines without FAISS GPU. Queries and the
corpus are processed in blocks so memory stays bounded whatever the corpus size.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from domain_embed.config import SearchConfig
from domain_embed.errors import ConfigError

log = logging.getLogger(__name__)

FAISS_GPU_MAX_K = 2048  # FAISS GPU's hard limit on k
_CORPUS_BLOCK = 65536  # corpus rows converted/moved at a time


@dataclass
class SearchResult:
    scores: np.ndarray  # (n_queries, k) float32, best first
    indices: np.ndarray  # (n_queries, k) int64 positions in the searched matrix
    backend: str  # what actually ran, e.g. "faiss-cpu", "faiss-gpu(2)", "torch-cuda"


def _faiss():
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def choose_backend(backend: str, device: str, k: int) -> str:
    """Resolves `auto` to what this machine has; a request that cannot be met is an error."""
    faiss = _faiss()
    faiss_gpus = faiss.get_num_gpus() if faiss is not None and hasattr(faiss, "get_num_gpus") else 0
    want_gpu = device == "cuda" or (device == "auto" and (faiss_gpus > 0 or _cuda_available()))
    if device == "cuda" and not _cuda_available():
        raise ConfigError("eval.device=cuda but no CUDA device is visible")
    if backend == "faiss" and faiss is None:
        raise ConfigError("search backend 'faiss' requested but faiss is not installed "
                          "(install the 'cpu' or 'gpu' extra)")
    if backend not in ("auto", "faiss", "torch"):
        raise ConfigError(f"unknown search backend '{backend}' (auto | faiss | torch)")
    if backend == "torch":
        return "torch-cuda" if want_gpu else "torch-cpu"
    if want_gpu:
        if faiss_gpus > 0 and k <= FAISS_GPU_MAX_K:
            return "faiss-gpu"
        if backend == "faiss" and faiss_gpus == 0:
            raise ConfigError("FAISS GPU requested but this faiss build has no GPU support")
        return "torch-cuda"  # no FAISS GPU, or k above its limit: exact search on the GPU with torch
    return "faiss-cpu" if faiss is not None else "torch-cpu"


def search(queries: np.ndarray, corpus: np.ndarray, k: int, cfg: SearchConfig | None = None) -> SearchResult:
    """Top-k by inner product (cosine when both sides are normalised)."""
    cfg = cfg or SearchConfig()
    k = min(k, corpus.shape[0])
    chosen = choose_backend(cfg.backend, cfg.device, k)
    if chosen.startswith("faiss"):
        scores, indices, label = _search_faiss(queries, corpus, k, gpu=chosen == "faiss-gpu",
                                               query_block=cfg.query_block)
    else:
        scores, indices, label = _search_torch(queries, corpus, k, device="cuda" if chosen == "torch-cuda"
                                               else "cpu", query_block=cfg.query_block)
    log.info("search: %d queries x %d docs, k=%d, backend=%s", len(queries), corpus.shape[0], k, label)
    return SearchResult(scores, indices, label)


def _search_faiss(queries, corpus, k, *, gpu: bool, query_block: int):
    faiss = _faiss()
    index = faiss.IndexFlatIP(corpus.shape[1])
    label = "faiss-cpu"
    if gpu:
        co = faiss.GpuMultipleClonerOptions()
        co.shard = True
        index = faiss.index_cpu_to_all_gpus(index, co=co)
        label = f"faiss-gpu({faiss.get_num_gpus()})"
    for start in range(0, corpus.shape[0], _CORPUS_BLOCK):
        index.add(np.ascontiguousarray(corpus[start:start + _CORPUS_BLOCK], dtype=np.float32))
    scores = np.empty((len(queries), k), dtype=np.float32)
    indices = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), query_block):
        q = np.ascontiguousarray(queries[start:start + query_block], dtype=np.float32)
        scores[start:start + len(q)], indices[start:start + len(q)] = index.search(q, k)
    return scores, indices, label


def _search_torch(queries, corpus, k, *, device: str, query_block: int):
    import torch

    dtype = torch.float16 if device == "cuda" else torch.float32
    blocks = [torch.as_tensor(np.asarray(corpus[s:s + _CORPUS_BLOCK]), dtype=dtype).to(device)
              for s in range(0, corpus.shape[0], _CORPUS_BLOCK)]
    scores = np.empty((len(queries), k), dtype=np.float32)
    indices = np.empty((len(queries), k), dtype=np.int64)
    with torch.inference_mode():
        for qs in range(0, len(queries), query_block):
            q = torch.as_tensor(np.asarray(queries[qs:qs + query_block]), dtype=dtype).to(device)
            best_s = best_i = None
            offset = 0
            for block in blocks:
                s, i = torch.topk((q @ block.T).float(), min(k, block.shape[0]), dim=1)
                i += offset
                offset += block.shape[0]
                if best_s is not None:
                    s, pos = torch.topk(torch.cat([best_s, s], 1), k, dim=1)
                    i = torch.gather(torch.cat([best_i, i], 1), 1, pos)
                best_s, best_i = s, i
            scores[qs:qs + len(q)] = best_s.cpu().numpy()
            indices[qs:qs + len(q)] = best_i.cpu().numpy()
    return scores, indices, f"torch-{device}"


def search_documents(queries: np.ndarray, windows: np.ndarray, parents: np.ndarray, n_docs: int, k: int,
                     cfg: SearchConfig | None = None) -> SearchResult:
    """Top-k documents when documents are split into windows: a document scores its best window.

    Retrieving k + (windows - documents) windows guarantees k distinct documents, so the result is
    exact, not an approximation by over-fetching."""
    if len(parents) == n_docs:
        return search(queries, windows, k, cfg)
    k = min(k, n_docs)
    hits = search(queries, windows, min(len(parents), k + len(parents) - n_docs), cfg)
    scores = np.empty((len(queries), k), dtype=np.float32)
    indices = np.empty((len(queries), k), dtype=np.int64)
    for row in range(len(queries)):
        docs = parents[hits.indices[row]]
        _, first = np.unique(docs, return_index=True)  # best window of each document
        first.sort()
        scores[row] = hits.scores[row, first[:k]]
        indices[row] = docs[first[:k]]
    return SearchResult(scores, indices, hits.backend)
