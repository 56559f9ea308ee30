"""The recommendation: (a) the best system without fine-tuning, (b) fine-tuning's best against it, on hand-made paired
comparisons (one test per branch) and on the ObliQA budget=cpu run's own figures."""

import itertools
import random

import pytest

from domain_embed.config import EvalConfig
from domain_embed.errors import ConfigError
from domain_embed.report.recommend import Rule, check_cost_order, conclude, cost_sorted, fine_tuned, label, recommend

METRIC, BAR = "recall@10", 0.05
RULE = Rule.of(EvalConfig())


def c(delta: float, lo: float, hi: float, p: float = 0.001, metric: str = METRIC) -> dict:
    """One stored comparison ("a-vs-b": delta = a - b) on one metric."""
    return {metric: {"delta": delta, "ci95": [lo, hi], "p_value": p}}


def both(recall: dict, ndcg: dict) -> dict:
    return {**recall, **{"ndcg@10": ndcg[METRIC]}}


def pick(systems, comparisons, rule=RULE) -> dict:
    return recommend(systems, comparisons, rule)


FIVE = ["baseline", "bm25", "tuned", "hybrid_base", "hybrid_tuned"]  # report order; the rule sorts by cost


def view(comparisons: dict, split: str = "dev", systems=FIVE) -> dict:
    """A split's scores as a stage's metrics.json holds them (means and CIs are only reported, never weighed)."""
    return {"split": split, "metrics": {s: {METRIC: 0.5} for s in systems},
            "ci95": {s: {METRIC: [0.4, 0.6]} for s in systems}, "comparisons": comparisons}


# The ObliQA budget=cpu run (docs/cpu-run/report.md): dev figures where the report quotes them (tuned +13.8 over base,
# hybrid_base level with tuned, hybrid_tuned +3.2 over hybrid_base, hybrid_base +2.0 over bm25, the reranker's dev
# nDCG@10 0.552 against 0.698), the test split's elsewhere.
OBLIQA_DEV = {
    "bm25-vs-baseline": c(0.1361, 0.1202, 0.1514), "hybrid_base-vs-baseline": c(0.1565, 0.1413, 0.1704),
    "hybrid_base-vs-bm25": c(0.020, 0.006, 0.034), "tuned-vs-baseline": c(0.138, 0.110, 0.169),
    "tuned-vs-bm25": c(0.0117, -0.0006, 0.0237), "hybrid_tuned-vs-tuned": c(0.0363, 0.0278, 0.0445),
    "hybrid_tuned-vs-bm25": c(0.0479, 0.0395, 0.0570), "hybrid_tuned-vs-baseline": c(0.1840, 0.1694, 0.1991),
    "hybrid_base-vs-tuned": c(0.012, -0.016, 0.039), "hybrid_tuned-vs-hybrid_base": c(0.032, 0.013, 0.051),
    "rerank(hybrid_tuned)-vs-hybrid_tuned": both(c(0.0, 0.0, 0.0, p=1.0), c(-0.146, -0.156, -0.135)),
    "rerank(hybrid_tuned)-vs-hybrid_base": c(0.0275, 0.0205, 0.0348)}
OBLIQA_TEST = {**OBLIQA_DEV, "hybrid_base-vs-bm25": c(0.0205, 0.0135, 0.0272),
               "tuned-vs-baseline": c(0.1478, 0.1344, 0.1624), "hybrid_base-vs-tuned": c(0.0088, -0.0024, 0.0197),
               "hybrid_tuned-vs-hybrid_base": c(0.0275, 0.0205, 0.0348)}
OBLIQA = [*FIVE, "rerank(hybrid_tuned)"]


def test_the_obliqa_run_recommends_hybrid_base_not_the_tuned_model():
    rec = conclude(view(OBLIQA_DEV, systems=OBLIQA), view(OBLIQA_TEST, "test", OBLIQA), RULE)
    d = rec["decision"]
    assert rec["system"] == "hybrid_base" and rec["untuned"]["system"] == "hybrid_base"
    assert (rec["fine_tuned"]["system"], d["over"], d["adopt"]) == ("hybrid_tuned", "hybrid_base", False)
    assert (d["delta"], d["ci95"]) == (0.032, [0.013, 0.051])
    assert rec["reason"] == ("hybrid_tuned (fine-tuned) vs hybrid_base (no fine-tuning): recall@10 +3.2 points (95% CI "
                             "+1.3 to +5.1), not more than the 5-point bar: keep hybrid_base, which needs no "
                             "fine-tuning")
    assert rec["cost_order"] == ["bm25", "baseline", "hybrid_base", "tuned", "hybrid_tuned", "rerank(hybrid_tuned)"]
    assert "hybrid_base beats bm25 by +2.0 points (95% CI +0.6 to +3.4)" in rec["untuned"]["reason"]
    assert ("rerank(hybrid_tuned) is not a candidate: it gains -14.6 points (95% CI -15.6 to -13.5) on ndcg@10 over "
            "hybrid_tuned, not above the reranker's 1-point bar") in rec["fine_tuned"]["reason"]
    assert rec["test"]["pick"] == "hybrid_base" and rec["test"]["agrees"]


def test_a_fine_tuned_system_clearing_the_bar_over_the_best_untuned_one_is_recommended():
    dev = {**OBLIQA_DEV, "hybrid_tuned-vs-hybrid_base": c(0.07, 0.05, 0.09)}
    rec = conclude(view(dev, systems=OBLIQA), view(dev, "test", OBLIQA), RULE)
    assert rec["system"] == "hybrid_tuned" and rec["decision"]["adopt"] and rec["untuned"]["system"] == "hybrid_base"
    assert rec["reason"].endswith("+7.0 points (95% CI +5.0 to +9.0), above the 5-point bar with a CI that excludes 0: "
                                  "fine-tuning earns its cost")
    # above the bar, but a CI that includes 0: the simpler system stays
    unsure = {**dev, "hybrid_tuned-vs-hybrid_base": c(0.07, -0.01, 0.15)}
    rec = pick(OBLIQA, unsure)
    assert rec["system"] == "hybrid_base" and "CI that includes 0" in rec["reason"]


def test_the_tuned_model_against_its_own_base_no_longer_decides_alone():
    """+13.8 over the weak base model, but level with hybrid_base, which needs no fine-tuning."""
    rec = pick(["bm25", "baseline", "hybrid_base", "tuned"], OBLIQA_DEV)
    assert rec["system"] == "hybrid_base" and rec["fine_tuned"]["system"] == "tuned"
    assert rec["reason"].startswith("tuned (fine-tuned) vs hybrid_base (no fine-tuning): recall@10 -1.2 points")


def test_without_a_fine_tuned_system_the_best_untuned_one_is_recommended():
    rec = pick(["baseline", "bm25"], {"bm25-vs-baseline": c(0.01, -0.02, 0.04, p=0.5)})
    assert rec["system"] == "bm25" and not rec["decision"]["adopt"] and rec["fine_tuned"]["system"] is None
    assert rec["untuned"]["reason"].startswith("the cheapest that no other beats significantly on recall@10 (cost "
                                               "order bm25 < baseline)")
    assert "baseline vs bm25: -1.0 points (95% CI -4.0 to +2.0)" in rec["untuned"]["reason"]  # from baseline's side
    assert rec["reason"] == ("no fine-tuned system in this run; bm25 is the cheapest system without fine-tuning that "
                             "no other beats significantly on recall@10")
    base = pick(["baseline", "bm25"], {"bm25-vs-baseline": c(-0.05, -0.07, -0.03)})
    assert base["system"] == "baseline" and "baseline beats bm25 by +5.0 points" in base["untuned"]["reason"]


def test_a_missing_comparison_is_named_and_the_cheaper_system_stays():
    rec = pick(["bm25", "baseline"], {"bm25-vs-baseline": c(-0.1, -0.2, -0.05, metric="ndcg@10")})
    assert rec["system"] == "bm25"
    assert "no baseline-vs-bm25 comparison on recall@10 in this run, so the cheaper bm25 stays" in \
        rec["untuned"]["reason"]
    missing = pick(["bm25", "tuned"], {})
    assert missing["system"] == "bm25" and missing["reason"].startswith("no tuned-vs-bm25 comparison on recall@10")


def test_when_every_system_is_beaten_the_cheapest_stays_and_says_why():
    rec = pick(["bm25", "baseline", "hybrid_base"], {
        "bm25-vs-baseline": c(0.10, 0.08, 0.12), "hybrid_base-vs-bm25": c(0.03, 0.02, 0.04),
        "hybrid_base-vs-baseline": c(-0.06, -0.08, -0.04)})
    assert rec["system"] == "bm25" and "not transitive" in rec["untuned"]["reason"]
    assert "hybrid_base beats bm25 by +3.0 points" in rec["untuned"]["reason"]


def test_nothing_evaluated_or_nothing_untuned():
    assert pick([], {})["system"] is None and pick([], {})["reason"].startswith("no retrieval system was evaluated")
    rec = pick(["tuned"], {})
    assert rec["system"] is None and rec["reason"].startswith("no system without fine-tuning was evaluated")


def test_the_decision_metric_is_the_one_weighed():
    comparisons = {"hybrid_base-vs-bm25": {**c(-0.04, -0.06, -0.02), **c(0.04, 0.02, 0.06, metric="ndcg@10")}}
    assert pick(["bm25", "hybrid_base"], comparisons)["system"] == "bm25"
    ndcg = Rule.of(EvalConfig(decision_metric="ndcg@10"))
    assert pick(["bm25", "hybrid_base"], comparisons, ndcg)["system"] == "hybrid_base"


def test_a_reranked_system_is_gated_on_the_primary_metric_over_its_first_stage():
    """A rerank of the top 10 cannot move Recall@10: the gate is nDCG@10, above eval.rerank_min_gain, CI excluding 0."""
    def with_gate(ndcg):
        return {"bm25-vs-baseline": c(0.10, 0.08, 0.12),
                "rerank(bm25)-vs-bm25": both(c(0.0, 0.0, 0.0, p=1.0), ndcg),
                "rerank(bm25)-vs-baseline": c(0.10, 0.08, 0.12)}
    systems = ["baseline", "bm25", "rerank(bm25)"]
    rec = pick(systems, with_gate(c(0.03, 0.01, 0.05)))
    assert rec["system"] == "rerank(bm25)"
    assert "rerank(bm25) beats bm25 by +3.0 points (95% CI +1.0 to +5.0) on ndcg@10" in rec["untuned"]["reason"]
    small = pick(systems, with_gate(c(0.008, 0.002, 0.014)))
    assert small["system"] == "bm25" and ("rerank(bm25) is not a candidate: it gains +0.8 points (95% CI +0.2 to "
                                          "+1.4) on ndcg@10 over bm25, not above the reranker's 1-point bar") in \
        small["untuned"]["reason"]
    assert pick(systems, with_gate(c(0.03, -0.01, 0.07)))["system"] == "bm25"
    lower = Rule.of(EvalConfig(rerank_min_gain=0.005))
    assert pick(systems, with_gate(c(0.008, 0.002, 0.014)), lower)["system"] == "rerank(bm25)"
    # a reranker over a fine-tuned first stage is a fine-tuned system: it must clear fine-tuning's bar too
    tuned = {**with_gate(c(0.03, 0.01, 0.05)), "rerank(tuned)-vs-tuned": both(c(0.0, 0, 0), c(0.05, 0.03, 0.07)),
             "tuned-vs-rerank(bm25)": c(0.04, 0.02, 0.06), "rerank(tuned)-vs-rerank(bm25)": c(0.04, 0.02, 0.06)}
    rec = pick([*systems, "tuned", "rerank(tuned)"], tuned)
    assert rec["fine_tuned"]["system"] == "rerank(tuned)" and rec["system"] == "rerank(bm25)"
    assert not rec["decision"]["adopt"]


def test_the_cost_order_is_configuration_and_rerankers_follow_their_first_stage():
    names = ["rerank(hybrid_base)", "custom", "rerank(bm25)", "hybrid_tuned", "tuned", "bm25", "baseline",
             "hybrid_base"]
    assert cost_sorted(names, RULE.cost_order) == [
        "bm25", "rerank(bm25)", "baseline", "hybrid_base", "rerank(hybrid_base)", "tuned", "hybrid_tuned", "custom"]
    assert cost_sorted(names, ["hybrid_base", "rerank(bm25)", "bm25"])[:4] == [
        "hybrid_base", "rerank(hybrid_base)", "rerank(bm25)", "bm25"]
    level = {"hybrid_base-vs-bm25": c(0.01, -0.01, 0.03)}
    assert pick(["bm25", "hybrid_base"], level)["system"] == "bm25"
    custom = Rule.of(EvalConfig(cost_order=["hybrid_base", "bm25"]))
    rec = pick(["bm25", "hybrid_base"], level, custom)
    assert rec["system"] == "hybrid_base" and rec["cost_order"] == ["hybrid_base", "bm25"]
    check_cost_order(RULE.cost_order)
    with pytest.raises(ConfigError, match=r"^eval\.cost_order: unknown system 'hybird_base'"):
        check_cost_order(["bm25", "hybird_base"])
    with pytest.raises(ConfigError, match="named twice"):
        check_cost_order(["bm25", "bm25"])


def test_system_metadata():
    assert [fine_tuned(s) for s in ("bm25", "hybrid_base", "tuned", "rerank(hybrid_tuned)", "rerank(baseline)")] == \
        [False, False, True, True, False]
    assert label("rerank(bm25)") == "BM25, reranked by a cross-encoder" and label(None) == "none yet"


def test_decision_and_recommendation_agree_on_random_comparisons():
    rng = random.Random(0)
    systems = [*FIVE, "rerank(hybrid_base)", "rerank(hybrid_tuned)"]
    for _ in range(300):
        comparisons = {}
        for a, b in itertools.combinations(systems, 2):
            lo = rng.choice([-0.08, -0.02, 0.0, 0.01, 0.04, 0.07])
            comparisons[f"{a}-vs-{b}"] = both(c(lo + 0.02, lo, lo + 0.04), c(lo + 0.02, lo, lo + 0.04))
        rec = conclude(view(comparisons, systems=systems), view(comparisons, "test", systems), RULE)
        d = rec["decision"]
        assert rec["system"] == (d["system"] if d["adopt"] else rec["untuned"]["system"])
        assert d["adopt"] == fine_tuned(rec["system"]) and d["over"] == rec["untuned"]["system"]
        assert d["system"] == rec["fine_tuned"]["system"] and not fine_tuned(rec["untuned"]["system"])


def test_chosen_on_dev_reported_once_on_test_and_a_disagreement_is_named():
    dev = {**OBLIQA_DEV, "hybrid_tuned-vs-hybrid_base": c(0.07, 0.06, 0.08)}
    rec = conclude(view(dev), view(OBLIQA_TEST, "test"), RULE)
    assert rec["system"] == "hybrid_tuned" and rec["split"] == "dev" and "note" not in rec
    t = rec["test"]
    assert (t["split"], t["mean"], t["ci95"], t["pick"], t["agrees"]) == ("test", 0.5, [0.4, 0.6], "hybrid_base", False)
    assert {o["other"]: (o["delta"], o["ci95"]) for o in t["compared"]}["hybrid_base"] == (0.0275, [0.0205, 0.0348])
    assert {o["other"] for o in t["compared"]} == set(FIVE) - {"hybrid_tuned"}
    assert rec["tuned_vs_bm25"] == ("On the test split the tuned model alone is level with BM25 (the CI includes 0): "
                                    "recall@10 +1.2 points (95% CI -0.1 to +2.4).")


@pytest.mark.parametrize(("lo", "hi", "says"), [(-0.05, -0.01, "loses to BM25"),
                                                (-0.01, 0.03, "is level with BM25 (the CI includes 0)"),
                                                (0.01, 0.03, "beats BM25")])
def test_the_tuned_model_alone_against_bm25_in_one_plain_sentence(lo, hi, says):
    comparisons = {"tuned-vs-bm25": c((lo + hi) / 2, lo, hi)}
    rec = conclude(None, view(comparisons, "test", ["bm25", "tuned"]), RULE)
    assert rec["tuned_vs_bm25"].startswith(f"On the test split the tuned model alone {says}: recall@10 ")


@pytest.mark.parametrize(("split", "says"), [("test", "the data has no dev split"),
                                             ("dev", "the evaluated split is dev")])
def test_without_a_separate_dev_split_the_choice_is_made_on_the_evaluated_one_and_says_so(split, says):
    rec = conclude(None, view(OBLIQA_DEV, split), RULE)
    assert rec["system"] == "hybrid_base" and rec["split"] == split and "pick" not in rec["test"]
    assert rec["note"] == (f"{says}, so the recommendation is chosen on the {split} split its figures come from: "
                           "no held-out confirmation")
