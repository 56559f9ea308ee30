"""What every bench script shares: sides run alternately, figures reported one way, the machine named.

The sides alternate as domain_embed.gpu_check.alternate runs them (the GPU check measures the same way); the ratio
is of medians, this package over its peer.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

from domain_embed.gpu_check.alternate import Runs, Side, alternate, peak_rss_mb

__all__ = ["Runs", "Side", "alternate", "machine", "peak_rss_mb", "report"]


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def machine() -> str:
    """One line naming what the figures were measured on, and how busy it was when the run began."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"machine: {platform.node()} | {_cpu_model()} | {os.cpu_count()} cores "
            f"({len(os.sched_getaffinity(0))} usable) | RAM {ram:.1f} GiB | {gpu} | torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads | load avg {os.getloadavg()[0]:.2f}")


def report(rows: list[tuple[str, Runs, Runs]]) -> None:
    """Prints a markdown table, one row per (what, peer, ours): medians [min, max] and the ratio of medians."""
    print("\n| what | peer | peer: median [min, max] | this package: median [min, max] | ratio | peak RSS MB "
          "peer / ours |\n|---|---|---|---|---|---|")
    for what, peer, ours in rows:
        print(f"| {what} | {peer.name} | {peer.figure()} | {ours.figure()} | {ours.median / peer.median:.3f}x | "
              f"{max(peer.peak_rss_mb):,.0f} / {max(ours.peak_rss_mb):,.0f} |")
