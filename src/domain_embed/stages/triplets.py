"""Stage `triplets`: the training dataset, with provenance.

Writes triplets/dataset (DatasetDict train/dev with ids, texts and scores), the loss-shaped views
triplets/mnrl and triplets/triplet, triplets/mining_meta.json (every parameter, the backend, counts
kept and dropped by each rule, score statistics, the split) and triplets/scores.png. The corpus vectors come
from the embedding cache; a miss (an emptied cache) is encoded and counted in the manifest."""

from __future__ import annotations

import json
from pathlib import Path

from datasets import DatasetDict

from domain_embed.context import RunContext
from domain_embed.data.domain import nested_sample
from domain_embed.errors import ConfigError
from domain_embed.report.plots import plot_score_distributions
from domain_embed.retrieval.embed import Embedder
from domain_embed.rundir import atomic_write_json, read_json
from domain_embed.stages.base import Stage, register
from domain_embed.stages.mine import mined_queries, mined_splits
from domain_embed.tuning.mining import MinedQuery, MiningResult
from domain_embed.tuning.triplets import build_rows, leak_free_split, mnrl_view, to_dataset, triplet_view

DEV_FRACTION = 0.1  # used only when the data has no dev split to mine


def _inputs(ctx: RunContext) -> dict:
    inputs = {"mine": ctx.run_dir.manifest("mine")["key"], "num_negatives": ctx.cfg.training.num_negatives,
              "min_triplets": ctx.cfg.mining.min_triplets, "dev_split": ctx.cfg.mining.dev_split}
    if ctx.cfg.data.max_train_queries is not None:  # only when set: a run on all queries keeps its key
        inputs["max_train_queries"] = ctx.cfg.data.max_train_queries
    return inputs


def training_queries(ctx: RunContext) -> set[str] | None:
    """The labelled training queries fine-tuning may learn from (`data.max_train_queries`, a nested seeded sample of
    the mined splits' queries other than the dev split), or None for all. The mine stage mines every query, so the
    jobs of a label-budget sweep share it and differ from here on."""
    n = ctx.cfg.data.max_train_queries
    if n is None:
        return None
    if n < 1:
        raise ConfigError(f"data.max_train_queries must be >= 1 (or null for all), got {n}")
    labelled = {q for s in mined_splits(ctx) if s != ctx.cfg.mining.dev_split for q in ctx.data.qrels[s]}
    return set(nested_sample(list(labelled), n, ctx.cfg.seed))


def triplet_data(ctx: RunContext, result: MiningResult, embedder: Embedder) -> tuple[DatasetDict, dict]:
    """Train/dev rows (leak-free) from a mining result; long documents contribute their best window by `embedder`,
    the model that mined them. Returns the datasets and the split's counts."""
    windows = ctx.windows()
    window_texts = windows.texts(ctx.documents)
    window_emb = embedder.encode_documents(window_texts)
    query_ids, _, query_emb = mined_queries(ctx, embedder)
    rows = build_rows(result, ctx.data.queries, query_emb, {q: i for i, q in enumerate(query_ids)}, window_emb,
                      windows.parents, window_texts, ctx.data.corpus_ids)
    train, dev, split_stats = leak_free_split(rows, ctx.cfg.mining.dev_split, DEV_FRACTION, ctx.cfg.seed)
    if (sample := training_queries(ctx)) is not None:  # after the split: the dev rows are the same at every size
        train = [r for r in train if r["query_id"] in sample]
        split_stats.update(train_rows=len(train), max_train_queries=ctx.cfg.data.max_train_queries,
                           train_queries_sampled=len(sample))
    return DatasetDict({"train": to_dataset(train), "dev": to_dataset(dev)}), split_stats


def _run(ctx: RunContext, out: Path, extras: dict) -> None:
    mine_dir = ctx.run_dir.stage_dir("mine")
    stats = read_json(mine_dir / "stats.json")
    result = MiningResult(queries=[MinedQuery(**json.loads(line)) for line in (mine_dir / "mined.jsonl").open()])
    before = ctx.embedder.stats.corpus_encodes
    data, split_stats = triplet_data(ctx, result, ctx.embedder)
    train = data["train"]
    data.save_to_disk(str(out / "dataset"))
    n = ctx.cfg.training.num_negatives
    mnrl = DatasetDict({k: mnrl_view(v, n) for k, v in data.items()})
    mnrl.save_to_disk(str(out / "mnrl"))
    DatasetDict({k: triplet_view(v) for k, v in data.items()}).save_to_disk(str(out / "triplet"))
    warnings = []
    if len(train) < ctx.cfg.mining.min_triplets:
        worst = stats["rule_removing_most"]
        warnings.append(f"only {len(train)} training triplets survived (the article's minimum viable size is "
                        f"{ctx.cfg.mining.min_triplets}); the rule removing most candidates was "
                        f"'{worst}' ({stats['dropped_by_rule'].get(worst, 0)} removed)")
    pairs_without = sum(len(q.positive_ids) for q in result.queries if not q.negative_ids)
    meta = {**stats, "split": split_stats, "pairs_without_negative": pairs_without,
            "mnrl_rows": {k: len(v) for k, v in mnrl.items()},
            "training_num_negatives": n, "warnings": warnings}
    atomic_write_json(out / "mining_meta.json", meta)
    plot_score_distributions(*result.scores(), out / "scores.png", queries=len(result.queries))
    extras["cost"] = {"corpus_encodes": ctx.embedder.stats.corpus_encodes - before}


register(Stage("triplets", requires=("mine",), inputs=_inputs, run=_run,
               does="leak-free train/dev triplets written"))
