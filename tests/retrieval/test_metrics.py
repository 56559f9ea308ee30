import math
import time

import numpy as np
import pytest
import pytrec_eval
import ranx

from domain_embed.retrieval.metrics import (
    PerQueryMetrics,
    bootstrap_ci,
    compare_systems,
    compute_metrics,
    paired_bootstrap,
)

K_VALUES = [1, 3, 5, 10, 20, 50]
OURS_TO_TREC = {"recall": "recall", "precision": "P", "ndcg": "ndcg_cut", "map": "map_cut",
                "accuracy": "success"}
OURS_TO_RANX = {"ndcg": "ndcg", "recall": "recall", "precision": "precision", "mrr": "mrr", "map": "map",
                "accuracy": "hit_rate"}


def random_case(seed: int, graded: bool, n_queries: int = 150, n_docs: int = 400, depth: int = 50):
    """Rankings with unique, strictly decreasing scores; qrels with 1-6 relevant docs plus judged
    non-relevant ones, many of them never retrieved; some rankings shorter than the largest k."""
    rng = np.random.default_rng(seed)
    docs = [f"d{i}" for i in range(n_docs)]
    qids = [f"q{i}" for i in range(n_queries)]
    qrels, ranked, run = {}, [], {}
    for i, qid in enumerate(qids):
        n_rel = int(rng.integers(1, 7))
        judged = rng.choice(n_docs, n_rel + 3, replace=False)
        qrels[qid] = {docs[j]: (int(rng.integers(1, 4)) if graded else 1) if t < n_rel else 0
                      for t, j in enumerate(judged)}
        length = depth if i % 5 else int(rng.integers(0, depth))
        if i % 2 == 0:  # put some judged docs among the top 15 so that early ranks have hits too
            head = judged[rng.random(judged.size) < 0.6].tolist()
            rest = [j for j in rng.permutation(n_docs).tolist() if j not in head]
            order = (rng.permutation(head + rest[:15 - len(head)]).tolist() + rest[15 - len(head):])[:length]
        else:
            order = rng.choice(n_docs, length, replace=False).tolist()
        scores = np.sort(rng.random(length))[::-1] + np.arange(length, 0, -1)  # strictly decreasing
        ranked.append([docs[j] for j in order])
        run[qid] = {docs[j]: float(s) for j, s in zip(order, scores, strict=True)}
    return qids, qrels, ranked, run


@pytest.fixture(scope="module", params=[(0, False), (1, True), (2, True)],
                ids=["binary", "graded1", "graded2"])
def case(request):
    seed, graded = request.param
    qids, qrels, ranked, run = random_case(seed, graded)
    return qids, qrels, ranked, run, compute_metrics(ranked, qids, qrels, K_VALUES)


def test_case_generator_covers_edge_cases(case):
    qids, qrels, ranked, _, ours = case
    assert any(len(r) < max(K_VALUES) for r in ranked)
    assert any(sum(g > 0 for g in qrels[q].values()) > 1 for q in qids)
    never = [q for q, r in zip(qids, ranked, strict=True)
             if any(g > 0 and d not in r for d, g in qrels[q].items())]
    assert len(never) > len(qids) // 2
    assert 0.05 < ours.mean()["ndcg@10"] < 0.95  # hits at top ranks happen, but not always


def test_matches_pytrec_eval_per_query(case):
    qids, qrels, _, run, ours = case
    cut = ",".join(map(str, K_VALUES))
    measures = {f"{m}.{cut}" for m in OURS_TO_TREC.values()}
    trec = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
    for k in K_VALUES:
        for name, trec_name in OURS_TO_TREC.items():
            expected = np.array([trec[q][f"{trec_name}_{k}"] for q in qids])
            np.testing.assert_allclose(ours[f"{name}@{k}"], expected, rtol=0, atol=1e-9,
                                       err_msg=f"{name}@{k}")
        # trec_eval's reciprocal rank has no cut-off: give it the run truncated at k
        top_k = {q: dict(sorted(r.items(), key=lambda x: -x[1])[:k]) for q, r in run.items()}
        trec_rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top_k)
        expected = np.array([trec_rr[q]["recip_rank"] for q in qids])
        np.testing.assert_allclose(ours[f"mrr@{k}"], expected, rtol=0, atol=1e-9, err_msg=f"mrr@{k}")


def test_matches_ranx_per_query_and_means(case):
    qids, qrels, _, run, ours = case
    ranx_run = ranx.Run(run)
    names = [f"{m}@{k}" for k in K_VALUES for m in OURS_TO_RANX.values()]
    means = ranx.evaluate(ranx.Qrels(qrels), ranx_run, names)
    our_means = ours.mean()
    for k in K_VALUES:
        for name, ranx_name in OURS_TO_RANX.items():
            key = f"{ranx_name}@{k}"
            per_query = np.array([ranx_run.scores[key][q] for q in qids])
            np.testing.assert_allclose(ours[f"{name}@{k}"], per_query, rtol=0, atol=1e-9, err_msg=key)
            assert our_means[f"{name}@{k}"] == pytest.approx(means[key], abs=1e-9), key


def test_hand_computed_single_query():
    # relevant: b (grade 1, rank 2), d (grade 2, never retrieved), e (grade 1, rank 4); c is judged 0
    qrels = {"q": {"b": 1, "d": 2, "e": 1, "c": 0}}
    m = compute_metrics([["a", "b", "c", "e"]], ["q"], qrels, [1, 2, 4, 10]).mean()
    dcg4 = 1 / math.log2(3) + 1 / math.log2(5)
    idcg4 = 2 + 1 / math.log2(3) + 1 / math.log2(4)
    assert m["ndcg@4"] == pytest.approx(dcg4 / idcg4, abs=1e-12)
    assert m["ndcg@2"] == pytest.approx((1 / math.log2(3)) / (2 + 1 / math.log2(3)), abs=1e-12)
    assert m["ndcg@1"] == 0.0
    assert m["recall@4"] == pytest.approx(2 / 3)
    assert m["precision@4"] == pytest.approx(2 / 4)
    assert m["precision@10"] == pytest.approx(2 / 10)  # trec_eval: divide by k even past the list's end
    assert m["mrr@1"] == 0.0
    assert m["mrr@2"] == pytest.approx(1 / 2)
    assert m["map@4"] == pytest.approx((1 / 2 + 2 / 4) / 3)  # divided by all 3 relevant docs
    assert m["accuracy@1"] == 0.0
    assert m["accuracy@2"] == 1.0


def test_perfect_and_empty_rankings():
    qrels = {"q1": {"x": 3, "y": 1}, "q2": {"z": 1}}
    m = compute_metrics([["x", "y", "w"], []], ["q1", "q2"], qrels, [3])
    assert isinstance(m, PerQueryMetrics)
    assert m.qids == ["q1", "q2"]
    for name in ("ndcg@3", "recall@3", "mrr@3", "map@3", "accuracy@3"):
        assert m[name].dtype == np.float64
        np.testing.assert_array_equal(m[name], [1.0, 0.0])
    np.testing.assert_allclose(m["precision@3"], [2 / 3, 0.0])
    assert set(m.mean()) == {f"{n}@3" for n in ("ndcg", "recall", "precision", "mrr", "map", "accuracy")}


def test_graded_gain_is_linear():
    # swapping a grade-3 and a grade-1 doc: linear gains give (1 + 3/log2 3) / (3 + 1/log2 3)
    m = compute_metrics([["lo", "hi"]], ["q"], {"q": {"hi": 3, "lo": 1}}, [2]).mean()
    assert m["ndcg@2"] == pytest.approx((1 + 3 / math.log2(3)) / (3 + 1 / math.log2(3)), abs=1e-12)


def test_query_without_relevant_doc_raises():
    with pytest.raises(ValueError, match="no relevant document"):
        compute_metrics([["a"], ["b"]], ["q1", "q2"], {"q1": {"a": 1}, "q2": {"b": 0}}, [1])
    with pytest.raises(ValueError, match="no relevant document"):
        compute_metrics([["a"]], ["q9"], {"q1": {"a": 1}}, [1])


def test_bad_inputs_raise():
    qrels = {"q": {"a": 1}}
    with pytest.raises(ValueError, match="rankings"):
        compute_metrics([["a"], ["b"]], ["q"], qrels, [1])
    with pytest.raises(ValueError, match="positive"):
        compute_metrics([["a"]], ["q"], qrels, [0, 5])
    with pytest.raises(ValueError, match="twice"):
        compute_metrics([["a", "b", "a"]], ["q"], qrels, [5])


def test_fast_on_3000_queries_at_100():
    rng = np.random.default_rng(0)
    n_queries, depth = 3000, 100
    qids = [f"q{i}" for i in range(n_queries)]
    ranked = [[f"d{j}" for j in rng.choice(50_000, depth, replace=False)] for _ in qids]
    qrels = {q: {f"d{j}": 1 for j in rng.choice(50_000, 3, replace=False)} | {r[0]: 2}
             for q, r in zip(qids, ranked, strict=True)}
    start = time.perf_counter()
    m = compute_metrics(ranked, qids, qrels, [1, 5, 10, 100])
    assert time.perf_counter() - start < 0.5
    assert m.mean()["accuracy@1"] == 1.0


# --- bootstrap and significance ---------------------------------------------------------------------


def test_identical_systems():
    a = np.random.default_rng(0).random(300)
    out = paired_bootstrap(a, a.copy(), n_samples=500, seed=0)
    assert out["delta"] == 0.0
    assert out["ci95"] == [0.0, 0.0]
    assert out["p_value"] == 1.0
    assert out["n_queries"] == 300


def test_constant_shift():
    a = np.random.default_rng(0).random(200)
    out = paired_bootstrap(a, a + 0.05, n_samples=1000, seed=0)
    assert out["delta"] == pytest.approx(0.05)
    assert out["ci95"][0] == pytest.approx(0.05) and out["ci95"][1] == pytest.approx(0.05)
    assert out["p_value"] == pytest.approx(1 / 1001)  # add-one smoothing: never 0


def test_ci_covers_true_delta_about_95_percent():
    rng = np.random.default_rng(1)
    true_delta, covered, reps = 0.05, 0, 200
    for rep in range(reps):
        a = rng.random(150)
        b = a + true_delta + rng.normal(0, 0.2, 150)
        lo, hi = paired_bootstrap(a, b, n_samples=500, seed=rep)["ci95"]
        covered += lo <= true_delta <= hi
    assert 0.88 <= covered / reps <= 0.99


def test_p_value_strong_difference_and_null():
    rng = np.random.default_rng(2)
    a = rng.random(500)
    strong = paired_bootstrap(a, a + 0.1 + rng.normal(0, 0.05, 500), n_samples=2000, seed=0)
    assert strong["p_value"] < 0.001
    assert strong["ci95"][0] > 0.09
    # under the null (symmetric differences) p-values are roughly uniform
    p = np.array([paired_bootstrap(a, a + rng.normal(0, 0.1, 500), n_samples=400, seed=s)["p_value"]
                  for s in range(200)])
    assert 0.01 <= np.mean(p < 0.05) <= 0.11
    assert 0.4 <= np.mean(p) <= 0.6


def test_sign_of_delta_is_b_minus_a():
    a = np.zeros(50)
    b = np.ones(50)
    assert paired_bootstrap(a, b)["delta"] == 1.0
    assert paired_bootstrap(b, a)["delta"] == -1.0


def test_seed_determinism():
    rng = np.random.default_rng(3)
    a, b = rng.random(400), rng.random(400)
    assert paired_bootstrap(a, b, seed=7) == paired_bootstrap(a, b, seed=7)
    assert paired_bootstrap(a, b, seed=7)["ci95"] != paired_bootstrap(a, b, seed=8)["ci95"]
    assert bootstrap_ci(a, seed=7) == bootstrap_ci(a, seed=7)


def test_bootstrap_ci_width_matches_normal_theory():
    values = np.random.default_rng(4).normal(0.6, 0.2, 2000)
    lo, hi = bootstrap_ci(values, n_samples=2000, seed=0)
    assert lo < values.mean() < hi
    expected = 2 * 1.96 * values.std() / math.sqrt(values.size)
    assert (hi - lo) == pytest.approx(expected, rel=0.15)


def test_bootstrap_resamples_every_query():
    # two queries: resamples are {0, 0}, {0, 1} or {1, 1}, so the interval spans both extremes
    assert bootstrap_ci(np.array([0.0, 1.0]), n_samples=1000, seed=0) == [0.0, 1.0]


def test_bootstrap_blocks_do_not_change_results(monkeypatch):
    import domain_embed.retrieval.metrics as metrics_module

    rng = np.random.default_rng(5)
    a, b = rng.random(100), rng.random(100)
    full = paired_bootstrap(a, b, n_samples=300, seed=0)
    monkeypatch.setattr(metrics_module, "_BLOCK_ELEMENTS", 1000)  # 10 rows per block
    blocked = paired_bootstrap(a, b, n_samples=300, seed=0)
    assert blocked["delta"] == full["delta"]
    assert blocked["ci95"] == pytest.approx(full["ci95"], abs=0.03)
    assert blocked["p_value"] == pytest.approx(full["p_value"], abs=0.1)


def test_paired_bootstrap_rejects_bad_input():
    with pytest.raises(ValueError, match="length"):
        paired_bootstrap(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="non-empty"):
        paired_bootstrap(np.zeros(0), np.zeros(0))
    with pytest.raises(ValueError, match="n_samples"):
        paired_bootstrap(np.zeros(3), np.zeros(3), n_samples=0)


def _pq(qids, **values):
    return PerQueryMetrics(qids=qids, values={k.replace("_at_", "@"): np.asarray(v, dtype=np.float64)
                                              for k, v in values.items()})


def test_compare_systems():
    qids = [f"q{i}" for i in range(4)]
    base = _pq(qids, ndcg_at_10=[0.5, 0.5, 0.5, 0.5], accuracy_at_1=[1, 1, 1, 1])
    tuned = _pq(qids, ndcg_at_10=[0.75, 0.75, 0.75, 0.75], accuracy_at_1=[1, 1, 1, 1])
    out = compare_systems(base, tuned, n_samples=200, seed=0)
    assert set(out) == {"ndcg@10", "accuracy@1"}
    assert out["ndcg@10"]["delta"] == pytest.approx(0.25)
    assert out["ndcg@10"]["relative"] == pytest.approx(0.5)  # half of the gap to 1 closed
    assert out["ndcg@10"]["base_mean"] == 0.5 and out["ndcg@10"]["mean"] == 0.75
    assert out["ndcg@10"]["n_queries"] == 4
    assert out["accuracy@1"]["relative"] is None
    assert set(compare_systems(base, tuned, ["ndcg@10"])) == {"ndcg@10"}
    with pytest.raises(KeyError, match="recall@5"):
        compare_systems(base, tuned, ["recall@5"])
    with pytest.raises(ValueError, match="different queries"):
        compare_systems(base, _pq(qids[::-1], ndcg_at_10=[0.5] * 4), ["ndcg@10"])


def test_compare_systems_on_real_metrics():
    qids, qrels, ranked, _ = random_case(0, graded=True)
    base = compute_metrics(ranked, qids, qrels, [10])
    better = compute_metrics([[d for d, g in sorted(qrels[q].items(), key=lambda x: -x[1]) if g > 0]
                              for q in qids], qids, qrels, [10])
    out = compare_systems(base, better, ["ndcg@10"], n_samples=500, seed=0)["ndcg@10"]
    assert out["mean"] == pytest.approx(1.0)
    assert out["relative"] == pytest.approx(1.0)
    assert out["p_value"] < 0.01
