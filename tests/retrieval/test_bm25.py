import json
import time

import numpy as np
import pytest

from domain_embed.config import BM25Config
from domain_embed.errors import ConfigError
from domain_embed.retrieval.bm25 import BM25Index
from domain_embed.retrieval.metrics import compute_metrics

CORPUS = [
    "The cat sat on the mat and purred.",
    "Capital adequacy requirements for authorised banks are set by the regulator.",
    "A recipe for apple pie with cinnamon.",
    "Anti-money laundering rules require customer due diligence before onboarding.",
    "Running shoes for marathon runners.",
]


@pytest.fixture(scope="module")
def index():
    return BM25Index(CORPUS)


@pytest.mark.parametrize(("query", "expected"), [
    ("capital requirements for banks", 1),
    ("customer due diligence", 3),
    ("apple pie recipe", 2),
    ("cat on a mat", 0),
])
def test_right_document_first(index, query, expected):
    indices, scores = index.search([query], k=3)
    assert indices[0, 0] == expected
    assert scores[0, 0] > scores[0, 1]


def test_shapes_types_and_order(index):
    indices, scores = index.search(["capital banks", "apple", "cat mat"], k=4)
    assert indices.shape == scores.shape == (3, 4)
    assert indices.dtype == np.int64 and scores.dtype == np.float32
    assert np.all(np.diff(scores, axis=1) <= 0)
    for row in indices:
        assert len(set(row.tolist())) == 4


def test_k_clipped_to_corpus_size(index):
    indices, scores = index.search(["apple"], k=100)
    assert indices.shape == scores.shape == (1, len(CORPUS))
    assert sorted(indices[0].tolist()) == list(range(len(CORPUS)))


@pytest.mark.parametrize("query", ["zyzzyva quux", "the of and", ""])
def test_query_without_known_token(index, query):
    indices, scores = index.search([query, "apple pie"], k=3)
    assert np.all(scores[0] == 0)
    assert len(set(indices[0].tolist())) == 3
    assert all(0 <= i < len(CORPUS) for i in indices[0])
    assert indices[1, 0] == 2  # a normal query in the same batch is unaffected


def test_no_queries_and_bad_k(index):
    indices, scores = index.search([], k=2)
    assert indices.shape == scores.shape == (0, 2)
    with pytest.raises(ValueError, match="k must be"):
        index.search(["apple"], k=0)


def test_stemmer_and_stopwords_follow_config():
    plain = BM25Index(CORPUS, BM25Config(stemmer=None))
    stemmed = BM25Index(CORPUS, BM25Config(stemmer="english"))
    assert np.all(plain.search(["runner"], k=1)[1] == 0)  # "runners" is a different word
    assert stemmed.search(["runner"], k=1)[0][0, 0] == 4
    assert np.all(plain.search(["the"], k=1)[1] == 0)  # English stop words removed by default
    assert BM25Index(CORPUS, BM25Config(stopwords=None)).search(["the"], k=1)[1][0, 0] > 0


def test_k1_and_b_reach_bm25s():
    a = BM25Index(CORPUS, BM25Config(k1=0.5, b=0.2)).search(["apple pie"], k=1)[1]
    b = BM25Index(CORPUS, BM25Config()).search(["apple pie"], k=1)[1]
    assert a[0, 0] != pytest.approx(b[0, 0])


def test_bad_corpus_or_stemmer():
    with pytest.raises(ValueError, match="empty corpus"):
        BM25Index([])
    with pytest.raises(ValueError, match="indexable"):
        BM25Index(["a", "the", ""])
    with pytest.raises(ConfigError, match="klingon"):
        BM25Index(CORPUS, BM25Config(stemmer="klingon"))


def test_obliqa_test_split_matches_readme_baseline(shared_data):
    root = shared_data / "legal" / "obliqa"
    if not (root / "corpus.jsonl").is_file():
        pytest.skip(f"ObliQA not found under {root}")
    doc_ids, texts = [], []
    with open(root / "corpus.jsonl", encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)
            doc_ids.append(doc["_id"])
            texts.append(f"{doc['title']} {doc['text']}")
    with open(root / "queries.jsonl", encoding="utf-8") as f:
        queries = {q["_id"]: q["text"] for q in map(json.loads, f)}
    qrels: dict[str, dict[str, int]] = {}
    with open(root / "qrels" / "test.tsv", encoding="utf-8") as f:
        next(f)  # header
        for line in f:
            qid, did, score = line.rstrip("\n").split("\t")
            qrels.setdefault(qid, {})[did] = int(score)
    qids = sorted(qrels)

    start = time.perf_counter()
    index = BM25Index(texts, BM25Config())
    build_s = time.perf_counter() - start
    indices, _ = index.search([queries[q] for q in qids], k=10)
    search_s = time.perf_counter() - start - build_s
    ranked = [[doc_ids[i] for i in row] for row in indices]
    means = compute_metrics(ranked, qids, qrels, [10]).mean()
    print(f"\nObliQA test BM25 ({len(qids)} queries, {len(texts)} passages, index {build_s:.1f}s, "
          f"search {search_s:.1f}s): nDCG@10={means['ndcg@10']:.4f} recall@10={means['recall@10']:.4f} "
          f"mrr@10={means['mrr@10']:.4f}")
    assert len(qids) == 2786
    assert build_s < 30
    assert 0.62 <= means["ndcg@10"] <= 0.70  # README: 0.657 with its own BM25 variant
    assert 0.70 <= means["recall@10"] <= 0.80  # README: 0.752
    assert 0.63 <= means["mrr@10"] <= 0.72  # README: 0.674
