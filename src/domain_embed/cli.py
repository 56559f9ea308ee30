"""Hydra entry point: compose the typed config, run the pipeline, turn known errors into one line.

Known errors (bad data, bad config, truncation refused, model not loadable) exit with code 2 and a
single message; the traceback is shown only with `verbose=true` or HYDRA_FULL_ERROR=1."""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from domain_embed import attempts, distributed, multirun, overrides
from domain_embed.config import RootConfig
from domain_embed.console import CONSOLE
from domain_embed.errors import DomainEmbedError
from domain_embed.hydra_setup import register_configs
from domain_embed.sweep import objective

log = logging.getLogger("domain_embed")

EXIT_USER_ERROR = 2
# a run directory or cache that cannot be written is the user's to fix, not a crash to debug
_WRITE_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}


def _fail(message: str) -> None:
    """The message once on the console (the `error:` line) and once in the attempt's log file, then exit 2. A start
    that fails before any stage finished removes the folders it created (attempts.discard_if_nothing_finished)."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
    print(f"error: {message}", file=sys.stderr)
    attempts.discard_if_nothing_finished()
    sys.exit(EXIT_USER_ERROR)


class OutputDirCheck(Callback):
    """Hydra creates the run directory and opens its log file before the task starts: probe it first, so a
    read-only or full location is one line, not a traceback from Hydra's logging set-up."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        attempts.claim(config.hydra.run.dir)
        _probe(Path(config.hydra.run.dir))

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        _probe(Path(config.hydra.sweep.dir))


def _probe(folder: Path) -> None:
    probe = folder / f".write-probe-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        _fail(f"{folder}: cannot write the run directory: {exc.strerror} (set hydra.run.dir to a writable place)")


def unknown_keys(node: DictConfig, prefix: str = "") -> list[str]:
    """Keys of `node` that its dataclass does not declare, as dotted paths. `+key=value` forces a key past
    Hydra's check, and converting to the dataclasses would then drop it silently."""
    typ = OmegaConf.get_type(node)
    known = {f.name for f in dataclasses.fields(typ)} if dataclasses.is_dataclass(typ) else None
    found = []
    for key in node:
        path = f"{prefix}{key}"
        if known is not None and key not in known:
            found.append(path)
            continue
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
            found += unknown_keys(child, path + ".")
    return found


def _summary_lines(report: dict) -> list[str]:
    """The run's last console lines: each system's headline metrics, then the recommendation with the one comparison
    that decided it and where the report is, so that the end of the console says what to use and where to read why."""
    lines = []
    for system, values in report["metrics"].items():
        shown = ", ".join(f"{m}={values[m]:.4f}" for m in ("ndcg@10", "recall@10", "mrr@10") if m in values)
        lines.append(f"  {system:>12}: {shown}")
    rec = report["recommendation"]
    where = f"on {rec['split']}: " if rec.get("split") else ""
    lines.append(f"recommendation: {rec['system'] or 'none'} ({where}{rec['reason']}); report: "
                 f"{report['run']['dir']}/report.md (corpus encodes this run: "
                 f"{report['cost']['corpus_encodes_this_run']})")
    return lines


# libraries whose INFO lines (each dev evaluation's 12 lines, every model load and save) and progress bars drown the
# run's own log; verbose=true keeps them
_LIBRARIES = ("sentence_transformers", "transformers", "datasets", "accelerate", "huggingface_hub", "faiss.loader",
              "bm25s", "httpx", "urllib3")


def _quiet_libraries() -> None:
    """Library loggers to WARNING and library progress bars off (model loads and saves, dataset writes): the console
    shows one bar at a time, the run's own (encodes, training)."""
    import datasets
    from transformers.utils import logging as transformers_logging

    for name in _LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)
    transformers_logging.disable_progress_bar()
    datasets.disable_progress_bars()


@hydra.main(version_base="1.3", config_path="pkg://domain_embed.conf", config_name="config")
def _hydra_main(dcfg: DictConfig) -> float | None:
    from domain_embed.context import RunContext
    from domain_embed.pipeline import run_pipeline

    if not dcfg.get("verbose"):
        _quiet_libraries()
    if unknown := unknown_keys(dcfg):
        _fail(f"unknown config key(s) {', '.join(unknown)}: not in the typed config (check the spelling)")
    log.info("run directory: %s (data: %s, model: %s, budget: %s)", Path(dcfg.run_dir).resolve(),
             dcfg.data.path or f"hub {dcfg.data.hub.name}", dcfg.model.name, dcfg.budget.name, extra=CONSOLE)
    try:
        cfg: RootConfig = OmegaConf.to_object(dcfg)
        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode == RunMode.MULTIRUN:
            cfg.shared_dir = cfg.shared_dir or str(Path(hydra_cfg.sweep.dir) / "shared")
            cfg.tracking.group = multirun.group(hydra_cfg, cfg.tracking.group)
            cfg.tracking.name = cfg.tracking.name or multirun.job_name(hydra_cfg)
        report = run_pipeline(RunContext(cfg, cfg.run_dir))
    except (DomainEmbedError, MissingMandatoryValue) as exc:
        if dcfg.get("verbose") or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        _fail(str(exc))
    except OSError as exc:
        if exc.errno not in _WRITE_ERRNOS or dcfg.get("verbose"):
            raise
        _fail(f"{exc.filename or 'output'}: {exc.strerror}")
    if distributed.is_main():  # every rank holds rank 0's report: it is said once
        for line in _summary_lines(report):
            log.info(line, extra=CONSOLE)
        attempts.promote(Path(cfg.run_dir), f"{HydraConfig.get().job.name}.log")
    # returned for sweepers (e.g. optuna): the value sweep_summary ranks jobs by, never a test figure
    return objective(report)[0]


def main() -> None:
    if problem := overrides.check(sys.argv[1:]):
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    distributed.from_slurm()  # srun's tasks become one run's ranks before Hydra, Accelerate or the Trainer look
    register_configs()
    if not OmegaConf.has_resolver("de.config_groups"):
        OmegaConf.register_new_resolver("de.config_groups", overrides.groups_help)
    _hydra_main()
