"""Assembles report.json and report.md from the stage outputs in the run directory.

The report is rebuilt from files after every run, so it always describes what the run directory
really holds, including stages finished by earlier invocations."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from domain_embed.config import DataConfig, SourceKind
from domain_embed.context import RunContext
from domain_embed.report.card import update_model_card
from domain_embed.report.markdown import metrics_table, render_markdown
from domain_embed.report.plots import plot_before_after, plot_formats, plot_mrl, plot_recall_curves
from domain_embed.report.recommend import Rule, conclude
from domain_embed.rundir import atomic_write_json, atomic_write_text, package_versions, read_json

_STAGE_ORDER = ("audit", "baseline", "compare", "mine", "triplets", "finetune", "evaluate", "reranker", "rerank")
_GAP_METRICS = ("ndcg@10", "recall@10", "mrr@10", "recall@100", "map@10")
# evaluate writes {} for a check it skipped: the report says why, and the key that turns it on
_NOT_RUN = {"mrl": "`training.matryoshka_dims` is empty; set it (e.g. `training.matryoshka_dims=[256,128,64]`) to "
                   "train with MatryoshkaLoss and score base and tuned models at each dimension",
            "ood": "`eval.ood.path` is not set; point it at another domain's BEIR directory to check that the tuned "
                   "model did not forget general retrieval",
            "formats": "`eval.formats.enabled` is false; set `eval.formats.enabled=true` to score the tuned model's "
                       "float32, int8 and binary vectors at each dimension against their bytes per document"}


def build_report(ctx: RunContext, ran: list[str]) -> dict:
    rd = ctx.run_dir
    manifests = {s: m for s in _STAGE_ORDER if (m := rd.manifest(s)) is not None}
    data = ctx.data
    encodes = {s: m.get("cost", {}).get("corpus_encodes", 0) for s, m in manifests.items()}
    report: dict = {
        "run": {"dir": str(rd.root), "stages": list(manifests), "ran_now": ran,
                "model": ctx.cfg.model.name, "budget": ctx.cfg.budget.name, "versions": package_versions(),
                "config": dataclasses.asdict(ctx.cfg)},
        "data": {"source": data.source, "documents": len(data), "queries": len(data.queries),
                 "splits": {s: len(q) for s, q in data.qrels.items()}, "fingerprint": ctx.data_fingerprint,
                 "skipped": data.skips.summary(), "split_overlap": data.split_overlap()},
        "metrics": {}, "ci95": {}, "comparisons": {},
        # what the run directory's outputs cost in all, and what this invocation paid (the stages it ran)
        "cost": {"corpus_encodes": sum(encodes.values()),
                 "corpus_encodes_this_run": sum(encodes.get(s, 0) for s in ran),
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
        _add_scores(report, rd.stage_dir("baseline"), base)
    if "compare" in manifests:
        report["compare"] = read_json(rd.stage_dir("compare") / "compare.json")
    if report["data"]["split_overlap"]:
        report["warnings"].append(f"queries appear in more than one split: {report['data']['split_overlap']}")
    if "triplets" in manifests:
        report["mining"] = read_json(rd.stage_dir("triplets") / "mining_meta.json")
        report["warnings"] += [f"mining: {w}" for w in report["mining"]["warnings"]]
    if "evaluate" in manifests:
        _add_tuned(report, rd.stage_dir("evaluate"))
    if "rerank" in manifests:
        _add_rerank(report, rd.stage_dir("rerank"))
    if "finetune" in manifests:
        log = read_json(rd.stage_dir("finetune") / "train_log.json")
        report["training"] = {k: v for k, v in log.items() if k != "log_history"}
    if data.skips.skipped:
        report["warnings"].append(f"{len(data.skips.skipped)} bad input records were skipped "
                                  "(data.on_error=skip); see data.skipped")
    evaluated = {"split": report.get("eval", {}).get("split"), **{k: report[k] for k in ("metrics", "ci95",
                                                                                         "comparisons")}}
    report["recommendation"] = conclude(report.get("dev"), evaluated, Rule.of(ctx.cfg.eval))
    return report


def _add_scores(report: dict, folder: Path, summary: dict) -> None:
    """A scoring stage's systems, CIs, comparisons and fusions on the evaluated split (`summary`, its metrics.json),
    and in report["dev"] the same on the dev split from its dev/ folder, where it wrote one."""
    for key in ("metrics", "ci95", "comparisons"):
        report[key].update(summary["systems" if key == "metrics" else key])
    _add_hybrid(report, summary)
    if (folder / "dev" / "metrics.json").exists():
        dev = read_json(folder / "dev" / "metrics.json")
        into = report.setdefault("dev", {"split": dev["split"], "n_queries": dev["n_queries"], "metrics": {},
                                         "ci95": {}, "comparisons": {}})
        for key in ("metrics", "ci95", "comparisons"):
            into[key].update(dev["systems" if key == "metrics" else key])


def _add_hybrid(report: dict, summary: dict) -> None:
    """How each hybrid of a stage's metrics.json was fused (settings chosen on dev), or in not_run why it was not
    scored."""
    for name, how in summary.get("hybrid", {}).items():
        if "skipped" in how:
            report.setdefault("not_run", {})[name] = how["skipped"]
        else:
            report.setdefault("hybrid", {})[name] = how


def _add_tuned(report: dict, folder: Path) -> None:
    """Tuned metrics, the gap closed on each metric, and the MRL, OOD and vector-format checks."""
    ev = read_json(folder / "metrics.json")
    _add_scores(report, folder, ev)
    gap = ev["comparisons"]["tuned-vs-baseline"]
    report["gap_closed"] = {m: {k: gap[m][k] for k in ("delta", "relative", "ci95", "p_value")}
                            for m in _GAP_METRICS if m in gap}
    if "tuned-vs-bm25" in ev["comparisons"]:
        report["tuned_vs_bm25"] = {m: ev["comparisons"]["tuned-vs-bm25"][m] for m in _GAP_METRICS
                                   if m in ev["comparisons"]["tuned-vs-bm25"]}
    for name, why in _NOT_RUN.items():
        if (folder / f"{name}.json").exists() and (value := read_json(folder / f"{name}.json")):
            report[name] = value
        else:
            report.setdefault("not_run", {})[name] = why


def _add_rerank(report: dict, folder: Path) -> None:
    """The reranked systems (metrics, CIs, comparisons with every other system) and how they were chosen on dev, or in
    not_run why the stage scored nothing."""
    choice = read_json(folder / "choice.json")
    if "skipped" in choice:
        report.setdefault("not_run", {})["rerank"] = choice["skipped"]
        return
    _add_scores(report, folder, read_json(folder / "metrics.json"))
    report["rerank"] = choice


def rerank_table(report: dict) -> str:
    """Each reranked system under its first stage (the reranker's card: before and after reranking)."""
    firsts = report["rerank"]["depths"]
    names = [n for f in firsts for n in (f, f"rerank({f})") if n in report["metrics"]]
    return metrics_table({"metrics": {n: report["metrics"][n] for n in names},
                          "ci95": {n: report["ci95"].get(n, {}) for n in names}})


def _dataset_name(cfg: DataConfig) -> str:
    """What a reviewer knows the data as: the hub data set (even read from a local copy), else its folder."""
    if cfg.source == SourceKind.hub and cfg.hub.name:
        return cfg.hub.name
    return Path(cfg.path).name if cfg.path else cfg.name


def _plots(report: dict, ctx: RunContext) -> list:
    """Report plots, each titled with the data set, split and query count so it can be read on its own."""
    folder = ctx.run_dir.root / "plots"
    out = []
    if report["metrics"]:
        ev = report["eval"]
        title = f"{_dataset_name(ctx.cfg.data)}: {ev['split']} split, {ev['n_queries']} queries"
        shown = [m for m in ("ndcg@10", "recall@10", "mrr@10", "recall@100")
                 if all(m in values for values in report["metrics"].values())]  # eval.k_values may lack 100
        out.append(plot_before_after(report["metrics"], report["ci95"], shown, folder / "before_after.png", title))
        out.append(plot_recall_curves(report["metrics"], folder / "recall_at_k.png", title))
        if "formats" in report:
            out.append(plot_formats(report["formats"], folder / "formats.png", f"{title}, tuned model"))
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
    reranker = ctx.run_dir.stage_dir("reranker") / "model"
    # a sweep's shared reranker keeps its training card: each job's table is in that job's report
    if "rerank" in report and reranker.exists() and not ctx.run_dir.is_linked("reranker"):
        update_model_card(reranker, rerank_table(report))
    return report
