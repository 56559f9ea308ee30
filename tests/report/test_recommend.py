"""One recommendation across every evaluated system, on hand-made paired comparisons: one test per branch."""

import pytest

from domain_embed.report.recommend import decide, recommend

METRIC, BAR = "recall@10", 0.05


def c(delta: float, lo: float, hi: float, p: float = 0.001, metric: str = METRIC) -> dict:
    """One stored comparison ("a-vs-b": delta = a - b) on one metric."""
    return {metric: {"delta": delta, "ci95": [lo, hi], "p_value": p}}


def pick(systems, comparisons, metric=METRIC, min_gain=BAR) -> dict:
    return recommend(systems, comparisons, metric, min_gain)


ALL = ["baseline", "bm25", "tuned"]  # report order; the rule sorts by cost


def test_bm25_significantly_better_than_tuned_is_recommended_even_when_the_article_rule_adopts_tuned():
    comparisons = {"bm25-vs-baseline": c(0.10, 0.08, 0.12), "tuned-vs-baseline": c(0.06, 0.04, 0.08),
                   "tuned-vs-bm25": c(-0.04, -0.06, -0.02)}
    assert decide(comparisons["tuned-vs-baseline"], METRIC, BAR)["adopt_tuned"]  # tuned vs base alone passes
    rec = pick(ALL, comparisons)
    assert rec["system"] == "bm25"
    assert "bm25 beats tuned by +4.0 points (95% CI +2.0 to +6.0)" in rec["reason"]
    assert "bm25 beats baseline by +10.0 points" in rec["reason"]


def test_tuned_significantly_better_than_bm25_and_base_is_recommended():
    rec = pick(ALL, {"bm25-vs-baseline": c(0.10, 0.08, 0.12), "tuned-vs-baseline": c(0.16, 0.14, 0.18),
                     "tuned-vs-bm25": c(0.03, 0.02, 0.04)})
    assert rec["system"] == "tuned"
    assert "tuned beats bm25 by +3.0 points" in rec["reason"]
    assert "tuned beats baseline by +16.0 points (95% CI +14.0 to +18.0), above the 5-point bar" in rec["reason"]


def test_tuned_level_with_bm25_leaves_the_cheaper_bm25():
    rec = pick(ALL, {"bm25-vs-baseline": c(0.10, 0.08, 0.12), "tuned-vs-baseline": c(0.11, 0.09, 0.13),
                     "tuned-vs-bm25": c(0.01, -0.01, 0.03, p=0.3)})
    assert rec["system"] == "bm25"
    assert "tuned vs bm25: +1.0 points (95% CI -1.0 to +3.0), a CI that includes 0, so the cheaper bm25 stays" in \
        rec["reason"]


def test_without_a_tuned_model_bm25_and_base_are_weighed_and_a_tie_keeps_bm25():
    rec = pick(["baseline", "bm25"], {"bm25-vs-baseline": c(0.01, -0.02, 0.04, p=0.5)})
    assert rec["system"] == "bm25"
    assert rec["reason"].startswith("the cheapest system (cost order bm25 < baseline)")
    assert "baseline vs bm25: -1.0 points (95% CI -4.0 to +2.0)" in rec["reason"]  # from baseline's side


def test_base_significantly_better_than_bm25_is_recommended():
    rec = pick(["baseline", "bm25"], {"bm25-vs-baseline": c(-0.05, -0.07, -0.03)})
    assert rec["system"] == "baseline"
    assert "baseline beats bm25 by +5.0 points (95% CI +3.0 to +7.0)" in rec["reason"]


def test_a_hybrid_significantly_better_than_everything_is_recommended():
    comparisons = {"bm25-vs-baseline": c(0.10, 0.08, 0.12), "tuned-vs-baseline": c(0.16, 0.14, 0.18),
                   "tuned-vs-bm25": c(0.03, 0.02, 0.04), "hybrid_tuned-vs-tuned": c(0.02, 0.01, 0.03),
                   "hybrid_tuned-vs-bm25": c(0.05, 0.04, 0.06), "hybrid_tuned-vs-baseline": c(0.18, 0.16, 0.2)}
    rec = pick([*ALL, "hybrid_tuned"], comparisons)
    assert rec["system"] == "hybrid_tuned"
    assert "cost order bm25 < baseline < tuned < hybrid_tuned" in rec["reason"]
    assert {(e["a"], e["b"]) for e in rec["compared"]} == {tuple(k.split("-vs-")) for k in comparisons}


def test_two_hybrids_level_with_each_other_keep_the_one_on_the_base_model():
    comparisons = {"hybrid_base-vs-bm25": c(0.05, 0.04, 0.06), "hybrid_tuned-vs-hybrid_base": c(0.0, -0.01, 0.01)}
    assert pick(["hybrid_tuned", "hybrid_base", "bm25"], comparisons)["system"] == "hybrid_base"


def test_a_missing_comparison_is_named_and_the_cheaper_system_stays():
    comparisons = {"bm25-vs-baseline": c(0.10, 0.08, 0.12), "tuned-vs-baseline": c(0.16, 0.14, 0.18)}
    rec = pick(ALL, comparisons)  # no tuned-vs-bm25: nothing is computed to fill it
    assert rec["system"] == "bm25"
    assert "no tuned-vs-bm25 comparison on recall@10 in this run, so the cheaper bm25 stays" in rec["reason"]
    assert [(e["a"], e["b"]) for e in rec["compared"]] == [("bm25", "baseline"), ("tuned", "baseline")]
    # a comparison that lacks the decision metric is missing too
    assert pick(["bm25", "baseline"], {"bm25-vs-baseline": c(-0.1, -0.2, -0.05, metric="ndcg@10")})["system"] == "bm25"


def test_a_significant_tuned_gain_below_the_article_bar_keeps_the_base_model():
    rec = pick(ALL, {"bm25-vs-baseline": c(-0.05, -0.07, -0.03), "tuned-vs-baseline": c(0.03, 0.01, 0.05),
                     "tuned-vs-bm25": c(0.08, 0.06, 0.10)})
    assert rec["system"] == "baseline"
    assert "tuned gains +3.0 points (95% CI +1.0 to +5.0) over baseline, not above the 5-point bar" in rec["reason"]
    assert pick(ALL, {"bm25-vs-baseline": c(-0.05, -0.07, -0.03), "tuned-vs-baseline": c(0.03, 0.01, 0.05),
                      "tuned-vs-bm25": c(0.08, 0.06, 0.10)}, min_gain=0.0)["system"] == "tuned"


def test_the_decision_metric_is_the_one_weighed():
    comparisons = {"tuned-vs-bm25": {**c(-0.04, -0.06, -0.02), **c(0.04, 0.02, 0.06, metric="ndcg@10")}}
    assert pick(["bm25", "tuned"], comparisons)["system"] == "bm25"
    rec = pick(["bm25", "tuned"], comparisons, metric="ndcg@10")
    assert rec["system"] == "tuned" and rec["compared"] == [
        {"a": "tuned", "b": "bm25", "metric": "ndcg@10", "delta": 0.04, "ci95": [0.02, 0.06], "p": 0.001}]


def test_when_every_system_is_beaten_the_cheapest_stays_and_says_why():
    rec = pick(ALL, {"bm25-vs-baseline": c(0.10, 0.08, 0.12), "tuned-vs-baseline": c(-0.06, -0.08, -0.04),
                     "tuned-vs-bm25": c(0.03, 0.02, 0.04)})
    assert rec["system"] == "bm25" and "not transitive" in rec["reason"]
    assert "tuned beats bm25 by +3.0 points" in rec["reason"]


def test_one_or_no_system():
    assert pick(["baseline"], {}) == {"system": "baseline", "reason": "the only system evaluated in this run",
                                      "compared": []}
    assert pick([], {})["system"] is None


@pytest.mark.parametrize(("delta", "lo", "adopt", "says"), [
    (0.06, 0.04, True, "above the 5-point bar"),
    (0.05, 0.03, False, "not more than the 5-point bar"),  # the bar itself is not a gain above it
    (0.06, -0.01, False, "the CI includes 0"),
])
def test_the_article_rule_for_tuned_vs_base(delta, lo, adopt, says):
    d = decide(c(delta, lo, delta + 0.02), METRIC, BAR)
    assert d["adopt_tuned"] is adopt and says in d["reason"]
