"""The data the GPU check reads: triplets from a BEIR train split, or synthetic passages where no data set is."""

from __future__ import annotations

import json
import random
from pathlib import Path

from domain_embed.gpu_check.context import SEED


def obliqa_triplets(path: str, n: int, seed: int, negatives: int = 1):
    """(query, positive, `negatives` random other passages) for a seeded sample of `n` train qrels pairs of a BEIR
    folder: realistic texts and lengths (a step's cost depends on the batch's shape, not on how hard its negatives
    are)."""
    from datasets import Dataset

    from domain_embed.config import DataConfig
    from domain_embed.data.loader import load_domain_data

    data = load_domain_data(DataConfig(path=path))
    documents = data.documents()
    pairs = sorted((q, d) for q, rel in data.qrels["train"].items() for d, s in rel.items() if s > 0)
    rng = random.Random(seed)
    rng.shuffle(pairs)
    rows = {"anchor": [], "positive": [], **{f"negative_{i}": [] for i in range(1, negatives + 1)}}
    for qid, did in pairs[:n]:
        rows["anchor"].append(data.queries[qid])
        rows["positive"].append(documents[data.doc_index(did)])
        for i in range(1, negatives + 1):
            negative = rng.randrange(len(documents))
            while data.corpus_ids[negative] in data.qrels["train"][qid]:
                negative = rng.randrange(len(documents))
            rows[f"negative_{i}"].append(documents[negative])
    return Dataset.from_dict(rows)


def synthetic_beir(root: Path, n_docs: int, n_queries: int) -> Path:
    """A BEIR folder of random regulation-like passages; each query repeats words of its one positive."""
    rng = random.Random(SEED)
    vocab = ("firm regulator capital liquidity client asset notify breach report annual market conduct risk "
             "authorised person licence custody audit record disclosure fee penalty waiver rule").split()
    (root / "qrels").mkdir(parents=True)
    docs = [" ".join([f"topic{i}", *rng.choices(vocab, k=120)]) for i in range(n_docs)]
    with (root / "corpus.jsonl").open("w") as f:
        f.writelines(json.dumps({"_id": f"d{i}", "title": "", "text": t}) + "\n" for i, t in enumerate(docs))
    with (root / "queries.jsonl").open("w") as f:
        f.writelines(json.dumps({"_id": f"q{i}", "text": f"topic{i} " + " ".join(docs[i].split()[1:8])}) + "\n"
                     for i in range(n_queries))
    for split, lo, hi in (("train", 0, 0.6), ("dev", 0.6, 0.8), ("test", 0.8, 1.0)):
        rows = [f"q{i}\td{i}\t1\n" for i in range(int(lo * n_queries), int(hi * n_queries))]
        (root / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(rows))
    return root

