"""report.md opens with the recommendation and names what did not run; each plot reads on its own."""

import itertools
import random

import pytest
from matplotlib.container import ErrorbarContainer
from verdicts import agree

from domain_embed.cli import _summary_lines
from domain_embed.config import DataConfig, EvalConfig, HubSourceConfig, SourceKind
from domain_embed.report import plots
from domain_embed.report.build import _dataset_name
from domain_embed.report.markdown import render_markdown
from domain_embed.report.recommend import Rule, conclude, fine_tuned


def report(**extra) -> dict:
    """The smallest report render_markdown accepts, plus the sections under test."""
    return {"run": {"dir": "/run", "stages": ["audit", "baseline"], "ran_now": [], "model": "minilm", "budget": "full",
                    "config": {"training": {"num_negatives": 3, "loss": "mnrl"}}},
            "data": {"source": "beir:/data", "documents": 3, "queries": 2, "splits": {"test": 2}},
            "metrics": {}, "ci95": {}, "comparisons": {}, "cost": {"corpus_encodes": 1}, "warnings": [],
            "recommendation": conclude(None, SCORES, RULE), **extra}


RULE = Rule.of(EvalConfig())
SCORES = {"split": "test", "metrics": {"bm25": {"recall@10": 0.75}, "baseline": {"recall@10": 0.7}},
          "ci95": {"bm25": {"recall@10": [0.7, 0.8]}, "baseline": {"recall@10": [0.65, 0.75]}},
          "comparisons": {"bm25-vs-baseline": {"recall@10": {"delta": 0.05, "ci95": [0.03, 0.07], "p_value": 0.001}}}}


def test_report_md_opens_with_the_recommendation_before_any_table():
    md = render_markdown(report(metrics=SCORES["metrics"], ci95=SCORES["ci95"], eval={"split": "test", "n_queries": 2}))
    lines = md.splitlines()
    assert lines[0].startswith("# domain-embed report") and lines[1] == ""
    assert lines[2] == ("**Recommendation: BM25** (`bm25`), chosen on the test split. The best system without "
                        "fine-tuning is BM25 (`bm25`). No fine-tuned system in this run; bm25 is the cheapest system "
                        "without fine-tuning that no other beats significantly on recall@10. Note: the data has no "
                        "dev split, so the recommendation is chosen on the test split its figures come from: no "
                        "held-out confirmation.")
    assert md.index("**Recommendation") < md.index("|")
    assert ("## Decision\n\nRecommended: `bm25`, chosen on the test split. Cost order (`eval.cost_order`, cheapest "
            "first): bm25 < baseline;") in md
    assert ("**(a) The best system without fine-tuning: bm25**, the cheapest that no other beats significantly on "
            "recall@10 (cost order bm25 < baseline): bm25 beats baseline by +5.0 points (95% CI +3.0 to +7.0).") in md
    assert "(b)" not in md and "Fine-tuning adopted" not in md
    none = report(recommendation=conclude(None, {**SCORES, "metrics": {}, "ci95": {}, "comparisons": {}}, RULE))
    md = render_markdown(none)
    assert md.splitlines()[2] == ("**Recommendation: none yet**. No retrieval system was evaluated (the baseline "
                                  "stage has not run).") and "## Decision" not in md


def test_checks_that_did_not_run_say_so_and_how_to_turn_them_on():
    md = render_markdown(report(not_run={"mrl": "`training.matryoshka_dims` is empty", "ood": "`eval.ood.path` unset"}))
    assert "## Matryoshka dimensions\n\nNot run: `training.matryoshka_dims` is empty." in md
    assert "## Forgetting check (another domain)\n\nNot run: `eval.ood.path` unset." in md
    assert "Matryoshka" not in render_markdown(report())  # evaluate did not run: no claim either way


def test_training_floats_are_rounded_and_mining_shows_mined_and_used_negatives():
    training = {"train_rows": 10, "global_step": 4, "samples_per_second": 12.345,
                "best_dev_ndcg@10": 0.7980940976802945, "dev_queries": 5, "dev_corpus": 20}
    mining = {"parameters": {"range_min": 0, "range_max": 100, "relative_margin": 0.05, "absolute_margin": None,
                             "max_score": None, "num_negatives": 5, "sampling": "top"},
              "dropped_by_rule": {"relative_margin": 7}, "backend": "numpy", "candidates": 50,
              "kept_before_sampling": 20, "negatives_chosen": 15, "pairs_without_negative": 0,
              "split": {"train_rows": 10, "dev_rows": 2, "dev_source": "dev", "dev_rows_dropped_for_leakage": 1}}
    md = render_markdown(report(training=training, mining=mining))
    assert "best dev nDCG@10 0.7981 (5 dev queries" in md and "0.79809" not in md
    assert ("5 negatives mined per pair (top; `mining.num_negatives`), 3 used per training row "
            "(`training.num_negatives`, loss `mnrl`)") in md
    assert "best dev nDCG@10 - (" in render_markdown(report(training={**training, "best_dev_ndcg@10": None}))


def test_the_gap_closed_is_reported_and_decides_nothing_alone():
    gap = {"recall@10": {"delta": 0.06, "relative": 0.1, "ci95": [0.04, 0.08], "p_value": 0.001}}
    md = render_markdown(report(gap_closed=gap))
    assert "## Gap closed by fine-tuning" in md and "It decides nothing alone" in md


DEV = {"hybrid_base-vs-bm25": {"recall@10": {"delta": 0.02, "ci95": [0.01, 0.03], "p_value": 0.001}},
       "hybrid_tuned-vs-hybrid_base": {"recall@10": {"delta": 0.07, "ci95": [0.05, 0.09], "p_value": 0.001}},
       "hybrid_tuned-vs-bm25": {"recall@10": {"delta": 0.09, "ci95": [0.07, 0.11], "p_value": 0.001}}}
SYSTEMS = ("bm25", "hybrid_base", "hybrid_tuned")


def scores(split: str, comparisons: dict) -> dict:
    return {"split": split, "metrics": {s: {"recall@10": 0.61} for s in SYSTEMS},
            "ci95": {s: {"recall@10": [0.55, 0.67]} for s in SYSTEMS}, "comparisons": comparisons}


def test_the_top_paragraph_says_what_fine_tuning_adds_and_whether_test_agrees():
    test = {**DEV, "hybrid_tuned-vs-hybrid_base": {"recall@10": {"delta": 0.03, "ci95": [0.01, 0.05],
                                                                 "p_value": 0.001}}}
    md = render_markdown(report(recommendation=conclude(scores("dev", DEV), scores("test", test), RULE)))
    assert md.split("\n\n")[1] == (
        "**Recommendation: hybrid BM25 + tuned model** (`hybrid_tuned`), chosen on the dev split. The best system "
        "without fine-tuning is hybrid BM25 + base model (`hybrid_base`). Fine-tuning: hybrid_tuned (fine-tuned) vs "
        "hybrid_base (no fine-tuning): recall@10 +7.0 points (95% CI +5.0 to +9.0), above the 5-point bar with a CI "
        "that excludes 0: fine-tuning earns its cost. Dev and test disagree: the same rule on the test split would "
        "pick hybrid_base; the recommendation stays the one chosen on dev.")
    assert ("hybrid_tuned on the test split, reported once: recall@10 0.6100 (95% CI 0.5500 to 0.6700); against "
            "bm25 +9.0 points (95% CI +7.0 to +11.0); against hybrid_base +3.0 points (95% CI +1.0 to +5.0).") in md
    assert "**(b) The best fine-tuned system: hybrid_tuned**, the only one evaluated." in md
    assert "**Fine-tuning adopted** (the article's rule: more than 5 points on recall@10" in md
    agree = render_markdown(report(recommendation=conclude(scores("dev", DEV), scores("test", DEV), RULE)))
    assert "The same rule on the test split picks hybrid_tuned too: dev and test agree." in agree


@pytest.fixture
def figures(monkeypatch) -> list:
    """Every figure a plot function saves, still inspectable after it is written and closed."""
    saved = []
    real = plots._save

    def keep(fig, path):
        saved.append(fig)
        return real(fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    return saved


METRICS = {"baseline": {"recall@1": 0.3, "recall@5": 0.5, "recall@10": 0.6, "ndcg@10": 0.48, "recall@100": 0.8},
           "bm25": {"recall@1": 0.5, "recall@5": 0.7, "recall@10": 0.75, "ndcg@10": 0.65, "recall@100": 0.87},
           "tuned": {"recall@1": 0.52, "recall@5": 0.72, "recall@10": 0.78, "ndcg@10": 0.67, "recall@100": 0.9},
           "hybrid_tuned": {"recall@1": 0.55, "recall@5": 0.75, "recall@10": 0.8, "ndcg@10": 0.7, "recall@100": 0.92}}


def test_before_after_has_a_title_and_bootstrap_ci_error_bars(figures, tmp_path):
    systems = ["baseline", "bm25", "tuned"]
    metrics = {s: METRICS[s] for s in systems}
    ci95 = {s: {m: [v - 0.01 * (i + 1), v + 0.02] for m, v in metrics[s].items()} for i, s in enumerate(systems)}
    path = plots.plot_before_after(metrics, ci95, ["ndcg@10", "recall@10"], tmp_path / "ba.png",
                                   "RegNLP/ObliQA: test split, 2786 queries")
    assert path.stat().st_size > 1000
    ax = figures[-1].axes[0]
    assert ax.get_title() == "RegNLP/ObliQA: test split, 2786 queries (mean, 95% bootstrap CI)"
    bars = [cont for cont in ax.containers if isinstance(cont, ErrorbarContainer)]
    assert len(bars) == len(systems)
    for system, bar in zip(systems, bars, strict=True):
        spans = [y for seg in bar.lines[2][0].get_segments() for y in seg[:, 1]]  # low, high of each error bar
        assert spans == pytest.approx([y for m in ("ndcg@10", "recall@10") for y in ci95[system][m]])


def test_recall_at_k_shows_every_system_with_a_tick_at_each_k(figures, tmp_path):
    plots.plot_recall_curves(METRICS, tmp_path / "r.png", "legal: test split, 10 queries")
    ax = figures[-1].axes[0]
    assert ax.get_title() == "legal: test split, 10 queries"
    assert [line.get_label() for line in ax.get_lines()] == list(METRICS)  # hybrids too
    assert list(ax.get_xticks()) == [1, 5, 10, 100]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "5", "10", "100"]


def test_training_plot_shows_a_single_logged_loss_as_a_point(figures, tmp_path):
    path = plots.plot_training([{"step": 1, "loss": 2.5}], tmp_path / "training.png")  # finetune's call signature
    assert path.exists()
    (loss,) = figures[-1].axes[0].get_lines()
    assert list(loss.get_xdata()) == [1] and list(loss.get_ydata()) == [2.5]
    assert loss.get_marker() == "o" and loss.get_markersize() > 0
    assert "1 logged" in figures[-1].axes[0].get_title()


def test_training_plot_puts_dev_ndcg_on_a_second_axis(figures, tmp_path):
    log = [{"step": 1, "loss": 2.5}, {"step": 2, "loss": 2.0}, {"step": 2, "eval_dev_cosine_ndcg@10": 0.4}]
    plots.plot_training(log, tmp_path / "training.png")
    loss_ax, dev_ax = figures[-1].axes
    assert list(loss_ax.get_lines()[0].get_ydata()) == [2.5, 2.0]
    assert list(dev_ax.get_lines()[0].get_ydata()) == [0.4]


def test_plot_titles_name_the_data_set_a_reviewer_knows():
    obliqa = DataConfig(name="legal", source=SourceKind.hub, path="/bundle/data",
                        hub=HubSourceConfig(name="RegNLP/ObliQA"))
    assert _dataset_name(obliqa) == "RegNLP/ObliQA"  # read from a local copy, still the hub data set
    assert _dataset_name(DataConfig(name="beir", path="/data/scifact")) == "scifact"
    assert _dataset_name(DataConfig(name="beir")) == "beir"


def test_triplet_score_plot_is_titled_and_counts_each_negative_once_per_query(figures, tmp_path):
    from domain_embed.tuning.mining import MinedQuery, MiningResult

    two_positives = MinedQuery("q1", "train", ["d1", "d2"], [0.9, 0.8], ["n1", "n2", "n3"], [0.5, 0.4, 0.3])
    one_positive = MinedQuery("q2", "train", ["d3"], [0.7], ["n4"], [0.2])
    result = MiningResult(queries=[two_positives, one_positive])
    plots.plot_score_distributions(*result.scores(), tmp_path / "scores.png", queries=len(result.queries))
    ax = figures[-1].axes[0]
    assert ax.get_title() == "Mined hard negatives vs positives (2 queries)"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["positives (n=3)", "hard negatives, once per query (n=4)"]  # not 3 + 3 + 1 per pair
    assert result.stats()["negatives_chosen"] == 4  # what report.md's mining section says


def test_every_place_that_states_the_recommendation_agrees_on_random_comparisons():
    """report.json, the top paragraph, the decision section and the console line, read back from the text."""
    rng = random.Random(1)
    systems = ["baseline", "bm25", "tuned", "hybrid_base", "hybrid_tuned", "rerank(hybrid_tuned)"]
    seen = set()
    for _ in range(150):
        comparisons = {}
        for a, b in itertools.combinations(systems, 2):
            lo = rng.choice([-0.08, -0.02, 0.0, 0.01, 0.04, 0.07])
            comparisons[f"{a}-vs-{b}"] = {m: {"delta": lo + 0.02, "ci95": [lo, lo + 0.04], "p_value": 0.01}
                                          for m in ("recall@10", "ndcg@10")}
        split = {"metrics": {s: {"recall@10": 0.5} for s in systems}, "comparisons": comparisons,
                 "ci95": {s: {"recall@10": [0.4, 0.6]} for s in systems}}
        r = report(recommendation=conclude({**split, "split": "dev"}, {**split, "split": "test"}, RULE),
                   cost={"corpus_encodes": 1, "corpus_encodes_this_run": 0})
        system, adopted = agree(r, render_markdown(r), "\n".join(_summary_lines(r)))
        assert adopted == fine_tuned(system)
        seen.add(adopted)
    assert seen == {True, False}  # both branches were read back
