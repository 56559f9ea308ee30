"""Benchmark: the mining search at scale, on a synthetic corpus stored as a float16 memmap.

Writes a clustered, L2-normalised N x D corpus as a float16 .npy memmap (in blocks, never whole in RAM) and Q
perturbed-corpus queries, then alternates (see benchlib) three ways of finding each query's top-k documents:
  plain FAISS: the corpus read into float32 RAM, IndexFlatIP, queries in batches of 16,384, the way
      sentence-transformers' mine_hard_negatives(use_faiss=True) searches
  search_documents flat: what the mine stage runs (tuning/mining.py) with its default mining.search: exact,
      the corpus converted and added block by block; equal work to plain FAISS
  search_documents IVF: the same call with mining.search.index=ivf (nlist, nprobe, optionally pq_m)
One vector per document, so search_documents hands over to `search`, as it does for an unchunked corpus.
Prints the table, the build/search phases and recall@10 of each package side against plain exact search.

    python scripts/bench_scale.py                      # 1M x 384, 50k queries, top-50, nlist=1024, nprobe=16
    python scripts/bench_scale.py --n 200000 --queries 5000 --nlist 512 --train-size 65536   # 2 CPU cores

The exact sides grow with N x Q: at the defaults each run takes about 5-10 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
from benchlib import Side, alternate, machine, report

BLOCK = 65536
ST_FAISS_BATCH = 16384  # mine_hard_negatives' default faiss_batch_size


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


def plain_faiss(queries: np.ndarray, corpus: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k as sentence-transformers' miner does it: one float32 IndexFlatIP, batched queries."""
    import faiss

    index = faiss.IndexFlatIP(corpus.shape[1])
    index.add(np.asarray(corpus, dtype=np.float32))
    return np.concatenate([index.search(queries[i:i + ST_FAISS_BATCH], k)[1]
                           for i in range(0, len(queries), ST_FAISS_BATCH)])


def recall_at_10(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found[:, :10].tolist(), exact[:, :10].tolist(),
                                                                      strict=True)]))


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
    ap.add_argument("--rounds", type=int, default=3, help="runs per side, alternating")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    import faiss

    from domain_embed.config import SearchConfig
    from domain_embed.retrieval.search import search_documents

    print(f"{machine()} | faiss {faiss.__version__} ({faiss.omp_get_max_threads()} threads)")
    common = {"backend": "faiss", "device": "cpu", "query_block": args.query_block}
    flat = SearchConfig(index="flat", **common)
    ivf = SearchConfig(index="ivf", nlist=args.nlist, nprobe=args.nprobe, pq_m=args.pq_m, train_size=args.train_size,
                       **common)
    print(f"params: corpus {args.n:,} x {args.dim} float16 memmap ({args.centroids} clusters, noise {args.noise}), "
          f"{args.queries:,} queries (noise {args.query_noise}), top-{args.k}, IVF nlist={args.nlist}, "
          f"nprobe={args.nprobe}, pq_m={args.pq_m}, train_size={args.train_size:,}, query_block={args.query_block} "
          f"| {args.rounds} runs per side")

    tmp = Path(tempfile.mkdtemp(prefix="bench_scale_", dir="/tmp"))
    try:
        corpus = write_corpus(tmp / "corpus.npy", args.n, args.dim, args.centroids, args.noise, args.seed)
        queries = make_queries(corpus, args.queries, args.query_noise, args.seed)
        parents = np.arange(args.n)
        phases: dict[str, dict[str, float]] = {}

        def ours(cfg: SearchConfig, label: str):
            def run(_) -> np.ndarray:
                res = search_documents(queries, corpus, parents, args.n, args.k, cfg)
                phases[f"{label}: {res.backend}"] = res.timings
                return res.indices[:, :10].copy()
            return run

        runs = alternate(Side("plain FAISS IndexFlatIP", lambda _: plain_faiss(queries, corpus, args.k)[:, :10]),
                         Side("search_documents flat", ours(flat, "flat")),
                         Side("search_documents IVF", ours(ivf, "ivf")), rounds=args.rounds)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    plain, ours_flat, ours_ivf = runs.values()
    report([(f"top-{args.k} of {args.n:,} for {args.queries:,} queries, exact (equal work)", plain, ours_flat),
            (f"same, IVF nlist={args.nlist} nprobe={args.nprobe} versus exact", plain, ours_ivf)])
    for label, timings in phases.items():  # the last run of each
        print(f"{label}: " + ", ".join(f"{phase} {seconds:.1f}s" for phase, seconds in timings.items()))
    exact = plain.results[-1]
    print(f"recall@10 against plain exact search: flat {recall_at_10(ours_flat.results[-1], exact):.4f}, "
          f"IVF {recall_at_10(ours_ivf.results[-1], exact):.4f}")


if __name__ == "__main__":
    main()
