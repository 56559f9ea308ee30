"""PNG plots for the report (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def plot_score_distributions(positive: list[float], negative: list[float], path: Path) -> None:
    """Positive vs mined-negative similarity: overlap means false negatives or too-hard negatives."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bins = 40
    if positive:
        ax.hist(positive, bins=bins, alpha=0.6, label=f"positives (n={len(positive)})", density=True)
    if negative:
        ax.hist(negative, bins=bins, alpha=0.6, label=f"hard negatives (n={len(negative)})", density=True)
    ax.set_xlabel("base-model cosine similarity to the query")
    ax.set_ylabel("density")
    if positive or negative:
        ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
