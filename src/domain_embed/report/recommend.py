"""Which system to deploy, from the paired comparisons the report already holds (no new statistics).

The rule, on `eval.decision_metric` (Recall@10 by default):

    Recommend the cheapest evaluated system that no other evaluated system beats significantly.

- "x beats y": the paired comparison of x and y (either "x-vs-y" or "y-vs-x" in report["comparisons"]) has a 95%
  bootstrap CI that excludes 0 in x's favour; for the tuned model over the base model the gain must also exceed
  `eval.adopt_min_recall_gain` (the article's 5-point rule, which `decide` applies on its own as well).
- Cost order (operational cost: index, encoder, training, two retrievers): bm25 < baseline < tuned < hybrid_base
  < hybrid_tuned; a system not in that list counts as costlier than all of them, in report order.
- A comparison the run did not compute beats nothing: the cheaper system stays and the reason names what is missing.
- Significance is not transitive: when every system is beaten by another, the cheapest one stays and the reason says
  so.

So the recommendation is never significantly beaten by another evaluated system (outside that last case), and a
costlier system wins only by a significant gain.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

COST_ORDER = ("bm25", "baseline", "tuned", "hybrid_base", "hybrid_tuned")
LABELS = {"bm25": "BM25", "baseline": "the base model", "tuned": "the tuned model",
          "hybrid_base": "hybrid BM25 + base model", "hybrid_tuned": "hybrid BM25 + tuned model"}


def significant_gain(delta: float, ci95: Sequence[float], min_gain: float = 0.0) -> bool:
    """The one test every adoption in the report passes: a gain above `min_gain` whose 95% CI excludes 0."""
    return ci95[0] > 0 and delta > min_gain


def _points(delta: float, ci95: Sequence[float]) -> str:
    return f"{delta * 100:+.1f} points (95% CI {ci95[0] * 100:+.1f} to {ci95[1] * 100:+.1f})"


def decide(gap: dict, metric: str, min_gain: float) -> dict:
    """The article's rule for tuned vs base only: adopt when the gain exceeds `min_gain` and its CI excludes 0."""
    g = gap[metric]
    adopt = significant_gain(g["delta"], g["ci95"], min_gain)
    bar = f"{min_gain * 100:g}-point bar"
    if adopt:
        why = f"{metric} gained {_points(g['delta'], g['ci95'])}, above the {bar} with a CI that excludes 0"
    elif g["delta"] <= min_gain:
        why = (f"{metric} changed by {g['delta'] * 100:+.1f} points, not more than the {bar}: keep the base model "
               "for operational simplicity, or get more or better triplets")
    else:
        why = (f"{metric} gained {_points(g['delta'], g['ci95'])}, but the CI includes 0: not significant on this many "
               "queries")
    return {"adopt_tuned": adopt, "metric": metric, "min_gain": min_gain, "reason": why}


def label(system: str | None) -> str:
    return "none yet" if system is None else LABELS.get(system, system)


def _cost(system: str) -> int:
    return COST_ORDER.index(system) if system in COST_ORDER else len(COST_ORDER)


def _min_gain(winner: str, loser: str, min_gain: float) -> float:
    return min_gain if (winner, loser) == ("tuned", "baseline") else 0.0


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


def recommend(systems: Sequence[str], comparisons: dict, metric: str, min_gain: float) -> dict:
    """The system to deploy among `systems` (see the module docstring), why, and the comparisons it rests on."""
    order = sorted(systems, key=_cost)  # stable: unknown systems keep report order
    if not order:
        return {"system": None, "reason": "no retrieval system was evaluated (the baseline stage has not run)",
                "compared": []}
    if len(order) == 1:
        return {"system": order[0], "reason": "the only system evaluated in this run", "compared": []}
    entries = {frozenset(p): e for p in combinations(order, 2) if (e := _entry(comparisons, *p, metric))}

    def beats(x: str, y: str) -> bool:
        e = entries.get(frozenset((x, y)))
        return e is not None and significant_gain(*_gain(e, x), _min_gain(x, y, min_gain))

    beaten_by = {s: [w for w in order if w != s and beats(w, s)] for s in order}
    unbeaten = [s for s in order if not beaten_by[s]]
    chosen = unbeaten[0] if unbeaten else order[0]

    def clause(other: str) -> str:
        """Why `other` is not the recommendation (or, when every system is beaten, what beats `chosen`)."""
        if order.index(other) < order.index(chosen):  # passed over: something beats it
            winner = chosen if chosen in beaten_by[other] else beaten_by[other][0]
            bar = _min_gain(winner, other, min_gain)
            return (f"{winner} beats {other} by {_points(*_gain(entries[frozenset((winner, other))], winner))}"
                    + (f", above the {bar * 100:g}-point bar" if bar else ""))
        e = entries.get(frozenset((other, chosen)))
        if e is None:
            return f"no {other}-vs-{chosen} comparison on {metric} in this run, so the cheaper {chosen} stays"
        delta, ci = _gain(e, other)
        if beats(other, chosen):
            return f"{other} beats {chosen} by {_points(delta, ci)}"
        if beats(chosen, other):
            return f"{chosen} beats {other} by {_points(*_gain(e, chosen))}"
        if ci[0] > 0:  # significant, but short of the article's bar for tuned over base
            return (f"{other} gains {_points(delta, ci)} over {chosen}, not above the "
                    f"{_min_gain(other, chosen, min_gain) * 100:g}-point bar, "
                    f"so the cheaper {chosen} stays")
        return f"{other} vs {chosen}: {_points(delta, ci)}, a CI that includes 0, so the cheaper {chosen} stays"

    why = ("that no other evaluated system beats significantly" if unbeaten else "kept because every evaluated "
           "system is beaten significantly by another (the comparisons are not transitive)")
    reason = (f"the cheapest system (cost order {' < '.join(order)}) {why} on {metric}: "
              + "; ".join(clause(s) for s in order if s != chosen))
    return {"system": chosen, "reason": reason, "compared": list(entries.values())}
