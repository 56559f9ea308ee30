"""Sides of a comparison run alternately, with each run's wall time and peak RSS: what the GPU check and the bench
scripts (scripts/benchlib.py) measure with.

Each side runs `rounds` times, round-robin (A B A B A B; A B C A B C with a third side), so that neither pays the
first-run costs alone and a drift in machine load falls on all of them. A figure is the median of a side's runs with
its spread (min-max).
"""

from __future__ import annotations

import contextlib
import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Side:
    name: str
    run: Callable[[Any], Any]  # the timed work; gets what `prepare` returned, its return value is kept
    prepare: Callable[[], Any] = lambda: None  # untimed, before every run: a fresh model, an empty or filled cache


@dataclass
class Runs:
    name: str
    seconds: list[float] = field(default_factory=list)
    peak_rss_mb: list[float] = field(default_factory=list)
    results: list[Any] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def figure(self) -> str:
        return f"{self.median:.2f} s [{min(self.seconds):.2f}, {max(self.seconds):.2f}]"


def reset_peak_rss() -> None:
    """Linux: writing 5 to clear_refs resets VmHWM, so each run gets its own peak. A sandbox without it (gVisor)
    keeps the process's peak so far: a run's figure is then an upper bound."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def alternate(*sides: Side, rounds: int = 3) -> dict[str, Runs]:
    """Runs the sides round-robin, `rounds` times each; wall time and peak RSS of every run, by side name."""
    runs = {side.name: Runs(side.name) for side in sides}
    for r in range(rounds):
        for side in sides:
            prepared = side.prepare()
            gc.collect()
            reset_peak_rss()
            t0 = time.perf_counter()
            result = side.run(prepared)
            seconds = time.perf_counter() - t0
            out = runs[side.name]
            out.seconds.append(seconds)
            out.peak_rss_mb.append(peak_rss_mb())
            out.results.append(result)
            del prepared, result
            print(f"round {r + 1}/{rounds} {side.name}: {seconds:.2f} s, peak RSS {out.peak_rss_mb[-1]:,.0f} MB",
                  flush=True)
    return runs
