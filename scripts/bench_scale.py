"""Benchmark: hard-negative mining search at scale, on a synthetic corpus larger than its float32 budget.

Writes a clustered, L2-normalised N x D corpus as a float16 .npy memmap (in blocks, never whole in RAM),
searches Q perturbed-corpus queries for the top-k through the IVF path streaming results to disk
(`search_to_disk`), and measures recall@10 of IVF against exact search (flat index) on a subsample.
Prints machine, parameters, wall times per phase, peak RSS (VmHWM) and recall.

    python scripts/bench_scale.py                      # 1M x 384, 50k queries, top-50, nlist=1024, nprobe=16
    python scripts/bench_scale.py --n 200000 --queries 10000 --pq-m 48
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

BLOCK = 65536


def _proc_kib(path: str, key: str) -> int:
    for line in Path(path).read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def write_corpus(path: Path, n: int, dim: int, n_centroids: int, noise: float, seed: int) -> np.memmap:
    """Clustered unit vectors (centroid + isotropic noise of relative norm `noise`), written block by block."""
    rng = np.random.default_rng(seed)
    centroids = _normalise(rng.standard_normal((n_centroids, dim), dtype=np.float32))
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, dim))
    for start in range(0, n, BLOCK):
        rows = min(BLOCK, n - start)
        x = centroids[rng.integers(0, n_centroids, rows)]
        x += noise / np.sqrt(dim) * rng.standard_normal((rows, dim), dtype=np.float32)
        out[start:start + rows] = _normalise(x)
    out.flush()
    del out
    return np.load(path, mmap_mode="r")


def make_queries(corpus: np.ndarray, n: int, noise: float, seed: int) -> np.ndarray:
    """Perturbed corpus vectors, as mining queries sit near (but not on) their positives."""
    rng = np.random.default_rng(seed + 1)
    rows = np.sort(rng.choice(corpus.shape[0], n, replace=False))
    q = corpus[rows].astype(np.float32)
    q += noise / np.sqrt(corpus.shape[1]) * rng.standard_normal(q.shape, dtype=np.float32)
    return _normalise(q)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="corpus vectors")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries", type=int, default=50_000)
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--centroids", type=int, default=2000, help="clusters in the synthetic corpus")
    ap.add_argument("--noise", type=float, default=1.5, help="corpus noise norm relative to a centroid")
    ap.add_argument("--query-noise", type=float, default=0.3, help="query perturbation norm")
    ap.add_argument("--nlist", type=int, default=1024)
    ap.add_argument("--nprobe", type=int, default=16)
    ap.add_argument("--pq-m", type=int, default=None)
    ap.add_argument("--train-size", type=int, default=262144)
    ap.add_argument("--query-block", type=int, default=4096)
    ap.add_argument("--recall-sample", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    import faiss
    import torch

    from domain_embed.config import SearchConfig
    from domain_embed.retrieval.search import search, search_to_disk

    t_start = time.perf_counter()
    print(f"machine: {platform.node()} | {os.cpu_count()} CPU cores | "
          f"RAM {_proc_kib('/proc/meminfo', 'MemTotal') / 2**20:.1f} GiB | faiss {faiss.__version__} "
          f"(omp threads {faiss.omp_get_max_threads()}) | torch {torch.__version__} | "
          f"cuda {torch.cuda.is_available()} | load avg {os.getloadavg()[0]:.1f} (other processes share the cores)")
    cfg = SearchConfig(backend="faiss", device="cpu", index="ivf", nlist=args.nlist, nprobe=args.nprobe,
                       pq_m=args.pq_m, train_size=args.train_size, query_block=args.query_block)
    print(f"params: corpus {args.n:,} x {args.dim} float16 memmap ({args.centroids} clusters, noise {args.noise}), "
          f"{args.queries:,} queries (noise {args.query_noise}), top-{args.k}, nlist={args.nlist}, "
          f"nprobe={args.nprobe}, pq_m={args.pq_m}, train_size={args.train_size:,}, query_block={args.query_block}")

    tmp = Path(tempfile.mkdtemp(prefix="bench_scale_", dir="/tmp"))
    try:
        t0 = time.perf_counter()
        corpus = write_corpus(tmp / "corpus.npy", args.n, args.dim, args.centroids, args.noise, args.seed)
        queries = make_queries(corpus, args.queries, args.query_noise, args.seed)
        t_data = time.perf_counter() - t0
        print(f"data: {t_data:.1f}s to write {(tmp / 'corpus.npy').stat().st_size / 2**20:.0f} MiB corpus "
              f"+ {queries.nbytes / 2**20:.0f} MiB queries")

        res = search_to_disk(queries, corpus, args.k, cfg, tmp / "hits")
        t = res.timings
        print(f"ivf: backend={res.backend} | train {t['train']:.1f}s | add {t['add']:.1f}s | "
              f"build (train+add) {t['train'] + t['add']:.1f}s | search {t['search']:.1f}s "
              f"({args.queries / t['search']:,.0f} queries/s) | results on disk "
              f"{sum(f.stat().st_size for f in (tmp / 'hits').iterdir()) / 2**20:.0f} MiB")

        sample = np.sort(np.random.default_rng(args.seed + 2).choice(args.queries, args.recall_sample, replace=False))
        t0 = time.perf_counter()
        exact = search(queries[sample], corpus, 10, SearchConfig(backend="faiss", device="cpu", index="flat"))
        t_exact = time.perf_counter() - t0
        approx = np.asarray(res.indices[sample, :10])
        recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx.tolist(), exact.indices.tolist(),
                                                                        strict=True)])
        print(f"exact: backend={exact.backend} on {args.recall_sample} queries in {t_exact:.1f}s "
              f"(add {exact.timings['add']:.1f}s, search {exact.timings['search']:.1f}s) | "
              f"recall@10 IVF vs exact = {recall:.4f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"total wall time {time.perf_counter() - t_start:.1f}s | peak RSS (VmHWM) "
          f"{_proc_kib('/proc/self/status', 'VmHWM') / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
