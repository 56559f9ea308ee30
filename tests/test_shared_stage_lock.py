"""Sweep jobs that reach a shared stage at the same time: exactly one computes it, the others wait and reuse it."""

import multiprocessing
import time

from domain_embed import pipeline
from domain_embed.context import RunContext
from domain_embed.stages.base import REGISTRY, Stage


def _slow_stage(counter):
    def run(ctx, out, extras):
        with counter.open("a") as f:
            f.write("computed\n")
        time.sleep(1.0)  # long enough that the other jobs arrive while it runs
        (out / "result.txt").write_text("done")

    return Stage("slow_shared", requires=(), inputs=lambda ctx: {"what": "slow"}, run=run)


def _job(cfg, run_dir, barrier, results):
    barrier.wait()  # all three reach the stage together
    results.put(pipeline._run_stage(RunContext(cfg, run_dir), "slow_shared"))


def test_three_parallel_jobs_compute_one_shared_stage_once(make_config, tmp_path, monkeypatch):
    counter = tmp_path / "computed.txt"
    monkeypatch.setitem(REGISTRY, "slow_shared", _slow_stage(counter))
    monkeypatch.setattr(pipeline, "SHARED_STAGES", (*pipeline.SHARED_STAGES, "slow_shared"))
    cfg = make_config(tmp_path / "job0", f"shared_dir={tmp_path / 'shared'}")
    fork = multiprocessing.get_context("fork")  # the children inherit the registered stage
    barrier, results = fork.Barrier(3), fork.Queue()
    jobs = [fork.Process(target=_job, args=(cfg, tmp_path / f"job{i}", barrier, results)) for i in range(3)]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(timeout=60)
    assert [job.exitcode for job in jobs] == [0, 0, 0]
    assert sorted(results.get(timeout=5) for _ in jobs) == [False, False, True]  # one ran, two reused
    assert counter.read_text() == "computed\n"
    for i in range(3):
        assert (tmp_path / f"job{i}" / "slow_shared" / "result.txt").read_text() == "done"
