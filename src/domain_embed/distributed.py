"""Rank helpers for multi-process runs (`torchrun`, `accelerate launch`, `srun`): who may write, who waits, who does
what.

Fine-tuning is data-parallel (the HF Trainer runs DDP); the corpus stages run on every rank too, and split
their corpus encodes and searches between the ranks (`share`, `gather`). Every write into the run directory
(manifests, reports, W&B summaries), and every decision that all ranks must agree on, happens on global rank 0
while the other ranks wait (`main_only`). The process group is joined at the start of the run, before the Trainer
would create it, so those waits are possible from the first stage on. Without a launcher every helper is a no-op:
rank 0 of a world of 1. Under `srun` with one task per GPU and no other launcher, `from_slurm` turns SLURM's task
variables into the launcher variables torch.distributed, Accelerate and the HF Trainer read.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import time
from collections.abc import Callable
from datetime import timedelta
from typing import ParamSpec, TypeVar

import torch
import torch.distributed as dist

from domain_embed.errors import ConfigError, DomainEmbedError

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

# ranks may wait hours for one another (rank 0's audit alone, a slower rank's corpus shards, rank 0 assembling a
# large cache entry): the collectives' usual 10-30 minute timeout would kill them, so the gloo waits get hours
# (DOMAIN_EMBED_DIST_TIMEOUT_H overrides)
TIMEOUT = timedelta(hours=float(os.environ.get("DOMAIN_EMBED_DIST_TIMEOUT_H", "6")))
# NCCL only carries training's collectives: a hung one must free the GPUs soon. The HF Trainer's own default
# (ddp_timeout), which it would use had it created the group
NCCL_TIMEOUT = timedelta(minutes=30)

_POLL_S = 0.5  # how often a rank waiting in `gather` calls its `while_waiting` (rank 0's progress bar)

_wait_group: list = []  # the gloo group that waits run on (cached; empty until first needed)
_solo: list[None] = []  # non-empty while rank 0 runs a `main_only` block alone: no collective may start there


class RankFailedError(DomainEmbedError):
    """Rank 0 failed in a block the other ranks were waiting for: they stop with its message."""


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def world_size() -> int:
    return dist.get_world_size() if _initialized() else _env_int("WORLD_SIZE", 1)


def rank() -> int:
    """Global rank: the process group's when joined, else the launcher's RANK, else 0."""
    return dist.get_rank() if _initialized() else _env_int("RANK", 0)


def local_rank() -> int:
    return _env_int("LOCAL_RANK", 0)


def is_main() -> bool:
    return rank() == 0


_LAUNCHER_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK")  # set by torchrun and accelerate launch
_DEFAULT_PORT = 29500  # torchrun's


def first_host(nodelist: str) -> str:
    """The first host of SLURM's compressed node list (`node[01-04,07],gpu2` -> `node01`), as `scontrol show
    hostnames` would give it first: the ranks' rendezvous, found without scontrol."""
    first = re.match(r"[^,\[]*(?:\[[^\]]*\][^,\[]*)*", nodelist.strip()).group(0)
    return re.sub(r"\[([^],-]*)[^]]*\]", r"\1", first)


def from_slurm() -> bool:
    """Under `srun` (SLURM_PROCID set, more than one task) and no torchrun or accelerate variables: set RANK,
    LOCAL_RANK, WORLD_SIZE, MASTER_ADDR (the node list's first host) and MASTER_PORT (from SLURM_JOB_ID, so two jobs
    on one node do not collide) from SLURM's, before anything reads them, so the tasks of one `srun` form one run.
    Variables already set win. A batch script's own shell is no task of a step: run the package under srun there
    (scripts/slurm_train.sbatch). Returns whether it did."""
    env = os.environ
    tasks = int(env.get("SLURM_STEP_NUM_TASKS", env.get("SLURM_NTASKS", "1")))
    if "SLURM_PROCID" not in env or tasks <= 1 or any(name in env for name in _LAUNCHER_VARS):
        return False
    nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    job = env.get("SLURM_JOB_ID")
    env["RANK"], env["WORLD_SIZE"] = env["SLURM_PROCID"], str(tasks)
    env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
    env.setdefault("MASTER_ADDR", first_host(nodes) if nodes else "127.0.0.1")
    env.setdefault("MASTER_PORT", str(20000 + int(job) % 40000 if job and job.isdigit() else _DEFAULT_PORT))
    return True


def init_process_group() -> bool:
    """Joins the launcher's process group when WORLD_SIZE > 1 (NCCL with CUDA, else gloo; MASTER_ADDR/PORT
    from the launcher). Accelerate and the HF Trainer reuse a group that already exists. Returns whether
    the run is distributed."""
    if world_size() <= 1:
        return False
    if not _initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(cuda_device())
        # gloo carries the waits too when it is the default group; NCCL never does (see _group)
        dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=NCCL_TIMEOUT if cuda else TIMEOUT)
        log.info("joined the process group: rank %d of %d (%s)", rank(), world_size(), dist.get_backend())
    return True


def cuda_device() -> int:
    """This rank's GPU among the visible ones. Launchers such as SLURM or some k8s operators show each task
    only its own GPU (CUDA_VISIBLE_DEVICES per task), so LOCAL_RANK may be 3 where one GPU is visible.
    Accelerate picks the same GPU (LOCAL_RANK modulo the count) but wraps round where this refuses: two
    ranks would share a GPU."""
    count, local = torch.cuda.device_count(), local_rank()
    if count == 1:
        return 0
    if local < count:
        return local
    raise ConfigError(f"LOCAL_RANK={local} but this process sees {count} GPU(s) (CUDA_VISIBLE_DEVICES="
                      f"{os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}): give each process its own GPU")


def warn_one_gpu(count: int) -> None:
    """Training without a launcher keeps to one GPU (see `training_arguments`): say how to use them all."""
    log.warning("%d GPUs are visible but no launcher started this run: training on one, without nn.DataParallel. "
                "For all of them: accelerate launch --config_file conf/accelerate/multi_gpu.yaml --num_processes %d "
                "-m train ...", count, count)


def _group():
    """The group waits run on: the default one when it is gloo; otherwise a gloo twin, so that a rank
    waiting for rank 0 holds no GPU collective (and no NCCL watchdog) for hours."""
    if dist.get_backend() == "gloo":
        return None
    if not _wait_group:
        _wait_group.append(dist.new_group(backend="gloo", timeout=TIMEOUT))
    return _wait_group[0]


def together() -> bool:
    """Whether every rank of a launch runs this code at once, so that work can be split between them: joined,
    more than one rank, and not inside a `main_only` block (where rank 0 runs alone and a collective would hang)."""
    return _initialized() and dist.get_world_size() > 1 and not _solo


def share(n: int) -> range:
    """This rank's contiguous part of `n` work items when the ranks run `together` (the first ranks get the
    smaller parts), else all of them."""
    if not together():
        return range(n)
    ranks, me = dist.get_world_size(), rank()
    return range(me * n // ranks, (me + 1) * n // ranks)


def gather(part: Callable[[], T], *, while_waiting: Callable[[], None] | None = None) -> list[T]:
    """Runs this rank's `part` and returns every rank's result in rank order (`[part()]` unless `together`).

    The ranks wait for each other on the gloo wait group, never on NCCL: parts may take hours and differ in
    length. `while_waiting` is called about every `_POLL_S` seconds meanwhile (rank 0's progress bar). A rank whose
    part fails makes every rank raise (that rank its own error, the others RankFailedError with its message) instead of
    leaving them in a collective that never completes."""
    if not together():
        return [part()]
    failure, outcome = None, [None, None]  # [result, error message]
    try:
        outcome[0] = part()
    except BaseException as exc:
        failure, outcome[1] = exc, f"{exc.__class__.__name__}: {exc}"
    arrived = dist.barrier(group=_group(), async_op=True)
    while while_waiting is not None and not arrived.is_completed():
        while_waiting()
        time.sleep(_POLL_S)
    arrived.wait()
    outcomes: list = [None] * dist.get_world_size()
    dist.all_gather_object(outcomes, outcome, group=_group())
    if failure is not None:
        raise failure
    for other, (_, error) in enumerate(outcomes):
        if error is not None:
            raise RankFailedError(f"rank {other} failed: {error}")
    return [result for result, _ in outcomes]


def barrier() -> None:
    if _initialized() and dist.get_world_size() > 1:
        dist.barrier(group=_group())


def main_only(fn: Callable[P, T]) -> Callable[P, T]:
    """Decorator: the call runs on rank 0 only and every rank returns rank 0's (picklable) result once it is
    done: how rank 0 decides for all. If it raises on rank 0, the other ranks raise RankFailedError with its
    message instead of waiting for a barrier that never comes. Inside it (and outside a launch) it is a plain call,
    and the code it runs splits no work (`together` is false there)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        if not together():
            return fn(*args, **kwargs)
        outcome: list = [None, None]  # [result, error message]
        failure = None
        if is_main():
            _solo.append(None)
            try:
                outcome[0] = fn(*args, **kwargs)
            except BaseException as exc:
                failure = exc
                outcome[1] = f"{exc.__class__.__name__}: {exc}"
            finally:
                _solo.pop()
        dist.broadcast_object_list(outcome, src=0, group=_group())
        if failure is not None:
            raise failure
        if outcome[1] is not None:
            raise RankFailedError(f"rank 0 failed in {fn.__name__}: {outcome[1]}")
        return outcome[0]

    return wrapper
