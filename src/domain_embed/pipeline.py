"""Orders the selected stages (plus any missing upstream ones), skips those whose manifest matches,
and rebuilds the report from whatever the run directory holds."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from domain_embed.context import RunContext
from domain_embed.errors import ConfigError
from domain_embed.report.build import write_report
from domain_embed.rundir import MANIFEST, stable_hash
from domain_embed.stages import REGISTRY
from domain_embed.tracking import Tracker

log = logging.getLogger(__name__)

# stages whose output depends only on data, base model and their own config: in a sweep, jobs that
# agree on those inputs share one content-addressed copy instead of recomputing it
SHARED_STAGES = ("audit", "baseline", "mine", "triplets")


def plan(selected: list[str]) -> list[str]:
    """Selected stages and their upstream stages, in dependency order."""
    unknown = [s for s in selected if s not in REGISTRY]
    if unknown:
        raise ConfigError(f"unknown stage(s) {unknown}; available: {sorted(REGISTRY)}")
    order: list[str] = []

    def visit(name: str) -> None:
        for dep in REGISTRY[name].requires:
            visit(dep)
        if name not in order:
            order.append(name)

    for name in selected:
        visit(name)
    return order


def run_pipeline(ctx: RunContext) -> dict:
    """Runs the plan; returns the report. A stage is redone when forced or when its inputs changed."""
    tracker = Tracker(ctx.cfg, ctx.run_dir.root, name=ctx.run_dir.root.name)
    try:
        done_now = _run_stages(ctx)
        report = write_report(ctx, ran=done_now)
        tracker.log_report(report, [Path(p) for p in report["plots"]])
    finally:
        tracker.finish()
    return report


def _run_stages(ctx: RunContext) -> list[str]:
    done_now: list[str] = []
    for name in plan(list(ctx.cfg.stages)):
        stage = REGISTRY[name]
        inputs = stage.inputs(ctx)
        key = stable_hash(inputs)
        forced = ctx.cfg.force and name in ctx.cfg.stages
        shared = ctx.shared_dir / f"{name}-{key[:16]}" if ctx.shared_dir and name in SHARED_STAGES else None
        if shared and not forced and (shared / MANIFEST).exists():
            ctx.run_dir.link_stage(name, shared)
            log.info("stage %s: reusing the sweep's shared output %s", name, shared)
            continue
        if not forced and not shared and ctx.run_dir.is_done(name, key):
            log.info("stage %s: up to date, skipped (force=true redoes it)", name)
            continue
        log.info("stage %s: running", name)
        t0 = time.perf_counter()
        with ctx.run_dir.stage_output(name, key, inputs, final=shared) as (out, extras):
            stage.run(ctx, out, extras)
        if shared:
            ctx.run_dir.link_stage(name, shared)
        log.info("stage %s: done in %.1fs", name, time.perf_counter() - t0)
        done_now.append(name)
    return done_now
