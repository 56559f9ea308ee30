"""The selection guide on hand-made metric tables: one test per branch of the article's decision guide."""

import math

import pytest

from domain_embed.selection import (
    FINE_TUNE_STAGES,
    context_advice,
    domain_gap,
    lowest_mrl_dims,
    model_kind,
    mrl_advice,
    rank,
    rank_correlation,
    recommend,
    reencode_hours,
    reindex_cost,
    storage_gb,
)


def row(model, recall, *, ndcg=None, kind="general", over=0, window=512, curve=None, mrl=False, chunks=(),
        mteb=None, chunked=False):
    curve = curve or [{"dims": 384, "ndcg@10": ndcg or recall}]
    return {"model": model, "kind": kind, "metrics": {"recall@10": recall, "ndcg@10": ndcg or recall},
            "window": {"effective": window}, "chunked": chunked, "mrl_trained": mrl, "mrl_curve": curve,
            "chunk_sizes": list(chunks),
            "mteb_retrieval": mteb, "doc_tokens": {"over_limit": over, "share_over_limit": over / 100,
                                                   "max": 900 if over else 300, "p99": 800 if over else 250}}


def test_gap_over_five_points_to_a_domain_model_recommends_it_or_fine_tuning():
    rows = [row("bge-small", 0.60), row("legal-bert", 0.70, kind="domain")]
    gap = domain_gap(rows, {"recall@10": 0.50}, gap_points=0.05)
    assert gap["action"] == "domain-model" and gap["model"] == "legal-bert"
    assert gap["gap"] == pytest.approx(0.10) and gap["best_general"] == "bge-small"
    assert "legal-bert" in gap["reason"] and FINE_TUNE_STAGES in gap["reason"] and "+10.0 points" in gap["reason"]


def test_bm25_ahead_by_over_five_points_recommends_fine_tuning_the_general_model():
    rows = [row("minilm", 0.55), row("bge-small", 0.62)]
    gap = domain_gap(rows, {"recall@10": 0.70}, gap_points=0.05)
    assert gap["action"] == "fine-tune" and gap["model"] == "bge-small" and gap["leader"] == "bm25"
    assert "500+" in gap["reason"] and FINE_TUNE_STAGES in gap["reason"]


def test_gap_of_five_points_or_less_keeps_the_general_model():
    rows = [row("bge-small", 0.66), row("fin-e5", 0.70, kind="domain")]
    gap = domain_gap(rows, {"recall@10": 0.60}, gap_points=0.05)
    assert gap["action"] == "general" and gap["model"] == "bge-small"
    assert "operational simplicity" in gap["reason"]
    exactly = domain_gap([row("a", 0.65), row("law-x", 0.70, kind="domain")], None, gap_points=0.05)
    assert exactly["action"] == "general"  # "5 points or fewer" stays general


def test_documents_over_the_window_call_for_longer_context_or_chunking():
    chunks = [{"size": 128, "ndcg@10": 0.41}, {"size": 256, "ndcg@10": 0.47}, {"size": 512, "ndcg@10": 0.44}]
    rows = [row("minilm", 0.5, over=12, window=256, chunks=chunks), row("qwen3", 0.5, window=8192)]
    lines = context_advice(rows)
    assert len(lines) == 1
    line = lines[0]
    assert line.startswith("minilm: 12 documents (12.0%) exceed its 256-token window")
    assert line.endswith("the model silently cut them here: use a longer-context model (qwen3 fit every document), "
                         "or chunk at 256 tokens, its best measured chunk size (ndcg@10 0.4700)")
    chunked = context_advice([row("minilm", 0.5, over=3, chunked=True)])[0]
    assert chunked.endswith("they were split into windows here, so nothing was cut: keep chunking to fit the window, "
                            "or use a longer-context model")
    assert context_advice([row("qwen3", 0.5)]) == []


def test_mrl_picks_the_lowest_dimension_within_tolerance():
    curve = [{"dims": 64, "ndcg@10": 0.40}, {"dims": 128, "ndcg@10": 0.445}, {"dims": 256, "ndcg@10": 0.452},
             {"dims": 768, "ndcg@10": 0.45}]
    low = lowest_mrl_dims(curve, tolerance=0.01)
    assert low["dims"] == 128 and low["full_dims"] == 768 and low["storage_saving"] == 6.0
    advice = mrl_advice(row("gte", 0.5, curve=curve, mrl=True), tolerance=0.01)
    assert advice["text"].startswith("gte (trained for MRL): 128 dims keep ndcg@10 within 0.010 of the full 768")
    assert lowest_mrl_dims(curve, tolerance=0.001)["dims"] == 256
    flat = mrl_advice(row("gte", 0.5, curve=curve[:1] + curve[-1:], mrl=True), tolerance=0.01)
    assert flat["dims"] == 768 and flat["text"].endswith("keep 768 dims (64 dims: 0.4000, -0.0500)")


def test_a_model_not_trained_for_mrl_is_said_so_with_its_measured_curve():
    curve = [{"dims": 64, "ndcg@10": 0.449}, {"dims": 384, "ndcg@10": 0.45}]
    advice = mrl_advice(row("minilm", 0.5, curve=curve, mrl=False), tolerance=0.01)
    assert "not trained for MRL" in advice["text"] and advice["dims"] == 64
    assert "not guaranteed on other data" in advice["text"]
    assert "MRL training unknown" in mrl_advice(row("x", 0.5, curve=curve, mrl=None), tolerance=0.01)["text"]
    only_full = mrl_advice(row("tiny", 0.5, curve=curve[-1:], mrl=None), tolerance=0.01)
    assert only_full["dims"] == 384 and only_full["text"].endswith("(no smaller dimension was measured)")


def test_rank_correlation_and_ranks_on_a_known_example():
    # MTEB order a > b > c > d > e; domain order b > a > d > c > e: sum d^2 = 4, rho = 1 - 6*4/(5*24) = 0.8
    rows = [row(m, 0.5, ndcg=nd, mteb=s) for m, s, nd in
            [("a", 60, 0.40), ("b", 55, 0.50), ("c", 50, 0.20), ("d", 45, 0.30), ("e", 40, 0.10)]]
    corr = rank_correlation(rows)
    assert corr["spearman"] == pytest.approx(0.8) and corr["n"] == 5
    reversed_rows = [row(m, 0.5, ndcg=nd, mteb=s) for m, s, nd in [("a", 3, 0.1), ("b", 2, 0.2), ("c", 1, 0.3)]]
    assert rank_correlation(reversed_rows)["spearman"] == pytest.approx(-1.0)
    few = rank_correlation([*rows[:2], row("tiny", 0.1)])
    assert few["spearman"] is None and few["n"] == 2 and "at least 3" in few["note"]
    ranked = rank([*rows[:2], row("tiny", 0.6)])
    assert [(r["model"], r["domain_rank"], r["mteb_rank"]) for r in ranked] == [("tiny", 1, None), ("b", 2, 2),
                                                                                 ("a", 3, 1)]


def test_storage_and_reencode_arithmetic():
    assert storage_gb(384) == pytest.approx(1.536)  # 384 dims x 4 bytes x 1M documents
    assert storage_gb(1024, bytes_per_value=2) == pytest.approx(2.048)
    assert reencode_hours(100.0) == pytest.approx(1e6 / 100 / 3600)
    assert math.isinf(reencode_hours(0.0))
    cost = reindex_cost([128, 768], docs_per_s=250.0)
    assert cost["gb_per_million_docs"] == {"float32": {"128": 0.512, "768": 3.072},
                                           "float16": {"128": 0.256, "768": 1.536}}
    assert cost["hours_per_million_docs"] == pytest.approx(1.111, abs=1e-3)


def test_model_kind_from_the_name_or_the_override():
    assert [model_kind(n) for n in ("nlpaueb/legal-bert-base-uncased", "voyage-law-2", "Fin-E5", "BioBERT",
                                    "PubMedBERT", "MedCPT")] == ["domain"] * 6
    assert [model_kind(n) for n in ("minilm", "bge-small", "e5-base", "qwen3-embedding-0.6b", "bert-medium",
                                    "intfloat/multilingual-e5-large", "outputs/obliqa/minilm-full/finetune/model",
                                    "bge-small-finetuned")] == ["general"] * 8
    assert model_kind("/models/tuned", domain_models=["/models/tuned"]) == "domain"


def test_recommend_joins_the_steps_and_lists_unavailable_models():
    rows = [row("minilm", 0.60, over=5, window=256), row("bge-small", 0.62)]
    rec = recommend(rows, {"recall@10": 0.63}, 0.05, 0.01, [{"model": "e5-base", "reason": "offline"}])
    assert rec["action"] == "general" and rec["model"] == "bge-small"
    assert rec["lines"][0] == rec["gap"]["reason"] and any("256-token window" in line for line in rec["lines"])
    assert set(rec["mrl"]) == {"minilm", "bge-small"} and rec["lines"][-1] == "e5-base not evaluated: offline"
    empty = recommend([], None, 0.05, 0.01, [{"model": "e5-base", "reason": "offline"}])
    assert empty["model"] is None and empty["lines"] == ["no candidate model could be evaluated",
                                                      "e5-base not evaluated: offline"]
