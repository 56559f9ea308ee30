"""What the GPU check reports: its rows, the aims a full GPU run is judged against, and the printed table."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from typing import NamedTuple


@dataclass(frozen=True)
class Aim:
    target: float
    unit: str
    at_least: bool = True

    def verdict(self, value: float) -> str:
        met = value >= self.target if self.at_least else value <= self.target
        return f"{'>=' if self.at_least else '<='} {self.target:,g} {self.unit}: {'met' if met else 'MISSED'}"


# one H200 at full sizes (issue 19); --quick and CPU runs are not judged
AIMS = {"encode bf16": Aim(20_000, "passages/s"), "encode fp32": Aim(8_000, "passages/s"),
        "encode busy": Aim(80, "% GPU busy"), "train bf16": Aim(3_000, "samples/s"),
        "search": Aim(1.0, "s", at_least=False), "pipeline": Aim(60, "s", at_least=False)}


class Row(NamedTuple):
    check: str
    result: str
    detail: str
    aim: str = ""


class Skipped(Exception):
    """The check cannot run here (an optional package or the hardware is missing)."""


def judge(ctx: dict, *pairs: tuple[str, float]) -> str:
    """The aims' verdicts on (aim name, value) pairs; nothing where the run is not judged."""
    return "; ".join(AIMS[name].verdict(value) for name, value in pairs) if ctx["judged"] else ""


def table(rows: list[Row]) -> str:
    width = [max(len(r[i]) for r in [Row("check", "result", "", "aim"), *rows]) for i in (0, 1, 3)]
    lines = [f"{'check':<{width[0]}}  {'result':<{width[1]}}  {'aim':<{width[2]}}  detail",
             f"{'-' * width[0]}  {'-' * width[1]}  {'-' * width[2]}  {'-' * 6}"]
    lines += [f"{r.check:<{width[0]}}  {r.result:<{width[1]}}  {r.aim or '-':<{width[2]}}  {r.detail}" for r in rows]
    return "\n".join(lines)


def median_index(seconds: list[float]) -> int:
    """The run whose time is the median (the slower middle one of an even count), so that the split and token
    counts shown are that run's own."""
    return sorted(range(len(seconds)), key=seconds.__getitem__)[len(seconds) // 2]


def last_line(proc: subprocess.CompletedProcess) -> str:
    """The failing command's last words: stderr, else stdout (a crash may print nothing to stderr)."""
    for stream in (proc.stderr, proc.stdout):
        if lines := (stream or "").strip().splitlines():
            return lines[-1][:150]
    return "(no output)"

