"""Which system to deploy, from the paired comparisons the report already holds (no new statistics).

Two questions, in order, on the dev split (`conclude`):

(a) The best system without fine-tuning: the cheapest untuned system (bm25, baseline, hybrid_base, a reranker over
    one of them) that no other untuned system beats significantly.
(b) Whether fine-tuning earns its cost: the best fine-tuned system (tuned, hybrid_tuned, a reranker over one of them),
    chosen by the same rule among the fine-tuned ones, against (a) on `eval.decision_metric`. It is adopted when it
    gains more than `eval.adopt_min_recall_gain` (the article's 5-point bar) with a 95% CI that excludes 0.

The recommendation is (b)'s system when adopted, else (a)'s: the article's rule is about that choice (fine-tune when
the best you can deploy without it leaves a gap of more than 5 points; within that, keep the simpler system). The gap
the tuned model closes over the base model is reported beside it and decides nothing alone.

- Cost order (`eval.cost_order`, cheapest first) ranks the systems within each question; a reranked system not named
  there comes right after its first stage, any other name last, in report order.
- "x beats y": their paired comparison on the decision metric ("x-vs-y" or "y-vs-x") has a 95% bootstrap CI that
  excludes 0 in x's favour (`significant_gain`, the one test every adoption passes). A comparison the run did not
  compute beats nothing: the cheaper system stays and the reason names what is missing. Significance is not
  transitive: when every candidate is beaten by another, the cheapest stays and the reason says so.
- A reranked system `rerank(X)` is judged on what it can move (a rerank of the top 10 cannot change Recall@10): it is
  a candidate only when it beats X on `eval.primary_metric` by more than `eval.rerank_min_gain` with a CI that
  excludes 0, and that gate is how it and X compare.

`conclude` chooses on the dev split (the hybrids' fusion settings already are), then reports the chosen system's
figures on the evaluated split once, with the system the same rule picks there; without a dev split it chooses on the
evaluated split and says so. Every sentence about the choice (report.md's top paragraph and decision section, the
console line) is rendered from its one result.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations

from domain_embed.config import EvalConfig
from domain_embed.errors import ConfigError

DEV_SPLIT = "dev"

# first stages: label, and whether it is built on this run's fine-tuned model
_FIRST_STAGES = {
    "bm25": ("BM25", False),
    "baseline": ("the base model", False),
    "hybrid_base": ("hybrid BM25 + base model", False),
    "tuned": ("the tuned model", True),
    "hybrid_tuned": ("hybrid BM25 + tuned model", True),
}
_RERANK = re.compile(r"rerank\((?P<first>.+)\)")


@dataclass(frozen=True)
class Rule:
    """The settings every question of the recommendation is answered with (the eval config's report-only part)."""

    metric: str  # eval.decision_metric: "beats" and fine-tuning's bar
    min_gain: float  # eval.adopt_min_recall_gain: fine-tuning's bar over the best system without it
    rerank_metric: str  # eval.primary_metric: a reranked system against its first stage
    rerank_min_gain: float  # eval.rerank_min_gain
    cost_order: tuple[str, ...]  # eval.cost_order

    @classmethod
    def of(cls, e: EvalConfig) -> Rule:
        return cls(e.decision_metric, e.adopt_min_recall_gain, e.primary_metric, e.rerank_min_gain,
                   tuple(e.cost_order))


def first_stage(name: str) -> str | None:
    """X for a reranked system rerank(X), else None."""
    m = _RERANK.fullmatch(name)
    return m["first"] if m else None


def fine_tuned(name: str) -> bool:
    """Whether the system needs this run's fine-tuning (a reranker over a fine-tuned first stage does)."""
    return _FIRST_STAGES.get(first_stage(name) or name, ("", False))[1]


def label(name: str | None) -> str:
    if name is None:
        return "none yet"
    if (first := first_stage(name)) is not None:
        return f"{label(first)}, reranked by a cross-encoder"
    return _FIRST_STAGES.get(name, (name,))[0]


def check_cost_order(order: Sequence[str]) -> None:
    """`eval.cost_order` names each known system at most once (checked before any stage runs)."""
    for name in order:
        if (first_stage(name) or name) not in _FIRST_STAGES:
            raise ConfigError(f"eval.cost_order: unknown system '{name}' (known: {', '.join(_FIRST_STAGES)} and "
                              "rerank(<one of them>))")
    if len(set(order)) < len(order):
        raise ConfigError(f"eval.cost_order={list(order)}: a system is named twice")


def cost_sorted(systems: Sequence[str], order: Sequence[str]) -> list[str]:
    """`systems` cheapest first (see the module docstring); equal places keep report order."""
    def place(name: str) -> tuple[int, int]:
        if name in order:
            return order.index(name), 0
        first = first_stage(name)
        return (order.index(first), 1) if first in order else (len(order), 0)
    return sorted(systems, key=place)


def significant_gain(delta: float, ci95: Sequence[float], min_gain: float = 0.0) -> bool:
    """The one test every adoption in the report passes: a gain above `min_gain` whose 95% CI excludes 0."""
    return ci95[0] > 0 and delta > min_gain


def points(delta: float, ci95: Sequence[float]) -> str:
    return f"{delta * 100:+.1f} points (95% CI {ci95[0] * 100:+.1f} to {ci95[1] * 100:+.1f})"


def _entry(comparisons: Mapping, x: str, y: str, metric: str) -> dict | None:
    """The run's comparison of x and y as stored ("a-vs-b": delta = a - b), whichever way round it was run."""
    for a, b in ((x, y), (y, x)):
        c = comparisons.get(f"{a}-vs-{b}", {}).get(metric)
        if c is not None:
            return {"a": a, "b": b, "metric": metric, "delta": c["delta"], "ci95": list(c["ci95"]), "p": c["p_value"]}
    return None


def _gain(entry: dict, x: str) -> tuple[float, list[float]]:
    """x's gain over the other system of the comparison, with its 95% CI."""
    lo, hi = entry["ci95"]
    return (entry["delta"], [lo, hi]) if entry["a"] == x else (-entry["delta"], [-hi, -lo])


def _pair_rule(x: str, y: str, rule: Rule) -> tuple[str, float]:
    """The metric and minimum gain x and y are compared on: a reranked system and its own first stage on the
    reranker's gate, every other pair on the decision metric."""
    if first_stage(x) == y or first_stage(y) == x:
        return rule.rerank_metric, rule.rerank_min_gain
    return rule.metric, 0.0


def _best(systems: Sequence[str], comparisons: Mapping, rule: Rule) -> dict:
    """The cheapest of `systems` that no other of them beats significantly, why, and the comparisons it rests on."""
    order = cost_sorted(systems, rule.cost_order)
    if not order:
        return {"system": None, "reason": None, "compared": []}  # none of this kind was evaluated
    entries = {frozenset(p): e for p in combinations(order, 2)
               if (e := _entry(comparisons, *p, _pair_rule(*p, rule)[0]))}

    def beats(x: str, y: str) -> bool:
        e = entries.get(frozenset((x, y)))
        return e is not None and significant_gain(*_gain(e, x), _pair_rule(x, y, rule)[1])

    def gains(x: str, y: str) -> str:
        e = entries[frozenset((x, y))]
        return f"{x} beats {y} by {points(*_gain(e, x))}" + (f" on {e['metric']}" if e["metric"] != rule.metric
                                                              else "")

    blocked = {}
    for s in order:
        if (first := first_stage(s)) is None:
            continue
        metric, bar = _pair_rule(s, first, rule)
        e = entries.get(frozenset((s, first)))
        if e is None:
            blocked[s] = f"{s} is not a candidate: no {s}-vs-{first} comparison on {metric} in this run"
        elif not beats(s, first):
            blocked[s] = (f"{s} is not a candidate: it gains {points(*_gain(e, s))} on {metric} over {first}, not "
                          f"above the reranker's {bar * 100:g}-point bar with a CI that excludes 0")
    candidates = [s for s in order if s not in blocked]
    compared = list(entries.values())
    if not candidates:
        return {"system": None, "reason": "; ".join(blocked.values()), "compared": compared}
    if len(candidates) == 1:
        why = "the only one evaluated" if len(order) == 1 else "the only candidate"
        return {"system": candidates[0], "reason": "; ".join([why, *blocked.values()]), "compared": compared}
    beaten_by = {s: [w for w in candidates if w != s and beats(w, s)] for s in candidates}
    unbeaten = [s for s in candidates if not beaten_by[s]]
    chosen = unbeaten[0] if unbeaten else candidates[0]

    def clause(other: str) -> str:
        """Why `other` is not the choice (or, when every candidate is beaten, what beats `chosen`)."""
        if candidates.index(other) < candidates.index(chosen):  # passed over: something beats it
            return gains(chosen if chosen in beaten_by[other] else beaten_by[other][0], other)
        metric = _pair_rule(other, chosen, rule)[0]
        e = entries.get(frozenset((other, chosen)))
        if e is None:
            return f"no {other}-vs-{chosen} comparison on {metric} in this run, so the cheaper {chosen} stays"
        if beats(other, chosen):
            return gains(other, chosen)
        if beats(chosen, other):
            return gains(chosen, other)
        return f"{other} vs {chosen}: {points(*_gain(e, other))}, a CI that includes 0, so the cheaper {chosen} stays"

    why = ("the cheapest that no other beats significantly" if unbeaten else "the cheapest, kept because every one is "
           "beaten significantly by another (the comparisons are not transitive)")
    reason = (f"{why} on {rule.metric} (cost order {' < '.join(order)}): "
              + "; ".join([clause(s) for s in candidates if s != chosen] + list(blocked.values())))
    return {"system": chosen, "reason": reason, "compared": compared}


def decide(untuned: str | None, tuned: str | None, comparisons: Mapping, rule: Rule) -> dict:
    """Question (b): does fine-tuning's best system `tuned` earn its cost over `untuned`, the best system without it?
    The article's bar: a gain above `rule.min_gain` on `rule.metric` whose CI excludes 0. `reason` is the one
    comparison that decided it."""
    bar = f"the {rule.min_gain * 100:g}-point bar"
    out = {"adopt": False, "system": tuned, "over": untuned, "metric": rule.metric, "min_gain": rule.min_gain,
           "delta": None, "ci95": None}
    if tuned is None:
        return out | {"reason": "no fine-tuned system was a candidate in this run"}
    if untuned is None:
        return out | {"reason": "no system without fine-tuning was evaluated, so fine-tuning cannot be weighed"}
    e = _entry(comparisons, tuned, untuned, rule.metric)
    if e is None:
        return out | {"reason": f"no {tuned}-vs-{untuned} comparison on {rule.metric} in this run: fine-tuning "
                                f"cannot show it clears {bar}"}
    delta, ci = _gain(e, tuned)
    adopt = significant_gain(delta, ci, rule.min_gain)
    head = f"{tuned} (fine-tuned) vs {untuned} (no fine-tuning): {rule.metric} {points(delta, ci)}"
    if adopt:
        why = f"{head}, above {bar} with a CI that excludes 0: fine-tuning earns its cost"
    elif delta <= rule.min_gain:
        why = f"{head}, not more than {bar}: keep {untuned}, which needs no fine-tuning"
    else:
        why = f"{head}, above {bar} but with a CI that includes 0: keep {untuned}, which needs no fine-tuning"
    return out | {"adopt": adopt, "delta": delta, "ci95": ci, "reason": why}


def recommend(systems: Sequence[str], comparisons: Mapping, rule: Rule) -> dict:
    """Questions (a) and (b) on one split's comparisons, and the recommendation they give."""
    untuned = _best([s for s in systems if not fine_tuned(s)], comparisons, rule)
    tuned = _best([s for s in systems if fine_tuned(s)], comparisons, rule)
    decision = decide(untuned["system"], tuned["system"], comparisons, rule)
    chosen = decision["system"] if decision["adopt"] else untuned["system"]
    if not systems:
        reason = "no retrieval system was evaluated (the baseline stage has not run)"
    elif tuned["system"] is None and untuned["system"] is not None:  # nothing fine-tuned to weigh: (a) decided it
        none = "no fine-tuned system in this run" if tuned["reason"] is None else \
            f"no fine-tuned system is a candidate ({tuned['reason']})"
        reason = (f"{none}; {untuned['system']} is the cheapest system without fine-tuning that no other beats "
                  f"significantly on {rule.metric}")
    else:
        reason = decision["reason"]
    return {"system": chosen, "reason": reason, "cost_order": cost_sorted(systems, rule.cost_order),
            "untuned": untuned, "fine_tuned": tuned, "decision": decision,
            "compared": untuned["compared"] + tuned["compared"]}


def _versus_bm25(scores: Mapping, metric: str) -> str | None:
    """The plain sentence on the tuned model alone against BM25, on `scores`' split."""
    e = _entry(scores["comparisons"], "tuned", "bm25", metric)
    if e is None:
        return None
    delta, ci = _gain(e, "tuned")
    verdict = ("loses to BM25" if ci[1] < 0 else "beats BM25" if ci[0] > 0
               else "is level with BM25 (the CI includes 0)")
    return f"On the {scores['split']} split the tuned model alone {verdict}: {metric} {points(delta, ci)}."


def conclude(dev: Mapping | None, test: Mapping, rule: Rule) -> dict:
    """The recommendation chosen on `dev`, then reported once on `test` (the evaluated split). Each of `dev`, `test`:
    {"split", "metrics" (system -> metric -> mean), "ci95" (system -> metric -> [lo, hi]), "comparisons"} as a stage's
    metrics.json holds them; `dev` None: no dev split apart from the evaluated one, so the choice is made on `test`
    and the note says so. Returns report.json's "recommendation"."""
    chosen_on = dev or test
    rec = recommend(list(chosen_on["metrics"]), chosen_on["comparisons"], rule) | {"split": chosen_on["split"]}
    if dev is None and test["metrics"]:
        rec["note"] = (("the evaluated split is dev" if test["split"] == DEV_SPLIT else "the data has no dev split")
                       + f", so the recommendation is chosen on the {test['split']} split its figures come from: "
                       "no held-out confirmation")
    s, metric = rec["system"], rule.metric
    if s is not None and s in test["metrics"]:
        rec["test"] = {"split": test["split"], "metric": metric, "mean": test["metrics"][s][metric],
                       "ci95": test["ci95"][s][metric],
                       "compared": [{"other": o, "delta": d, "ci95": ci}
                                    for o in test["metrics"] if o != s
                                    and (e := _entry(test["comparisons"], s, o, metric))
                                    for d, ci in [_gain(e, s)]]}
        if dev is not None:
            pick = recommend(list(test["metrics"]), test["comparisons"], rule)["system"]
            rec["test"].update(pick=pick, agrees=pick == s)
    if (sentence := _versus_bm25(test, metric)) is not None:
        rec["tuned_vs_bm25"] = sentence
    return rec
