"""After a Hydra multirun: one table ranking the jobs by dev nDCG@10 (never by test).

Registered as a Hydra callback in conf/config.yaml, so it runs whatever the launcher. `objective` is the one value a
sweep ranks jobs by: this table's order and best job, and what `python -m train` returns to the Optuna sweeper."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from domain_embed.multirun import group
from domain_embed.report import curve
from domain_embed.report.markdown import table
from domain_embed.rundir import atomic_write_json, atomic_write_text
from domain_embed.tracking import log_sweep, table_rows

log = logging.getLogger(__name__)

_SHOWN = ("ndcg@10", "recall@10")
DEV = "dev"
RANKED_BY = "dev_ndcg@10"
RULE = "the tuned model's dev nDCG@10, highest first"


def objective(report: dict) -> tuple[float | None, str]:
    """The value a job is ranked by and where it comes from: the tuned model's nDCG@10 on the whole dev split when
    the job evaluated dev (eval.split=dev), else the training-time dev evaluator's best (a sampled corpus); either
    way, never the test split. None: the job trained nothing."""
    if report.get("eval", {}).get("split") == DEV:
        return report["metrics"].get("tuned", {}).get("ndcg@10"), "eval.split=dev (full corpus)"
    return report.get("training", {}).get("best_dev_ndcg@10"), "training dev evaluator"


def _job(report_path: Path) -> dict:
    report = json.loads(report_path.read_text())
    overrides_file = report_path.parent / ".hydra" / "overrides.yaml"
    overrides = overrides_file.read_text().strip().splitlines() if overrides_file.exists() else []
    training = report.get("training", {})
    split = report.get("eval", {}).get("split")
    tuned = {m: report["metrics"].get("tuned", {}).get(m) for m in _SHOWN}
    value, source = objective(report)
    return {"job": report_path.parent.name, "overrides": [o.removeprefix("- ") for o in overrides],
            "eval_split": split, "tuned": tuned, RANKED_BY: value, "dev_source": source,
            # the kept round's score on the run's one training dev set, which this hash names
            "training_dev_set": training.get("dev_set_sha256"),
            "train_seconds": training.get("train_seconds"), "steps": training.get("global_step"),
            "stages_run": report["run"]["ran_now"], "corpus_encodes": report["cost"]["corpus_encodes"]}


def summarise(sweep_dir: Path) -> dict:
    jobs = [_job(path) for path in sorted(sweep_dir.glob("*/report.json"))]
    jobs.sort(key=lambda j: -(j[RANKED_BY] if j[RANKED_BY] is not None else float("-inf")))
    best = jobs[0]["job"] if jobs and jobs[0][RANKED_BY] is not None else None
    return {"sweep_dir": str(sweep_dir), "ranked_by": RANKED_BY, "rule": RULE, "best_job": best, "jobs": jobs}


def _fmt(value: float | None, spec: str = ".4f") -> str:
    return "n/a" if value is None else format(value, spec)


def render(summary: dict) -> str:
    jobs = summary["jobs"]
    common = [o for o in jobs[0]["overrides"] if all(o in j["overrides"] for j in jobs)] if len(jobs) > 1 else []
    rows = [[str(i + 1), j["job"], " ".join(o for o in j["overrides"] if o not in common) or "(none)",
             _fmt(j["dev_ndcg@10"]),
             *[f"{_fmt(j['tuned'][m])} ({j['eval_split']})" for m in _SHOWN], _fmt(j["train_seconds"], ".0f"),
             _fmt(j["steps"], "d"), str(j["corpus_encodes"]), ", ".join(j["stages_run"]) or "none"]
            for i, j in enumerate(jobs)]
    sources = sorted({j["dev_source"] for j in jobs})
    shared = f"Every job: `{' '.join(common)}`.\n\n" if common else ""
    dev_sets = {j["training_dev_set"] for j in jobs if j["dev_source"] == "training dev evaluator"}
    if len(dev_sets) > 1:  # different data, seed or training.dev_* settings: the scores do not compare
        shared += (f"**Warning:** the jobs ranked by the training dev evaluator were scored on {len(dev_sets)} "
                   "different dev sets; their dev nDCG@10 values do not compare.\n\n")
    best = f"**Best job: {summary['best_job']}**" if summary["best_job"] is not None else "No job trained a model"
    return (f"# Sweep summary: {summary['sweep_dir']}\n\nRanked by dev nDCG@10: {summary['rule']} "
            f"({'; '.join(sources)}), the split used to choose and the value the Optuna sweeper maximises; a test "
            f"column is for reading, not for choosing. {best}.\n\n{shared}"
            + table(["rank", "job", "overrides", "dev nDCG@10", *[f"tuned {m} (split)" for m in _SHOWN],
                     "train s", "steps", "corpus encodes", "stages run"], rows)
            + "\n")


class SweepSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        summary = summarise(sweep_dir)
        label_curve = curve.build(sweep_dir)  # a label-budget sweep's curve (+sweep=labels), else None
        if label_curve:
            summary["label_curve"] = label_curve
        atomic_write_json(sweep_dir / "sweep_summary.json", summary)
        atomic_write_text(sweep_dir / "sweep_summary.md", render(summary) + (curve.render(label_curve)
                                                                            if label_curve else ""))
        log_sweep_summary(config, sweep_dir, summary)
        log.info("sweep summary: %s (%d jobs)", sweep_dir / "sweep_summary.md", len(summary["jobs"]))


def log_sweep_summary(config: DictConfig, sweep_dir: Path, summary: dict) -> None:
    """The summary's tables (the jobs; the label curve's rows) and plot, in W&B beside the jobs, in their group."""
    tracking = OmegaConf.to_object(config.tracking)
    tracking.group = group(config.hydra, tracking.group)
    tables = {"sweep_summary": table_rows(summary["jobs"])}
    images = []
    if "label_curve" in summary:
        tables["label_curve"] = table_rows(summary["label_curve"]["rows"])
        images.append(Path(summary["label_curve"]["plot"]))
    log_sweep(tracking, sweep_dir, tables, images)
