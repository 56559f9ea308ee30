"""One recommendation across every evaluated system, on hand-made paired comparisons: one test per branch."""

import itertools
import random

import pytest

from domain_embed.report.recommend import conclude, decide, recommend, system

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
    assert "tuned beats baseline by +16.0 points (95% CI +14.0 to +18.0)" in rec["reason"]


def test_tuned_level_with_bm25_leaves_the_cheaper_bm25():
    rec = pick(ALL, {"bm25-vs-baseline": c(0.10, 0.08, 0.12), "tuned-vs-baseline": c(0.11, 0.09, 0.13),
                     "tuned-vs-bm25": c(0.01, -0.01, 0.03, p=0.3)})
    assert rec["system"] == "bm25"
    assert "tuned vs bm25: +1.0 points (95% CI -1.0 to +3.0), a CI that includes 0, so the cheaper bm25 stays" in \
        rec["reason"]


def test_without_a_tuned_model_bm25_and_base_are_weighed_and_a_tie_keeps_bm25():
    rec = pick(["baseline", "bm25"], {"bm25-vs-baseline": c(0.01, -0.02, 0.04, p=0.5)})
    assert rec["system"] == "bm25"
    assert rec["reason"].startswith("the cheapest adoptable system (cost order bm25 < baseline)")
    assert "baseline vs bm25: -1.0 points (95% CI -4.0 to +2.0)" in rec["reason"]  # from baseline's side


def test_base_significantly_better_than_bm25_is_recommended():
    rec = pick(["baseline", "bm25"], {"bm25-vs-baseline": c(-0.05, -0.07, -0.03)})
    assert rec["system"] == "baseline"
    assert "baseline beats bm25 by +5.0 points (95% CI +3.0 to +7.0)" in rec["reason"]


def test_a_hybrid_significantly_better_than_everything_is_recommended():
    comparisons = {"bm25-vs-baseline": c(0.10, 0.08, 0.12), "tuned-vs-baseline": c(0.16, 0.14, 0.18),
                   "tuned-vs-bm25": c(0.03, 0.02, 0.04), "hybrid_tuned-vs-tuned": c(0.02, 0.01, 0.03),
                   "hybrid_tuned-vs-bm25": c(0.05, 0.04, 0.06), "hybrid_tuned-vs-baseline": c(0.18, 0.16, 0.2),
                   "hybrid_tuned-vs-hybrid_base": c(0.07, 0.06, 0.08), "hybrid_base-vs-bm25": c(-0.02, -0.03, -0.01)}
    rec = pick([*ALL, "hybrid_tuned", "hybrid_base"], comparisons)
    assert rec["system"] == "hybrid_tuned"
    assert "cost order bm25 < baseline < tuned < hybrid_base < hybrid_tuned" in rec["reason"]
    assert {(e["a"], e["b"]) for e in rec["compared"]} == {tuple(k.split("-vs-")) for k in comparisons}
    # without its untuned counterpart, hybrid_tuned cannot show that fine-tuning earned its place in the hybrid
    alone = pick([*ALL, "hybrid_tuned"], {k: v for k, v in comparisons.items() if "hybrid_base" not in k})
    assert alone["system"] == "tuned" and ("hybrid_tuned is not adoptable: no hybrid_tuned-vs-hybrid_base "
                                           "comparison on recall@10 in this run") in alone["reason"]


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
    assert ("tuned is not adoptable: tuned gains +3.0 points (95% CI +1.0 to +5.0) over baseline, not above the "
            "5-point bar for fine-tuning with a CI that excludes 0") in rec["reason"]
    assert pick(ALL, {"bm25-vs-baseline": c(-0.05, -0.07, -0.03), "tuned-vs-baseline": c(0.03, 0.01, 0.05),
                      "tuned-vs-bm25": c(0.08, 0.06, 0.10)}, min_gain=0.0)["system"] == "tuned"


def test_the_decision_metric_is_the_one_weighed():
    comparisons = {"tuned-vs-bm25": {**c(-0.04, -0.06, -0.02), **c(0.04, 0.02, 0.06, metric="ndcg@10")},
                   "tuned-vs-baseline": {**c(0.08, 0.06, 0.10), **c(0.08, 0.06, 0.10, metric="ndcg@10")}}
    assert pick(["bm25", "tuned"], comparisons)["system"] == "bm25"
    rec = pick(["bm25", "tuned"], comparisons, metric="ndcg@10")
    assert rec["system"] == "tuned" and rec["compared"] == [
        {"a": "tuned", "b": "bm25", "metric": "ndcg@10", "delta": 0.04, "ci95": [0.02, 0.06], "p": 0.001}]


def test_when_every_system_is_beaten_the_cheapest_stays_and_says_why():
    rec = pick(["bm25", "baseline", "hybrid_base"], {
        "bm25-vs-baseline": c(0.10, 0.08, 0.12), "hybrid_base-vs-bm25": c(0.03, 0.02, 0.04),
        "hybrid_base-vs-baseline": c(-0.06, -0.08, -0.04)})
    assert rec["system"] == "bm25" and "not transitive" in rec["reason"]
    assert "hybrid_base beats bm25 by +3.0 points" in rec["reason"]


def test_no_adoptable_system():
    rec = pick(["tuned"], {})
    assert rec["system"] is None and "tuned is not adoptable: no tuned-vs-baseline comparison" in rec["reason"]


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


# every system, each beaten significantly by the next costlier one: without the bars hybrid_tuned would win
ISSUE = {"bm25-vs-baseline": c(0.02, 0.01, 0.03), "tuned-vs-baseline": c(0.03, 0.01, 0.05),
         "tuned-vs-bm25": c(0.01, 0.005, 0.015), "hybrid_base-vs-tuned": c(0.02, 0.01, 0.03),
         "hybrid_base-vs-bm25": c(0.03, 0.02, 0.04), "hybrid_base-vs-baseline": c(0.05, 0.04, 0.06),
         "hybrid_tuned-vs-hybrid_base": c(0.005, 0.001, 0.009), "hybrid_tuned-vs-tuned": c(0.025, 0.015, 0.035),
         "hybrid_tuned-vs-bm25": c(0.035, 0.025, 0.045), "hybrid_tuned-vs-baseline": c(0.055, 0.045, 0.065)}
FIVE = ["baseline", "bm25", "tuned", "hybrid_base", "hybrid_tuned"]


def view(comparisons: dict, split: str = "dev", systems=FIVE) -> dict:
    """A split's scores as a stage's metrics.json holds them (means and CIs are only reported, never weighed)."""
    return {"split": split, "metrics": {s: {METRIC: 0.5} for s in systems},
            "ci95": {s: {METRIC: [0.4, 0.6]} for s in systems}, "comparisons": comparisons}


def test_the_issue_case_needs_fine_tuning_to_clear_the_bar_in_every_system_that_uses_it():
    """tuned over base +3 [+1, +5], hybrid_tuned over hybrid_base +0.5 [+0.1, +0.9]: neither tuned system."""
    out = conclude(view(ISSUE), view(ISSUE, "test"), METRIC, BAR)
    rec, decision = out["recommendation"], out["decision"]
    assert rec["system"] == "hybrid_base" and not decision["adopt_tuned"]
    assert ("hybrid_tuned is not adoptable: it is built on tuned, and tuned gains +3.0 points (95% CI +1.0 to +5.0) "
            "over baseline") in rec["reason"]
    assert "not more than the 5-point bar" in decision["reason"] and decision["split"] == "dev"
    # with tuned over base clearing the bar, hybrid_tuned still has to clear it over hybrid_base
    cleared = {**ISSUE, "tuned-vs-baseline": c(0.06, 0.04, 0.08)}
    assert "hybrid_tuned is not adoptable: hybrid_tuned gains +0.5 points (95% CI +0.1 to +0.9) over hybrid_base" \
        in recommend(FIVE, cleared, METRIC, BAR)["reason"]


def test_a_decision_to_adopt_never_stands_beside_a_recommendation_without_the_tuned_model():
    cleared = {**ISSUE, "tuned-vs-baseline": c(0.06, 0.04, 0.08)}  # tuned clears the bar, hybrid_base beats it
    out = conclude(view(cleared), view(cleared, "test"), METRIC, BAR)
    assert out["recommendation"]["system"] == "hybrid_base" and not out["decision"]["adopt_tuned"]
    assert out["decision"]["reason"].endswith(
        "but the recommendation, hybrid BM25 + base model, does not use the tuned model")


def test_decision_and_recommendation_agree_on_random_comparisons():
    rng = random.Random(0)
    for _ in range(300):
        comparisons = {}
        for a, b in itertools.combinations(FIVE, 2):
            lo = rng.choice([-0.08, -0.02, 0.0, 0.01, 0.04, 0.07])
            comparisons[f"{a}-vs-{b}"] = c(lo + 0.02, lo, lo + 0.04)
        out = conclude(view(comparisons), view(comparisons, "test"), METRIC, BAR)
        chosen = out["recommendation"]["system"]
        assert out["decision"]["adopt_tuned"] == (chosen in ("tuned", "hybrid_tuned"))


def test_system_metadata_orders_and_gates_reranked_systems():
    names = ["rerank(hybrid_base)", "custom", "rerank(bm25)", "hybrid_tuned", "rerank(tuned)", "bm25", "baseline"]
    assert sorted(names, key=lambda s: system(s).cost) == [
        "bm25", "baseline", "hybrid_tuned", "rerank(bm25)", "rerank(tuned)", "rerank(hybrid_base)", "custom"]
    tuned_ce = {"rerank(hybrid_tuned)", "rerank(baseline)"}
    assert system("rerank(hybrid_tuned)", tuned_ce).gates(tuned_ce) == [
        ("tuned", "baseline"), ("hybrid_tuned", "hybrid_base"), ("rerank(hybrid_tuned)", "hybrid_tuned")]
    assert system("rerank(baseline)", tuned_ce).gates(tuned_ce) == [("rerank(baseline)", "baseline")]
    assert system("rerank(tuned)").gates() == [("tuned", "baseline")]  # a pretrained cross-encoder adds no gate
    assert system("rerank(hybrid_base)").gates() == [] and system("custom").gates() == []
    assert [system(s).uses_tuned_model for s in ("rerank(tuned)", "rerank(hybrid_tuned)", "rerank(hybrid_base)")] \
        == [True, True, False]
    assert system("rerank(bm25)").label == "BM25, reranked by a cross-encoder"


def test_a_reranker_fine_tuned_in_the_run_must_clear_the_bar_over_its_first_stage():
    comparisons = {"rerank(baseline)-vs-baseline": c(0.03, 0.01, 0.05), "bm25-vs-baseline": c(-0.02, -0.03, -0.01)}
    systems = ["bm25", "baseline", "rerank(baseline)"]
    assert pick(systems, comparisons)["system"] == "rerank(baseline)"  # a pretrained cross-encoder: no bar
    rec = recommend(systems, comparisons, METRIC, BAR, tuned_rerankers={"rerank(baseline)"})
    assert rec["system"] == "baseline" and "rerank(baseline) is not adoptable" in rec["reason"]
    strong = {**comparisons, "rerank(baseline)-vs-baseline": c(0.08, 0.06, 0.10)}
    assert recommend(systems, strong, METRIC, BAR, tuned_rerankers={"rerank(baseline)"})["system"] == \
        "rerank(baseline)"
    # a reranked tuned model needs the tuned model to clear its bar, whatever the cross-encoder adds
    over_tuned = {"tuned-vs-baseline": c(0.03, 0.01, 0.05), "rerank(tuned)-vs-baseline": c(0.2, 0.1, 0.3)}
    rec = pick(["baseline", "tuned", "rerank(tuned)"], over_tuned)
    assert rec["system"] == "baseline" and "rerank(tuned) is not adoptable: it is built on tuned" in rec["reason"]


def test_chosen_on_dev_reported_once_on_test_and_a_disagreement_is_named():
    dev = {**ISSUE, "tuned-vs-baseline": c(0.06, 0.04, 0.08), "hybrid_tuned-vs-hybrid_base": c(0.07, 0.06, 0.08)}
    test = {**ISSUE, "tuned-vs-bm25": c(-0.03, -0.05, -0.01)}  # on test the tuned model fails its bar
    rec = conclude(view(dev), view(test, "test"), METRIC, BAR)["recommendation"]
    assert rec["system"] == "hybrid_tuned" and rec["split"] == "dev" and "note" not in rec
    t = rec["test"]
    assert (t["split"], t["mean"], t["ci95"], t["pick"], t["agrees"]) == ("test", 0.5, [0.4, 0.6], "hybrid_base", False)
    assert {o["other"]: (o["delta"], o["ci95"]) for o in t["compared"]}["hybrid_base"] == (0.005, [0.001, 0.009])
    assert {o["other"] for o in t["compared"]} == set(FIVE) - {"hybrid_tuned"}
    assert rec["tuned_vs_bm25"] == ("On the test split the tuned model alone loses to BM25: recall@10 -3.0 points "
                                    "(95% CI -5.0 to -1.0).")
    same = conclude(view(dev), view(dev, "test"), METRIC, BAR)["recommendation"]["test"]
    assert same["agrees"] and same["pick"] == "hybrid_tuned"


@pytest.mark.parametrize(("lo", "hi", "says"), [(-0.05, -0.01, "loses to BM25"),
                                                (-0.01, 0.03, "is level with BM25 (the CI includes 0)"),
                                                (0.01, 0.03, "beats BM25")])
def test_the_tuned_model_alone_against_bm25_in_one_plain_sentence(lo, hi, says):
    comparisons = {"tuned-vs-bm25": c((lo + hi) / 2, lo, hi)}
    rec = conclude(None, view(comparisons, "test", ["bm25", "tuned"]), METRIC, BAR)["recommendation"]
    assert rec["tuned_vs_bm25"].startswith(f"On the test split the tuned model alone {says}: recall@10 ")


@pytest.mark.parametrize(("split", "says"), [("test", "the data has no dev split"),
                                             ("dev", "the evaluated split is dev")])
def test_without_a_separate_dev_split_the_choice_is_made_on_the_evaluated_one_and_says_so(split, says):
    out = conclude(None, view(ISSUE, split), METRIC, BAR)
    rec = out["recommendation"]
    assert rec["system"] == "hybrid_base" and rec["split"] == split and "pick" not in rec["test"]
    assert rec["note"] == (f"{says}, so the recommendation is chosen on the {split} split its figures come from: "
                           "no held-out confirmation")
    assert out["decision"]["split"] == split
