"""PNG plots for the report (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def plot_score_distributions(positive: list[float], negative: list[float], path: Path, queries: int) -> Path:
    """Positive vs mined-negative similarity: overlap means false negatives or too-hard negatives. Counts as the
    report's mining section does: every positive, and each chosen negative once for its query."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.set_title(f"Mined hard negatives vs positives ({queries} queries)", fontsize=10)
    bins = 40
    if positive:
        ax.hist(positive, bins=bins, alpha=0.6, label=f"positives (n={len(positive)})", density=True)
    if negative:
        ax.hist(negative, bins=bins, alpha=0.6, label=f"hard negatives, once per query (n={len(negative)})",
                density=True)
    ax.set_xlabel("base-model cosine similarity to the query")
    ax.set_ylabel("density")
    if positive or negative:
        ax.legend()
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.tight_layout()
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


def plot_training(log_history: list[dict], path: Path) -> Path:
    """Training loss and dev nDCG@10 over steps: where it peaked and whether it was still improving. Both carry
    markers, so a run that logged once still shows its point."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    loss = [(r["step"], r["loss"]) for r in log_history if "loss" in r]
    dev = [(r["step"], r["eval_dev_cosine_ndcg@10"]) for r in log_history if "eval_dev_cosine_ndcg@10" in r]
    ax.set_title(f"fine-tuning: train loss ({len(loss)} logged), dev nDCG@10 ({len(dev)} evaluations)", fontsize=10)
    if loss:
        ax.plot(*zip(*loss, strict=True), color="tab:blue", marker="o", markersize=4, label="train loss")
    ax.set_xlabel("step")
    ax.set_ylabel("train loss", color="tab:blue")
    if dev:
        ax2 = ax.twinx()
        ax2.plot(*zip(*dev, strict=True), color="tab:orange", marker="o", label="dev nDCG@10")
        ax2.set_ylabel("dev nDCG@10", color="tab:orange")
    return _save(fig, path)


def plot_label_curve(sizes: list[int], series: dict[str, list[tuple[float, float, float] | None]],
                     test: dict[str, list[float | None]], bar: float, path: Path, title: str, all_size: int | None
                     ) -> Path:
    """The label-budget curve: gain in points against labelled training queries (log axis), each dev series with its
    95% CI band (`series`: label -> (delta, lo, hi) per size), its test value as an open marker (`test`: the same
    labels), and the adoption bar; the size that is all the queries is marked as such on the axis."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.set_title(title, fontsize=10)
    for (label, points), color in zip(series.items(), ("tab:blue", "tab:orange"), strict=False):
        shown = [(x, p) for x, p in zip(sizes, points, strict=True) if p is not None]
        if not shown:
            continue
        xs = [x for x, _ in shown]
        ax.plot(xs, [p[0] for _, p in shown], color=color, marker="o", label=f"{label} (dev)")
        ax.fill_between(xs, [p[1] for _, p in shown], [p[2] for _, p in shown], color=color, alpha=0.2)
        on_test = [(x, v) for x, v in zip(sizes, test.get(label, []), strict=False) if v is not None]
        if on_test:
            ax.plot(*zip(*on_test, strict=True), linestyle="none", marker="o", markerfacecolor="none", color=color,
                    label=f"{label} (test)")
    ax.axhline(bar, color="tab:red", linestyle="--", linewidth=1, label=f"{bar:g}-point bar")
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xticks(sizes, [f"{x}\n(all)" if x == all_size else str(x) for x in sizes])
    ax.minorticks_off()
    ax.set_xlabel("labelled training queries")
    ax.set_ylabel("gain (points)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_before_after(metrics: dict[str, dict[str, float]], ci95: dict[str, dict[str, list[float]]],
                      names: list[str], path: Path, title: str) -> Path:
    """Grouped bars per metric, one bar per system, with 95% bootstrap CI error bars: overlapping bars are only a
    difference when their intervals say so."""
    import numpy as np

    systems = list(metrics)
    fig, ax = plt.subplots(figsize=(7, 3.8))
    width = 0.8 / max(1, len(systems))
    x = np.arange(len(names))
    for i, system in enumerate(systems):
        values = [metrics[system][n] for n in names]
        errors = [[v - ci95[system][n][0] for v, n in zip(values, names, strict=True)],
                  [ci95[system][n][1] - v for v, n in zip(values, names, strict=True)]]
        bars = ax.bar(x + i * width, values, width, yerr=errors, capsize=3, label=system)
        ax.bar_label(bars, fmt="%.3f", fontsize=7, label_type="center", rotation=90)
    ax.set_xticks(x + width * (len(systems) - 1) / 2, names)
    ax.set_ylim(0, 1)
    ax.set_title(f"{title} (mean, 95% bootstrap CI)", fontsize=10)
    ax.legend()
    return _save(fig, path)


def plot_recall_curves(metrics: dict[str, dict[str, float]], path: Path, title: str) -> Path:
    """Recall@k of every system on one chart, a tick at each evaluated k."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ks: set[int] = set()
    for system, values in metrics.items():
        points = sorted((int(m.split("@")[1]), v) for m, v in values.items() if m.startswith("recall@"))
        ax.plot(*zip(*points, strict=True), marker="o", label=system,
                linestyle="--" if system.startswith("rerank(") else "-")  # a reranker over its first stage
        ks.update(k for k, _ in points)
    ax.set_xscale("log")
    ax.set_xticks(sorted(ks), [str(k) for k in sorted(ks)])
    ax.minorticks_off()
    ax.set_xlabel("k")
    ax.set_ylabel("Recall@k")
    ax.set_title(title, fontsize=10)
    ax.legend()
    return _save(fig, path)


def plot_mrl(mrl: dict[str, dict[str, dict[str, float]]], path: Path, metric: str = "ndcg@10") -> Path:
    """Quality against embedding dimensions: the storage/quality cost curve of Matryoshka truncation."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    dims = sorted(mrl, key=int)
    for system in ("baseline", "tuned"):
        ax.plot([int(d) for d in dims], [mrl[d][system][metric] for d in dims], marker="o", label=system)
    ax.set_xlabel("embedding dimensions")
    ax.set_ylabel(metric)
    ax.legend()
    return _save(fig, path)


def plot_formats(rows: list[dict], path: Path, title: str, metric: str = "ndcg@10") -> Path:
    """Quality against bytes per document, one labelled marker per (dims, precision): the cheapest format that keeps
    the quality is the one to store. Log x, since the formats span 32x in size."""
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for r in rows:
        ax.plot(r["bytes_per_document"], r[metric], marker="o", linestyle="", color="tab:blue")
        ax.annotate(f"{r['precision']}@{r['dims']}", (r["bytes_per_document"], r[metric]), fontsize=7,
                    textcoords="offset points", xytext=(4, 4))
    ax.set_xscale("log")
    ax.margins(x=0.15, y=0.1)  # room for the labels of the outermost markers
    ax.set_xlabel("bytes per document (all its windows)")
    ax.set_ylabel(metric)
    ax.set_title(f"{title}\n{metric} vs bytes per document", fontsize=10)
    return _save(fig, path)


def plot_quality_vs_dims(curves: dict[str, list[dict]], path: Path, metric: str = "ndcg@10") -> Path:
    """One line per candidate model: how much quality each one keeps as its vectors are truncated."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for model, curve in curves.items():
        ax.plot([p["dims"] for p in curve], [p[metric] for p in curve], marker="o", label=model)
    ax.set_xscale("log", base=2)
    ticks = sorted({p["dims"] for curve in curves.values() for p in curve})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("embedding dimensions (first d, re-normalised)")
    ax.set_ylabel(metric)
    if curves:
        ax.legend(fontsize=7)
    return _save(fig, path)
