"""The label-budget curve of a sweep over `data.max_train_queries` (`+sweep=labels`): per size, the domain gap closed
(tuned vs base) and the recommendation's decision on fine-tuning, each on dev with its 95% CI, their test figures
once per job, a plot, and one sentence naming the smallest size whose fine-tuning clears the bar on dev.

Everything is read from what each job wrote (report.json): no statistic is recomputed here, and the decision is the
one the job's recommendation rule took (`job_decision`), whatever that rule was."""

from __future__ import annotations

import json
from pathlib import Path

from domain_embed.report.markdown import table
from domain_embed.report.plots import plot_label_curve
from domain_embed.report.recommend import points

DEV = "dev"
PLOT = "label_curve.png"
GAP = ("tuned", "baseline")  # the domain gap closed: the tuned model against the base model it started from


def gain(report: dict, split: str, a: str, b: str, metric: str) -> dict | None:
    """a's gain over b on `split` ({"delta", "ci95"}, fractions) from the job's stored paired comparison, whichever
    way round it was run; None when the job did not compare them there."""
    scores = report if report.get("eval", {}).get("split") == split else report.get(DEV)
    if scores is None or scores.get("split", split) != split:
        return None
    for x, y, sign in ((a, b, 1), (b, a, -1)):
        if (c := scores["comparisons"].get(f"{x}-vs-{y}", {}).get(metric)) is not None:
            lo, hi = c["ci95"]
            return {"delta": sign * c["delta"], "ci95": [lo, hi] if sign == 1 else [-hi, -lo]}
    return None


def job_decision(report: dict) -> dict | None:
    """What the job's recommendation decided on fine-tuning (report.json's `recommendation.decision`, made by
    report/recommend.py): adopted or not, on which split, metric and bar, and the gain of fine-tuning's best system
    over the best system without it, with its CI. None where the job weighed no fine-tuned system against an untuned
    one."""
    rec = report.get("recommendation") or {}
    d = rec.get("decision")
    if d is None or d.get("system") is None or d.get("over") is None:
        return None
    return {"adopt": d["adopt"], "split": rec["split"], "metric": d["metric"], "min_gain": d["min_gain"],
            "fine_tuned": d["system"], "untuned": d["over"],
            "gain": gain(report, rec["split"], d["system"], d["over"], d["metric"]), "reason": d["reason"]}


def _row(path: Path) -> dict:
    report = json.loads(path.read_text())
    config = report["run"]["config"]
    metric, mining = config["eval"]["decision_metric"], config["mining"]
    labelled = sum(n for s, n in report["data"]["splits"].items()
                   if s in mining["splits"] and s != mining["dev_split"])
    n = config["data"].get("max_train_queries")
    evaluated = report.get("eval", {}).get("split")
    decision = job_decision(report)
    held = (decision["fine_tuned"], decision["untuned"]) if decision else GAP
    return {"job": path.parent.name, "max_train_queries": n, "labelled_queries": labelled if n is None else
            min(n, labelled), "all": n is None or n >= labelled, "metric": metric,
            "train_triplets": report.get("mining", {}).get("split", {}).get("train_rows"),
            "gap_dev": gain(report, DEV, *GAP, metric), "decision": decision, "test_split": evaluated,
            "gap_test": gain(report, evaluated, *GAP, metric) if evaluated != DEV else None,
            "decision_test": gain(report, evaluated, *held, metric) if evaluated != DEV else None}


def build(sweep_dir: Path) -> dict | None:
    """The curve over the sweep's finished jobs, smallest size first, its sentence and plot; None unless some job
    sampled its training queries (not a label-budget sweep)."""
    rows = [_row(p) for p in sorted(sweep_dir.glob("*/report.json"))]
    if not any(r["max_train_queries"] is not None for r in rows):
        return None
    rows.sort(key=lambda r: (r["labelled_queries"], r["all"]))
    return {"metric": rows[0]["metric"], "rows": rows, "sentence": sentence(rows),
            "plot": str(_plot(rows, sweep_dir / PLOT))}


def sentence(rows: list[dict]) -> str:
    """The smallest size whose fine-tuning clears the bar on the split the decisions were taken on, or that none
    does."""
    decided = [r for r in rows if r["decision"]]
    if not decided:
        return "No job reached a decision on fine-tuning (none ran the evaluate stage)."
    d = decided[0]["decision"]
    where, bar = f"on {d['split']}", f"{d['min_gain'] * 100:g}-point bar"

    def size(r: dict) -> str:
        return f"{r['labelled_queries']} labelled queries" + (" (all)" if r["all"] else "")

    def what(r: dict) -> str:
        g, dec = r["decision"]["gain"], r["decision"]
        shown = points(g["delta"], g["ci95"]) if g else "a gain the job did not store"
        return f"{dec['fine_tuned']} over {dec['untuned']}, {dec['metric']} {shown}"

    clears = [r for r in decided if r["decision"]["adopt"]]
    if not clears:
        return (f"No size clears the {bar} {where}: at {size(decided[-1])}, {what(decided[-1])}; fine-tuning does not "
                "earn its cost on this data at these sizes.")
    first = clears[0]
    out = f"The smallest size whose fine-tuning clears the {bar} {where} is {size(first)}: {what(first)}."
    misses = [r for r in decided if r["labelled_queries"] > first["labelled_queries"] and not r["decision"]["adopt"]]
    if misses:
        out += f" Larger sizes that do not: {', '.join(size(r) for r in misses)} (read the CIs: the curve is noisy)."
    return out


def _series(rows: list[dict]) -> dict[str, list[dict | None]]:
    """The plotted comparisons by label: the gap closed, and the decision's own when it held other systems."""
    pairs = {(r["decision"]["fine_tuned"], r["decision"]["untuned"]) for r in rows if r["decision"]}
    if pairs <= {GAP}:
        return {"tuned vs baseline (gap closed; the decision)": [r["gap_dev"] for r in rows]}
    label = "{} vs {} (decision)".format(*next(iter(pairs))) if len(pairs) == 1 else "best fine-tuned vs best untuned"
    return {"tuned vs baseline (gap closed)": [r["gap_dev"] for r in rows],
            label: [r["decision"]["gain"] if r["decision"] else None for r in rows]}


def _plot(rows: list[dict], path: Path) -> Path:
    dev = _series(rows)
    tests = [[r["gap_test"] for r in rows], [r["decision_test"] for r in rows]]
    in_points = {label: [(g["delta"] * 100, g["ci95"][0] * 100, g["ci95"][1] * 100) if g else None for g in gains]
                 for label, gains in dev.items()}
    on_test = {label: [g["delta"] * 100 if g else None for g in gains]
               for label, gains in zip(dev, tests, strict=False)}
    bar = next((r["decision"]["min_gain"] * 100 for r in rows if r["decision"]), 5.0)
    everything = next((r["labelled_queries"] for r in rows if r["all"]), None)
    return plot_label_curve([r["labelled_queries"] for r in rows], in_points, on_test, bar, path,
                            f"What fine-tuning gains ({rows[0]['metric']}) by labelled training queries\n"
                            f"dev: lines, 95% CI bands; {rows[0]['test_split']}: open markers", everything)


def _cell(g: dict | None) -> str:
    return "n/a" if g is None else points(g["delta"], g["ci95"])


def render(curve: dict) -> str:
    """The sweep summary's label-budget section (markdown)."""
    rows = [[str(r["labelled_queries"]) + (" (all)" if r["all"] else ""), str(r["train_triplets"]),
             _cell(r["gap_dev"]),
             (f"{r['decision']['fine_tuned']} vs {r['decision']['untuned']}: {_cell(r['decision']['gain'])}"
              if r["decision"] else "n/a"),
             ("adopt" if r["decision"]["adopt"] else "no") if r["decision"] else "n/a",
             _cell(r["gap_test"]), _cell(r["decision_test"]), r["job"]] for r in curve["rows"]]
    test = curve["rows"][0]["test_split"]
    return (f"\n## Label budget: {curve['metric']} by labelled training queries\n\n{curve['sentence']}\n\n"
            + table(["labelled queries", "train triplets", "gap closed (tuned vs base), dev",
                     "the decision's comparison, dev", "decision (dev)", f"gap closed, {test}",
                     f"the decision's comparison, {test}", "job"], rows)
            + f"\n\nDev chooses; {test} is read once per job. ![label curve]({PLOT})\n")
