"""Stage `rerank`: the cross-encoder of stage `reranker` re-scores the first stages' top documents (systems
`rerank(<first stage>)`).

Each first stage's depth and weight (the reranker's share of a per-query min-max mix of its score with the first
stage's; weight 0 is the first stage alone, always tried) are chosen on the dev split by `eval.primary_metric` from
the same scored pairs, and so is the best reranked system; the evaluated split is scored once, each first stage at
its chosen depth and weight (none at weight 0). Long documents are scored through their best
window by the base model, as in training. Under a launcher the ranks split the (query, document) pairs to score, in
the very blocks one process would score, so the results are a single process's; rank 0 alone measures the latency.

Writes rerank/metrics.json, per_query.json, ranking_rerank-<first stage>.npz (the dev split's under rerank/dev/) and
rerank/choice.json (the dev grid, the choices, the reranker's provenance, the latency measured here)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from domain_embed import devices, distributed
from domain_embed.context import RunContext
from domain_embed.errors import ConfigError
from domain_embed.retrieval.evaluate import DEV_SPLIT, SystemResult
from domain_embed.retrieval.metrics import compute_metrics
from domain_embed.retrieval.rerank import PairScorer, candidates, latency_ms, rerank
from domain_embed.rundir import atomic_write_json, read_json
from domain_embed.stages.base import Stage, register
from domain_embed.stages.baseline import ranking_file, read_per_query, split_dir, write_results
from domain_embed.stages.first_stage import window_text
from domain_embed.stages.reranker import SCORING_ONLY, load_reranker, not_run

log = logging.getLogger(__name__)

SOURCES = ("evaluate", "baseline")  # stages whose rankings a first stage is read from, in this order


def system_name(first_stage: str) -> str:
    return f"rerank({first_stage})"


def _inputs(ctx: RunContext) -> dict:
    r = ctx.cfg.rerank
    inputs = {s: ctx.run_dir.manifest(s)["key"] for s in (*SOURCES, "reranker")}
    inputs.update(rerank={k: getattr(r, k) for k in (*SCORING_ONLY, "max_length", "batch_size")},
                  device=ctx.cfg.device)
    return inputs


def _check(ctx: RunContext) -> None:
    r = ctx.cfg.rerank
    if not r.depths or min(r.depths) < 1:
        raise ConfigError(f"rerank.depths={list(r.depths)}: expected one or more depths >= 1")
    if not r.weights or not all(0 <= w <= 1 for w in r.weights):
        raise ConfigError(f"rerank.weights={list(r.weights)}: expected one or more weights in [0, 1] (the reranker's "
                          "share of the score; 0, the first stage alone, is always tried)")
    if not r.first_stages:
        raise ConfigError("rerank.first_stages is empty: name the systems to rerank (e.g. [bm25,tuned,hybrid_tuned])")


class _Split:
    """One split's queries, the first stages' rankings on it, and the pair scorer of its (query, window) texts."""

    def __init__(self, ctx: RunContext, split: str, model):
        self.split = split
        self.qids, texts, self.qrels = ctx.data.split(split)
        self.scorer = PairScorer(model, texts, window_text(ctx, texts), ctx.cfg.rerank.batch_size)
        self.folders = {s: split_dir(ctx.run_dir.stage_dir(s), split, ctx) for s in SOURCES}
        self.ids = np.asarray(ctx.data.corpus_ids, dtype=object)

    def ranking(self, system: str) -> tuple[np.ndarray, np.ndarray] | None:
        for folder in self.folders.values():
            if (folder / ranking_file(system)).exists():
                stored = np.load(folder / ranking_file(system))
                return stored["indices"], stored["scores"]
        return None

    def reference(self) -> dict:
        """Per-query values of every system the earlier stages scored on this split."""
        out = {}
        for folder in reversed(self.folders.values()):  # evaluate's wins where both scored a system
            for name in read_json(folder / "per_query.json")["systems"]:
                out[name] = read_per_query(folder, name)
        return out

    def result(self, first: str, ranking: tuple[np.ndarray, np.ndarray], depth: int, weight: float,
               k_values: list[int], backend: str) -> SystemResult:
        indices, first_scores = ranking
        if weight > 0:  # the first stage alone needs no pair scored
            self.scorer.score(candidates(indices, depth))
        idx, scores = rerank(indices, self.scorer.scores, depth, first_scores, weight)
        ranked = [self.ids[row[row >= 0]].tolist() for row in idx]
        return SystemResult(system_name(first), compute_metrics(ranked, self.qids, self.qrels, k_values), idx, scores,
                            backend)


def choose_on_dev(grid: list[dict]) -> tuple[dict[str, dict], str]:
    """Per first stage, the (depth, weight) with the best dev value, preferring on a tie the cheaper: weight 0 (the
    first stage alone, no pair scored), then the smaller depth, then the smaller weight; and the first stage whose
    choice is best on dev (the first listed on a tie)."""
    chosen: dict[str, dict] = {}
    for g in sorted(grid, key=lambda g: (g["weight"] > 0, g["depth"], g["weight"])):
        if g["first_stage"] not in chosen or g["value"] > chosen[g["first_stage"]]["value"]:
            chosen[g["first_stage"]] = g
    best = max(chosen, key=lambda f: chosen[f]["value"])  # max keeps the first of equal values
    return {f: {"depth": g["depth"], "weight": g["weight"]} for f, g in chosen.items()}, best


def _grid(dev: _Split, firsts: dict, r, e, backend: str, reference: dict) -> list[dict]:
    """Dev `eval.primary_metric` of every (first stage, depth, weight); weight 0 once per first stage (depth 0: it
    reorders nothing). Every pair is scored once, at the deepest depth, whatever the number of weights."""
    grid = []
    for first, rankings in firsts.items():
        alone = reference[first].mean()[e.primary_metric]
        tries = [(0, 0.0)] + [(d, w) for d in sorted(set(r.depths)) for w in sorted(set(r.weights)) if w > 0]
        for depth, weight in tries:  # deeper than the stored ranking (eval.k_values, eval.hybrid.depth): all of it
            value = dev.result(first, rankings[DEV_SPLIT], depth, weight, e.k_values, backend).metrics.mean()
            grid.append({"first_stage": first, "depth": depth, "weight": weight, "value": value[e.primary_metric],
                         "first_stage_value": alone})
    return grid


def _run(ctx: RunContext, out: Path, extras: dict) -> None:
    _check(ctx)
    r, e = ctx.cfg.rerank, ctx.cfg.eval
    if why := not_run(ctx):
        log.warning("rerank not run: %s", why)
        atomic_write_json(out / "choice.json", {"skipped": why})
        return
    model, reranker = load_reranker(ctx)
    before = ctx.embedder.stats.corpus_encodes
    dev, test = (_Split(ctx, s, model) for s in (DEV_SPLIT, e.split))
    backend = f"cross-encoder({reranker['path']})"
    firsts, missing = {}, {}
    for first in r.first_stages:
        rankings = {s.split: s.ranking(first) for s in (dev, test)}
        if any(v is None for v in rankings.values()):
            missing[first] = "no ranking of it on both the dev and the evaluated split (not scored by this run)"
        else:
            firsts[first] = rankings
    if not firsts:
        raise ConfigError(f"rerank.first_stages={list(r.first_stages)}: none was scored by this run ({missing})")
    dev_ref = dev.reference()
    grid = _grid(dev, firsts, r, e, backend, dev_ref)
    chosen, best = choose_on_dev(grid)
    log.info("rerank: (depth, weight) chosen on dev %s; best on dev %s", chosen, system_name(best))
    for s in (dev, test):
        results = [s.result(f, firsts[f][s.split], chosen[f]["depth"], chosen[f]["weight"], e.k_values, backend)
                   for f in firsts]
        reference = dev_ref if s is dev else s.reference()
        names = [x.name for x in results]
        pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
        pairs += [(a, b) for a in names for b in reference]
        folder = split_dir(out, s.split, ctx)
        folder.mkdir(exist_ok=True)
        write_results(folder, results, ctx, pairs, split=s.split, reference=reference)
    pairs_scored = len(dev.scorer.scores) + len(test.scorer.scores)
    seconds = dev.scorer.seconds + test.scorer.seconds
    depth = chosen[best]["depth"] or max(r.depths)  # the first stage alone won: the cost a rerank would add
    rows = list(range(min(r.latency_queries, len(dev.qids))))
    head = candidates(firsts[best][DEV_SPLIT][0], depth, rows)
    docs = [[dev.scorer.text(q, d) for q2, d in head if q2 == q] for q in rows]
    latency = {"pairs_scored": pairs_scored, "seconds": seconds,
               "pairs_per_second": pairs_scored / seconds if seconds else None,
               "ranks": distributed.world_size(),  # pairs/s is theirs together; ms per query is rank 0's alone
               "ms_per_query": latency_ms(model, [dev.scorer.queries[q] for q in rows], docs, r.batch_size)
               if distributed.is_main() else None,
               "latency_queries": len(rows), "depth": depth, "first_stage": best,
               "machine": devices.machine(model.device)}
    atomic_write_json(out / "choice.json", {
        "metric": e.primary_metric, "split": DEV_SPLIT, "grid": grid,
        "depths": {f: c["depth"] for f, c in chosen.items()}, "weights": {f: c["weight"] for f, c in chosen.items()},
        "helps": {f: c["weight"] > 0 for f, c in chosen.items()}, "best": system_name(best), "not_reranked": missing,
        "reranker": reranker, "latency": latency})
    extras["cost"] = {"corpus_encodes": ctx.embedder.stats.corpus_encodes - before}


register(Stage("rerank", requires=("evaluate", "reranker"), inputs=_inputs, run=_run,
               does="the cross-encoder over each first stage, depth and weight chosen on dev"))
