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


class Tracker:
    """A no-op unless `tracking.backend=wandb`."""

    def __init__(self, cfg: RootConfig, run_dir: Path, name: str):
        self.cfg = cfg.tracking
        if self.cfg.backend not in ("none", "wandb"):
            raise ConfigError(f"tracking.backend={self.cfg.backend!r}: expected none or wandb")
        self.run = None
        if self.cfg.backend == "wandb":
            try:
                import wandb
            except ImportError as exc:
                raise ConfigError("tracking=wandb needs wandb, which is not installed: "
                                  "pip install 'domain-embed[wandb]' (or use tracking=none)") from exc

            if self.cfg.mode:
                os.environ["WANDB_MODE"] = self.cfg.mode
            os.environ.setdefault("WANDB_PROJECT", self.cfg.project)
            self.run = wandb.init(project=self.cfg.project, entity=self.cfg.entity, name=name, dir=str(run_dir),
                                  tags=list(self.cfg.tags), config=dataclasses.asdict(cfg), reinit="finish_previous")
            log.info("W&B run %s (%s mode) in %s", self.run.id, os.environ.get("WANDB_MODE", "online"), run_dir)

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
