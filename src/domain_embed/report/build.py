"""Assembles report.json and report.md from the stage outputs in the run directory.

The report is rebuilt from files after every run, so it always describes what the run directory
really holds, including stages finished by earlier invocations."""

from __future__ import annotations

import dataclasses

from domain_embed.context import RunContext
from domain_embed.report.markdown import render_markdown
from domain_embed.rundir import atomic_write_json, atomic_write_text, package_versions, read_json

_STAGE_ORDER = ("audit", "baseline", "mine", "triplets")


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
    if report["data"]["split_overlap"]:
        report["warnings"].append(f"queries appear in more than one split: {report['data']['split_overlap']}")
    if "triplets" in manifests:
        report["mining"] = read_json(rd.stage_dir("triplets") / "mining_meta.json")
        report["warnings"] += [f"mining: {w}" for w in report["mining"]["warnings"]]
    if data.skips.skipped:
        report["warnings"].append(f"{len(data.skips.skipped)} bad input records were skipped "
                                  "(data.on_error=skip); see data.skipped")
    return report


def write_report(ctx: RunContext, ran: list[str]) -> dict:
    report = build_report(ctx, ran)
    atomic_write_json(ctx.run_dir.root / "report.json", report)
    atomic_write_text(ctx.run_dir.root / "report.md", render_markdown(report))
    return report
