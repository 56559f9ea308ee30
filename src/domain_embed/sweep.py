"""After a Hydra multirun: one table ranking the jobs by dev nDCG@10 (never by test).

Registered as a Hydra callback in conf/config.yaml, so it runs whatever the launcher."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from domain_embed.report.markdown import table
from domain_embed.rundir import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

_SHOWN = ("ndcg@10", "recall@10")


def summarise(sweep_dir: Path) -> dict:
    jobs = []
    for report_path in sorted(sweep_dir.glob("*/report.json")):
        report = json.loads(report_path.read_text())
        overrides_file = report_path.parent / ".hydra" / "overrides.yaml"
        overrides = overrides_file.read_text().strip().splitlines() if overrides_file.exists() else []
        jobs.append({"job": report_path.parent.name,
                     "overrides": [o.removeprefix("- ") for o in overrides],
                     "dev_ndcg@10": report.get("training", {}).get("best_dev_ndcg@10"),
                     "tuned": {m: report["metrics"].get("tuned", {}).get(m) for m in _SHOWN},
                     "stages_run": report["run"]["ran_now"],
                     "corpus_encodes": report["cost"]["corpus_encodes"]})
    jobs.sort(key=lambda j: -(j["dev_ndcg@10"] if j["dev_ndcg@10"] is not None else float("-inf")))
    return {"sweep_dir": str(sweep_dir), "ranked_by": "dev_ndcg@10", "jobs": jobs}


def render(summary: dict) -> str:
    rows = [[str(i + 1), j["job"], " ".join(j["overrides"]),
             f"{j['dev_ndcg@10']:.4f}" if j["dev_ndcg@10"] is not None else "n/a",
             *[f"{j['tuned'][m]:.4f}" if j["tuned"][m] is not None else "n/a" for m in _SHOWN],
             ", ".join(j["stages_run"]) or "none"]
            for i, j in enumerate(summary["jobs"])]
    return (f"# Sweep summary: {summary['sweep_dir']}\n\nRanked by dev nDCG@10 (the split used to choose; "
            "the test columns are for reading, not for choosing).\n\n"
            + table(["rank", "job", "overrides", "dev nDCG@10", *[f"test {m}" for m in _SHOWN], "stages run"], rows)
            + "\n")


class SweepSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        summary = summarise(sweep_dir)
        atomic_write_json(sweep_dir / "sweep_summary.json", summary)
        atomic_write_text(sweep_dir / "sweep_summary.md", render(summary))
        log.info("sweep summary: %s (%d jobs)", sweep_dir / "sweep_summary.md", len(summary["jobs"]))
