"""Orders the selected stages (plus any missing upstream ones), skips those whose manifest matches,
and rebuilds the report from whatever the run directory holds."""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

from filelock import FileLock, Timeout

from domain_embed import distributed
from domain_embed.console import CONSOLE
from domain_embed.context import RunContext
from domain_embed.errors import ConfigError
from domain_embed.report.build import write_report
from domain_embed.report.recommend import check_cost_order
from domain_embed.rundir import MANIFEST, stable_hash
from domain_embed.stages import REGISTRY
from domain_embed.tracking import Tracker

log = logging.getLogger(__name__)

# stages whose output depends only on data, base model and their own config: in a sweep, jobs that
# agree on those inputs share one content-addressed copy instead of recomputing it (the reranker too: jobs that vary
# the bi-encoder's training train the same cross-encoder)
SHARED_STAGES = ("audit", "baseline", "mine", "triplets", "reranker")
# stages every rank of a launcher (torchrun, accelerate launch) runs together: training (DDP: the bi-encoder and the
# reranker) and the corpus stages, whose encodes, searches and reranked pairs the ranks split (retrieval.embed,
# retrieval.search, retrieval.rerank); rank 0 alone runs the rest
DISTRIBUTED_STAGES = ("baseline", "mine", "triplets", "finetune", "evaluate", "compare", "reranker", "rerank")


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
    """Runs the plan; returns the report. A stage is redone when forced or when its inputs changed.
    Under a launcher, rank 0 decides and writes everything and runs the audit alone; all ranks run the other
    stages together and return the report rank 0 built."""
    check_cost_order(ctx.cfg.eval.cost_order)  # the report's, read at the end: a typo fails before any stage
    distributed.init_process_group()
    tracker = Tracker(ctx.cfg, ctx.run_dir.root, job_type=plan(list(ctx.cfg.stages))[-1]) \
        if distributed.is_main() else None
    try:
        done_now = _run_stages(ctx)
        return _publish_report(ctx, done_now, tracker)
    finally:
        if tracker is not None:
            tracker.finish()


@distributed.main_only
def _publish_report(ctx: RunContext, done_now: list[str], tracker: Tracker | None) -> dict:
    report = write_report(ctx, ran=done_now)
    tracker.log_report(report, [Path(p) for p in report["plots"]])
    return report


def _run_stages(ctx: RunContext) -> list[str]:
    done_now: list[str] = []
    for name in plan(list(ctx.cfg.stages)):
        if name in DISTRIBUTED_STAGES and distributed.world_size() > 1:
            ran = _run_on_every_rank(ctx, name)
        else:
            ran = distributed.main_only(_run_stage)(ctx, name)
        if ran:
            done_now.append(name)
    return done_now


def _decide(ctx: RunContext, name: str) -> tuple[dict, str, Path | None, bool]:
    """The stage's inputs and key, its shared (sweep) location, and whether it must run now; links a
    finished shared output into the run directory."""
    inputs = REGISTRY[name].inputs(ctx)
    key = stable_hash(inputs)
    forced = ctx.cfg.force and name in ctx.cfg.stages
    shared = ctx.shared_dir / f"{name}-{key[:16]}" if ctx.shared_dir and name in SHARED_STAGES else None
    if shared and not forced and (shared / MANIFEST).exists():
        ctx.run_dir.link_stage(name, shared)
        log.info("stage %s: reusing the sweep's shared output %s", name, shared, extra=CONSOLE)
        return inputs, key, shared, False
    if not forced and not shared and ctx.run_dir.is_done(name, key):
        log.info("stage %s: up to date, skipped (force=true redoes it)", name, extra=CONSOLE)
        return inputs, key, shared, False
    return inputs, key, shared, True


def _run_stage(ctx: RunContext, name: str) -> bool:
    with _shared_stage_lock(ctx, name):
        return _execute(ctx, name, *_decide(ctx, name))


@contextmanager
def _shared_stage_lock(ctx: RunContext, name: str) -> Iterator[None]:
    """Held while deciding and computing a sweep's shared stage. Sweep jobs (parallel local launchers, SLURM) reach
    a shared stage together: one computes it under the lock, the others wait and then find its manifest, so the
    decision is taken (again) only while holding the lock."""
    if not (ctx.shared_dir and name in SHARED_STAGES):
        yield
        return
    ctx.shared_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(ctx.shared_dir / f"{name}-{stable_hash(REGISTRY[name].inputs(ctx))[:16]}.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("stage %s: another job of the sweep is computing it; waiting for it (%s)", name, lock.lock_file,
                 extra=CONSOLE)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _execute(ctx: RunContext, name: str, inputs: dict, key: str, shared: Path | None, needed: bool) -> bool:
    if not needed:
        return False
    log.info("stage %s: running", name)
    t0 = time.perf_counter()
    with ctx.run_dir.stage_output(name, key, inputs, final=shared) as (out, extras):
        REGISTRY[name].run(ctx, out, extras)
    if shared:
        ctx.run_dir.link_stage(name, shared)
    log.info("stage %s: done in %.1fs (%s)", name, time.perf_counter() - t0, REGISTRY[name].does, extra=CONSOLE)
    return True


def _run_on_every_rank(ctx: RunContext, name: str) -> bool:
    """Rank 0 decides (once, under the sweep's lock) and owns the stage output; the others run the same stage into
    a scratch folder that is thrown away. The stage splits its corpus work between the ranks and writes only into
    its output folder; the embedding cache is written by rank 0 (and by each rank, its own shards)."""
    with _shared_stage_lock(ctx, name) if distributed.is_main() else nullcontext():
        decision = distributed.main_only(_decide)(ctx, name)
        needed = decision[3]
        if distributed.is_main():
            _execute(ctx, name, *decision)
        elif needed:
            log.info("stage %s: running (rank %d)", name, distributed.rank())
            with tempfile.TemporaryDirectory(prefix=f"{name}-rank{distributed.rank()}-") as scratch:
                REGISTRY[name].run(ctx, Path(scratch), {})
        distributed.barrier()
    return needed
