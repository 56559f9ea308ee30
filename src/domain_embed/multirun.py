"""What a job knows of the Hydra multirun it belongs to, for tracking: the sweep it is part of (its W&B group, shared
with the sweep summary) and the overrides that set it apart from the other jobs (its W&B name)."""

from __future__ import annotations

from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

SAVED_SWEEP = "multirun.yaml"  # the sweep's own config, which Hydra's basic sweeper saves before the first job


def group(hydra_cfg: DictConfig, tracking_group: str | None) -> str:
    """The W&B group of every job of a sweep and of its summary: `tracking.group` if set, else the sweep directory."""
    return tracking_group or str(hydra_cfg.sweep.dir)


def swept_keys(hydra_cfg: DictConfig) -> set[str]:
    """The keys the sweep varies: those of `hydra.sweeper.params` (a preset such as +sweep=labels) and those given
    several values on the command line (`a=1,2`, read from the sweep's saved config)."""
    keys = set((hydra_cfg.sweeper.get("params") or {}).keys())
    saved = Path(hydra_cfg.sweep.dir) / SAVED_SWEEP
    if saved.exists():
        task = list(OmegaConf.load(saved).hydra.overrides.task)
        keys |= {o.key_or_group for o in OverridesParser.create().parse_overrides(task) if o.is_sweep_override()}
    return keys


def job_name(hydra_cfg: DictConfig) -> str:
    """The job's own values of the swept keys (`data.max_train_queries=125`); its number when none is known."""
    keys = swept_keys(hydra_cfg)
    own = [o for o in hydra_cfg.overrides.task if o.lstrip("+~").split("=", 1)[0] in keys]
    return " ".join(own) or f"job {hydra_cfg.job.num}"
