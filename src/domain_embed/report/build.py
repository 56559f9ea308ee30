"""Assembles report.json and report.md from the stage outputs in the run directory.

The report is rebuilt from files after every run, so it always describes what the run directory
really holds, including stages finished by earlier invocations."""

from __future__ import annotations

import dataclasses

from domain_embed.context import RunContext
from domain_embed.report.card import update_model_card
from domain_embed.report.markdown import metrics_table, render_markdown
from domain_embed.report.plots import plot_before_after, plot_mrl, plot_recall_curves
from domain_embed.rundir import atomic_write_json, atomic_write_text, package_versions, read_json

_STAGE_ORDER = ("audit", "baseline", "compare", "mine", "triplets", "finetune", "evaluate")
_GAP_METRICS = ("ndcg@10", "recall@10", "mrr@10", "recall@100", "map@10")


def build_report(ctx: RunContext, ran: list[str]) -> dict:
    rd = ctx.run_dir
    manifests = {s: m for s in _STAGE_ORDER if (m := rd.manifest(s)) is not None}
    data = ctx.data
    report: dict = {
        "run": {"dir": str(rd.root), "stages": list(manifests), "ran_now": ran,
                "model": ctx.cfg.model.name, "budget": ctx.cfg.budget.name, "versions": package_versions(),
                "config": dataclasses.asdict(ctx.cfg)},
        "data": {"source": data.source, "documents": len(data), "queries": len(data.queries),
                 "splits": {s: len(q) for s, q in data.qrels.items()}, "fingerprint": ctx.data_fingerprint,
                 "skipped": data.skips.summary(), "split_overlap": data.split_overlap()},
        "metrics": {}, "ci95": {}, "comparisons": {},
        "cost": {"corpus_encodes": sum(m.get("cost", {}).get("corpus_encodes", 0) for m in manifests.values()),
                 "stage_seconds": {s: m["seconds"] for s, m in manifests.items()}},
        "warnings": [],
    }
    if "audit" in manifests:
        report["audit"] = read_json(rd.stage_dir("audit") / "summary.json")
        if report["audit"]["truncated"]["documents"] or report["audit"]["truncated"]["queries"]:
            report["warnings"].append(f"truncation: {report['audit']['truncated']['note']}")
    if "baseline" in manifests:
        base = read_json(rd.stage_dir("baseline") / "metrics.json")
        report["eval"] = {"split": base["split"], "n_queries": base["n_queries"], "backends": base["backends"],
                          "primary_metric": ctx.cfg.eval.primary_metric}
        for key in ("metrics", "ci95", "comparisons"):
            report[key].update(base["systems" if key == "metrics" else key])
    if "compare" in manifests:
        report["compare"] = read_json(rd.stage_dir("compare") / "compare.json")
    if report["data"]["split_overlap"]:
        report["warnings"].append(f"queries appear in more than one split: {report['data']['split_overlap']}")
    if "triplets" in manifests:
        report["mining"] = read_json(rd.stage_dir("triplets") / "mining_meta.json")
        report["warnings"] += [f"mining: {w}" for w in report["mining"]["warnings"]]
    if "evaluate" in manifests:
        _add_tuned(report, rd.stage_dir("evaluate"), ctx)
    if "finetune" in manifests:
        log = read_json(rd.stage_dir("finetune") / "train_log.json")
        report["training"] = {k: v for k, v in log.items() if k != "log_history"}
    if data.skips.skipped:
        report["warnings"].append(f"{len(data.skips.skipped)} bad input records were skipped "
                                  "(data.on_error=skip); see data.skipped")
    return report


def _add_tuned(report: dict, folder, ctx: RunContext) -> None:
    """Tuned metrics, the gap closed on each metric, and the article's adoption rule."""
    ev = read_json(folder / "metrics.json")
    report["metrics"].update(ev["systems"])
    report["ci95"].update(ev["ci95"])
    report["comparisons"].update(ev["comparisons"])
    gap = ev["comparisons"]["tuned-vs-baseline"]
    report["gap_closed"] = {m: {k: gap[m][k] for k in ("delta", "relative", "ci95", "p_value")}
                            for m in _GAP_METRICS if m in gap}
    if "tuned-vs-bm25" in ev["comparisons"]:
        report["tuned_vs_bm25"] = {m: ev["comparisons"]["tuned-vs-bm25"][m] for m in _GAP_METRICS
                                   if m in ev["comparisons"]["tuned-vs-bm25"]}
    report["decision"] = decide(gap, ctx.cfg.eval.decision_metric, ctx.cfg.eval.adopt_min_recall_gain)
    for name in ("mrl", "ood"):
        if (folder / f"{name}.json").exists() and (value := read_json(folder / f"{name}.json")):
            report[name] = value


def decide(gap: dict, metric: str, min_gain: float) -> dict:
    """The article's rule: adopt the tuned model when the Recall gain exceeds 5 points and its CI excludes 0."""
    g = gap[metric]
    lo, hi = g["ci95"]
    adopt = g["delta"] > min_gain and lo > 0
    if adopt:
        why = (f"{metric} gained {g['delta'] * 100:+.1f} points (95% CI {lo * 100:+.1f} to {hi * 100:+.1f}), "
               f"above the {min_gain * 100:.0f}-point bar with a CI that excludes 0")
    elif g["delta"] <= min_gain:
        why = (f"{metric} changed by {g['delta'] * 100:+.1f} points, not more than the {min_gain * 100:.0f}-point "
               "bar: keep the base model for operational simplicity, or get more or better triplets")
    else:
        why = (f"{metric} gained {g['delta'] * 100:+.1f} points but the 95% CI ({lo * 100:+.1f} to "
               f"{hi * 100:+.1f}) includes 0: not significant on this many queries")
    return {"adopt_tuned": adopt, "metric": metric, "min_gain": min_gain, "reason": why}


def _plots(report: dict, ctx: RunContext) -> list:
    folder = ctx.run_dir.root / "plots"
    out = []
    if report["metrics"]:
        out.append(plot_before_after(report["metrics"], ["ndcg@10", "recall@10", "mrr@10", "recall@100"],
                                     folder / "before_after.png"))
        out.append(plot_recall_curves(report["metrics"], folder / "recall_at_k.png"))
    if "mrl" in report:
        out.append(plot_mrl(report["mrl"], folder / "mrl.png"))
    compare_png = ctx.run_dir.stage_dir("compare") / "quality_vs_dims.png"
    if "compare" in report and compare_png.exists():
        out.append(compare_png)
    training_png = ctx.run_dir.stage_dir("finetune") / "training.png"
    if training_png.exists():
        out.append(training_png)
    return out


def write_report(ctx: RunContext, ran: list[str]) -> dict:
    report = build_report(ctx, ran)
    report["plots"] = [str(p) for p in _plots(report, ctx)]
    atomic_write_json(ctx.run_dir.root / "report.json", report)
    atomic_write_text(ctx.run_dir.root / "report.md", render_markdown(report))
    model = ctx.run_dir.stage_dir("finetune") / "model"
    if "tuned" in report["metrics"] and model.exists():
        update_model_card(model, metrics_table(report))
    return report
