"""Which system to deploy, from the paired comparisons the report already holds (no new statistics).

Every system's metadata lives here (`system`): its cost, its label, its untuned counterpart and what it is built on.

- Cost order (operational cost: index, encoder, training, two retrievers): bm25 < baseline < tuned < hybrid_base
  < hybrid_tuned; then `rerank(<first stage>)` (a cross-encoder over a first stage's list), costlier than every
  first stage and ordered among themselves by their first stage; then any other name, in report order.
- Fine-tuning must earn its cost. A system built by fine-tuning in this run has an untuned counterpart it must beat
  by more than `eval.adopt_min_recall_gain` (the article's 5-point rule) with a 95% CI that excludes 0:
  tuned -> baseline, hybrid_tuned -> hybrid_base, and rerank(X) -> X when its cross-encoder was fine-tuned in this
  run (`tuned_rerankers`). A system is *adoptable* only when it and everything it is built on clear their bars: its
  gates are those of what it contains (hybrid_tuned contains tuned; rerank(X) contains X), then its own. So every
  system containing the tuned model (tuned, hybrid_tuned, rerank(tuned), rerank(hybrid_tuned)) needs tuned over
  baseline to clear the bar, which is `decide`'s test: the decision and the recommendation cannot contradict.
  A gate whose comparison the run did not compute fails.

The rule, on `eval.decision_metric` (Recall@10 by default):

    Recommend the cheapest adoptable system that no other adoptable system beats significantly.

- "x beats y": the paired comparison of x and y (either "x-vs-y" or "y-vs-x" in the comparisons) has a 95%
  bootstrap CI that excludes 0 in x's favour.
- A comparison the run did not compute beats nothing: the cheaper system stays and the reason names what is missing.
- Significance is not transitive: when every adoptable system is beaten by another, the cheapest one stays and the
  reason says so.

`conclude` chooses on the dev split (the hybrids' fusion settings already are), then reports the chosen system's
figures on the evaluated split once, with the system the same rule would pick there; without a dev split it chooses
on the evaluated split and says so.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations

DEV_SPLIT = "dev"


@dataclass(frozen=True)
class System:
    name: str
    label: str
    cost: tuple[int, int]  # sort key: (tier, rank within it); equal keys keep report order
    counterpart: str | None  # the same system without this run's fine-tuning, when it has any of its own
    contains: tuple[str, ...]  # the systems it is built on, whose gates it inherits

    def gates(self, tuned_rerankers: Collection[str] = ()) -> list[tuple[str, str]]:
        """(fine-tuned system, untuned counterpart) pairs that must each clear the bar for this system to be
        adoptable: those of what it contains first, then its own."""
        inherited = [g for part in self.contains for g in system(part, tuned_rerankers).gates(tuned_rerankers)]
        return inherited + ([(self.name, self.counterpart)] if self.counterpart else [])

    @property
    def uses_tuned_model(self) -> bool:
        return self.name == "tuned" or any(system(p).uses_tuned_model for p in self.contains)


# first stages in cost order: label, untuned counterpart, the systems each contains
_FIRST_STAGES = {
    "bm25": ("BM25", None, ()),
    "baseline": ("the base model", None, ()),
    "tuned": ("the tuned model", "baseline", ()),
    "hybrid_base": ("hybrid BM25 + base model", None, ()),
    "hybrid_tuned": ("hybrid BM25 + tuned model", "hybrid_base", ("tuned",)),
}
_RERANK = re.compile(r"rerank\((?P<first>.+)\)")


def system(name: str, tuned_rerankers: Collection[str] = ()) -> System:
    """A system's metadata; `tuned_rerankers`: the rerank(...) systems whose cross-encoder this run fine-tuned."""
    if name in _FIRST_STAGES:
        text, counterpart, contains = _FIRST_STAGES[name]
        return System(name, text, (0, list(_FIRST_STAGES).index(name)), counterpart, contains)
    m = _RERANK.fullmatch(name)
    if m and m["first"] in _FIRST_STAGES:
        first = system(m["first"])
        return System(name, f"{first.label}, reranked by a cross-encoder", (1, first.cost[1]),
                      m["first"] if name in tuned_rerankers else None, (m["first"],))
    return System(name, name, (2, 0), None, ())


def label(name: str | None) -> str:
    return "none yet" if name is None else system(name).label


def significant_gain(delta: float, ci95: Sequence[float], min_gain: float = 0.0) -> bool:
    """The one test every adoption in the report passes: a gain above `min_gain` whose 95% CI excludes 0."""
    return ci95[0] > 0 and delta > min_gain


def points(delta: float, ci95: Sequence[float]) -> str:
    return f"{delta * 100:+.1f} points (95% CI {ci95[0] * 100:+.1f} to {ci95[1] * 100:+.1f})"


def decide(gap: dict, metric: str, min_gain: float) -> dict:
    """The article's rule for tuned vs base only: adopt when the gain exceeds `min_gain` and its CI excludes 0."""
    g = gap[metric]
    adopt = significant_gain(g["delta"], g["ci95"], min_gain)
    bar = f"{min_gain * 100:g}-point bar"
    if adopt:
        why = f"{metric} gained {points(g['delta'], g['ci95'])}, above the {bar} with a CI that excludes 0"
    elif g["delta"] <= min_gain:
        why = (f"{metric} changed by {g['delta'] * 100:+.1f} points, not more than the {bar}: keep the base model "
               "for operational simplicity, or get more or better triplets")
    else:
        why = (f"{metric} gained {points(g['delta'], g['ci95'])}, but the CI includes 0: not significant on this many "
               "queries")
    return {"adopt_tuned": adopt, "metric": metric, "min_gain": min_gain, "reason": why}


def _entry(comparisons: dict, x: str, y: str, metric: str) -> dict | None:
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


def _blocked(name: str, comparisons: dict, metric: str, min_gain: float, tuned_rerankers: Collection[str]
             ) -> str | None:
    """Why `name` is not adoptable (its first gate that fails), or None when every gate clears the bar."""
    for tuned, untuned in system(name, tuned_rerankers).gates(tuned_rerankers):
        e = _entry(comparisons, tuned, untuned, metric)
        built_on = "" if tuned == name else f"it is built on {tuned}, and "
        if e is None:
            return f"{name} is not adoptable: {built_on}no {tuned}-vs-{untuned} comparison on {metric} in this run"
        if not significant_gain(*_gain(e, tuned), min_gain):
            return (f"{name} is not adoptable: {built_on}{tuned} gains {points(*_gain(e, tuned))} over {untuned}, "
                    f"not above the {min_gain * 100:g}-point bar for fine-tuning with a CI that excludes 0")
    return None


def recommend(systems: Sequence[str], comparisons: dict, metric: str, min_gain: float,
              tuned_rerankers: Collection[str] = ()) -> dict:
    """The system to deploy among `systems` (see the module docstring), why, and the comparisons it rests on;
    `tuned_rerankers`: the rerank(...) systems whose cross-encoder this run fine-tuned."""
    order = sorted(systems, key=lambda s: system(s).cost)  # stable: equal costs keep report order
    if not order:
        return {"system": None, "reason": "no retrieval system was evaluated (the baseline stage has not run)",
                "compared": []}
    entries = {frozenset(p): e for p in combinations(order, 2) if (e := _entry(comparisons, *p, metric))}
    blocked = {s: why for s in order if (why := _blocked(s, comparisons, metric, min_gain, tuned_rerankers))}
    candidates = [s for s in order if s not in blocked]
    if not candidates:
        return {"system": None, "reason": "no evaluated system is adoptable: " + "; ".join(blocked.values()),
                "compared": list(entries.values())}
    if len(order) == 1:
        return {"system": order[0], "reason": "the only system evaluated in this run", "compared": []}

    def beats(x: str, y: str) -> bool:
        e = entries.get(frozenset((x, y)))
        return e is not None and significant_gain(*_gain(e, x))

    beaten_by = {s: [w for w in candidates if w != s and beats(w, s)] for s in candidates}
    unbeaten = [s for s in candidates if not beaten_by[s]]
    chosen = unbeaten[0] if unbeaten else candidates[0]

    def clause(other: str) -> str:
        """Why `other` is not the recommendation (or, when every system is beaten, what beats `chosen`)."""
        if candidates.index(other) < candidates.index(chosen):  # passed over: something beats it
            winner = chosen if chosen in beaten_by[other] else beaten_by[other][0]
            return f"{winner} beats {other} by {points(*_gain(entries[frozenset((winner, other))], winner))}"
        e = entries.get(frozenset((other, chosen)))
        if e is None:
            return f"no {other}-vs-{chosen} comparison on {metric} in this run, so the cheaper {chosen} stays"
        if beats(other, chosen):
            return f"{other} beats {chosen} by {points(*_gain(e, other))}"
        if beats(chosen, other):
            return f"{chosen} beats {other} by {points(*_gain(e, chosen))}"
        return (f"{other} vs {chosen}: {points(*_gain(e, other))}, a CI that includes 0, so the cheaper {chosen} "
                "stays")

    why = ("that no other adoptable system beats significantly" if unbeaten else "kept because every adoptable "
           "system is beaten significantly by another (the comparisons are not transitive)")
    reason = (f"the cheapest adoptable system (cost order {' < '.join(order)}) {why} on {metric}: "
              + "; ".join([clause(s) for s in candidates if s != chosen] + list(blocked.values())))
    return {"system": chosen, "reason": reason, "compared": list(entries.values())}


def _versus_bm25(scores: Mapping, metric: str) -> str | None:
    """The plain sentence on the tuned model alone against BM25, on `scores`' split."""
    e = _entry(scores["comparisons"], "tuned", "bm25", metric)
    if e is None:
        return None
    delta, ci = _gain(e, "tuned")
    verdict = ("loses to BM25" if ci[1] < 0 else "beats BM25" if ci[0] > 0
               else "is level with BM25 (the CI includes 0)")
    return f"On the {scores['split']} split the tuned model alone {verdict}: {metric} {points(delta, ci)}."


def conclude(dev: Mapping | None, test: Mapping, metric: str, min_gain: float,
             tuned_rerankers: Collection[str] = ()) -> dict:
    """The recommendation chosen on `dev`, then reported once on `test` (the evaluated split), and the decision on
    the tuned model, which agrees with it by construction. Each of `dev`, `test`: {"split", "metrics" (system ->
    metric -> mean), "ci95" (system -> metric -> [lo, hi]), "comparisons"} as a stage's metrics.json holds them;
    `dev` None: no dev split apart from the evaluated one, so the choice is made on `test` and the reason says so.

    Returns {"recommendation": ..., "decision": ... (only where the tuned model was compared with the base one)}."""
    chosen_on = dev or test
    rec = recommend(list(chosen_on["metrics"]), chosen_on["comparisons"], metric, min_gain, tuned_rerankers)
    rec["split"] = chosen_on["split"]
    if dev is None and test["metrics"]:
        rec["note"] = (("the evaluated split is dev" if test["split"] == DEV_SPLIT else "the data has no dev split")
                       + f", so the recommendation is chosen on the {test['split']} split its figures come from: "
                       "no held-out confirmation")
    s = rec["system"]
    if s is not None and s in test["metrics"]:
        rec["test"] = {"split": test["split"], "metric": metric, "mean": test["metrics"][s][metric],
                       "ci95": test["ci95"][s][metric],
                       "compared": [{"other": o, "delta": d, "ci95": ci}
                                    for o in test["metrics"] if o != s
                                    and (e := _entry(test["comparisons"], s, o, metric))
                                    for d, ci in [_gain(e, s)]]}
        if dev is not None:
            pick = recommend(list(test["metrics"]), test["comparisons"], metric, min_gain, tuned_rerankers)["system"]
            rec["test"].update(pick=pick, agrees=pick == s)
    if (sentence := _versus_bm25(test, metric)) is not None:
        rec["tuned_vs_bm25"] = sentence
    out = {"recommendation": rec}
    if (e := _entry(chosen_on["comparisons"], "tuned", "baseline", metric)) is not None:
        delta, ci = _gain(e, "tuned")
        d = decide({metric: {"delta": delta, "ci95": ci}}, metric, min_gain) | {"split": chosen_on["split"]}
        if d["adopt_tuned"] and not (s is not None and system(s, tuned_rerankers).uses_tuned_model):
            d["adopt_tuned"] = False
            d["reason"] += f", but the recommendation, {label(s)}, does not use the tuned model"
        out["decision"] = d
    return out
