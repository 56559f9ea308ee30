"""Hydra entry point: compose the typed config, run the pipeline, turn known errors into one line.

Known errors (bad data, bad config, truncation refused, model not loadable) exit with code 2 and a
single message; the traceback is shown only with `verbose=true` or HYDRA_FULL_ERROR=1."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from domain_embed.config import RootConfig, register_configs
from domain_embed.errors import DomainEmbedError

log = logging.getLogger("domain_embed")

EXIT_USER_ERROR = 2


def _summary_lines(report: dict) -> list[str]:
    lines = [f"report: {report['run']['dir']}/report.md (corpus encodes this run: "
             f"{report['cost']['corpus_encodes']})"]
    for system, values in report["metrics"].items():
        shown = ", ".join(f"{m}={values[m]:.4f}" for m in ("ndcg@10", "recall@10", "mrr@10") if m in values)
        lines.append(f"  {system:>10}: {shown}")
    return lines


@hydra.main(version_base="1.3", config_path="pkg://domain_embed.conf", config_name="config")
def _hydra_main(dcfg: DictConfig) -> float | None:
    from domain_embed.context import RunContext
    from domain_embed.pipeline import run_pipeline

    for noisy in ("faiss.loader", "bm25s", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        cfg: RootConfig = OmegaConf.to_object(dcfg)
        hydra_cfg = HydraConfig.get()
        if cfg.shared_dir is None and hydra_cfg.mode == RunMode.MULTIRUN:
            cfg.shared_dir = str(Path(hydra_cfg.sweep.dir) / "shared")
        report = run_pipeline(RunContext(cfg, cfg.run_dir))
    except (DomainEmbedError, MissingMandatoryValue) as exc:
        if dcfg.get("verbose") or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        log.error("%s: %s", exc.__class__.__name__, exc)
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    for line in _summary_lines(report):
        log.info(line)
    # returned for sweepers (e.g. optuna): the dev metric, so hyperparameters are never tuned on test
    return report.get("training", {}).get("best_dev_ndcg@10")


def main() -> None:
    register_configs()
    _hydra_main()
