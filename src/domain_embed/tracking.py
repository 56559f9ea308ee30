"""Experiment tracking (W&B online/offline, or none). Only this module imports wandb.

The HF Trainer logs loss, learning rate, grad norm and dev metrics into the active run itself
(`report_to=["wandb"]`); this module opens that run with the resolved config and adds what the
trainer cannot see: mining statistics, the final metrics table and the plots."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

from domain_embed.config import RootConfig, TrackingConfig
from domain_embed.errors import ConfigError

log = logging.getLogger(__name__)


def trainer_report_to(cfg: TrackingConfig) -> list[str]:
    return ["wandb"] if cfg.backend == "wandb" else []


SWEEP_JOB_TYPE = "sweep_summary"  # the job type of a sweep's summary run, beside its jobs in their group


def _open_run(cfg: TrackingConfig, folder: Path, **init):
    """A W&B run under `folder`, in the configured mode, project and entity; `init`: wandb.init's other arguments."""
    try:
        import wandb
    except ImportError as exc:
        raise ConfigError("tracking=wandb needs wandb, which is not installed: "
                          "pip install 'domain-embed[wandb]' (or use tracking=none)") from exc

    if cfg.mode:
        os.environ["WANDB_MODE"] = cfg.mode
    os.environ.setdefault("WANDB_PROJECT", cfg.project)
    run = wandb.init(project=cfg.project, entity=cfg.entity, dir=str(folder), tags=list(cfg.tags),
                     reinit="finish_previous", **init)
    log.info("W&B run %s (%s mode) in %s", run.id, os.environ.get("WANDB_MODE", "online"), folder)
    return run


class Tracker:
    """A no-op unless `tracking.backend=wandb`. In a sweep every job's run is in the sweep's group, with the last stage
    it runs as its job type and its swept overrides as its name (cli.py sets `tracking.group` and `tracking.name`)."""

    def __init__(self, cfg: RootConfig, run_dir: Path, job_type: str):
        self.cfg = cfg.tracking
        if self.cfg.backend not in ("none", "wandb"):
            raise ConfigError(f"tracking.backend={self.cfg.backend!r}: expected none or wandb")
        self.run = None
        if self.cfg.backend == "wandb":
            self.run = _open_run(self.cfg, run_dir, name=self.cfg.name or run_dir.name, group=self.cfg.group,
                                 job_type=job_type, config=dataclasses.asdict(cfg))

    def log_report(self, report: dict, images: list[Path]) -> None:
        if self.run is None:
            return
        import wandb

        flat = {f"{system}/{metric}": value for system, values in report["metrics"].items()
                for metric, value in values.items()}
        flat.update({f"gap_closed/{m}/{k}": v for m, g in report.get("gap_closed", {}).items()
                     for k, v in g.items() if isinstance(v, float)})
        if "mining" in report:
            flat.update({f"mining/dropped/{rule}": n for rule, n in report["mining"]["dropped_by_rule"].items()})
            flat["mining/train_triplets"] = report["mining"]["split"]["train_rows"]
        flat["cost/corpus_encodes"] = report["cost"]["corpus_encodes"]
        self.run.summary.update(flat)
        systems = list(report["metrics"])
        metrics = sorted({m for v in report["metrics"].values() for m in v})
        table = wandb.Table(columns=["system", *metrics],
                            data=[[s, *[report["metrics"][s].get(m) for m in metrics]] for s in systems])
        self.run.log({"final_metrics": table, **{f"plots/{p.stem}": wandb.Image(str(p)) for p in images
                                                 if p.exists()}})

    def finish(self) -> None:
        """Closes the run: in a multirun every job must get its own W&B run."""
        if self.run is not None:
            self.run.finish()
            self.run = None


def table_rows(records: list[dict]) -> tuple[list[str], list[list]]:
    """Columns and rows of a W&B table from records of one shape: nested dicts become `a/b` columns, lists text."""
    def flat(value, prefix: str = "") -> dict:
        if isinstance(value, dict):
            return {k: v for key, inner in value.items() for k, v in flat(inner, f"{prefix}{key}/").items()}
        return {prefix.rstrip("/"): " ".join(map(str, value)) if isinstance(value, list) else value}

    rows = [flat(r) for r in records]
    columns = list(dict.fromkeys(c for r in rows for c in r))
    return columns, [[r.get(c) for c in columns] for r in rows]


def log_sweep(cfg: TrackingConfig, sweep_dir: Path, tables: dict[str, tuple[list[str], list[list]]],
              images: list[Path]) -> None:
    """A sweep's summary as a run of its own in the jobs' group (`cfg.group`): its tables (name -> columns, rows) and
    plots. A no-op unless `tracking.backend=wandb`."""
    if cfg.backend != "wandb":
        return
    import wandb

    run = _open_run(cfg, sweep_dir, name=f"{SWEEP_JOB_TYPE} {sweep_dir.name}", group=cfg.group, job_type=SWEEP_JOB_TYPE)
    try:
        run.log({**{name: wandb.Table(columns=columns, data=rows) for name, (columns, rows) in tables.items()},
                 **{f"plots/{p.stem}": wandb.Image(str(p)) for p in images if p.exists()}})
    finally:
        run.finish()
