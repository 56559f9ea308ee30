"""Stage `reranker`: the cross-encoder that stage `rerank` scores with, trained apart from how it is used.

With `rerank.model` unset it is trained on the lists its first stage (`rerank.lists_from`) gives the train queries,
starting from `rerank.init` (the base model, the run's tuned model, or a cross-encoder); with `rerank.model` given it
is that model, used as it is, and the stage only records it (in its manifest). Its inputs are what the weights depend
on (what the first stage's rankings depend on, the base model, the tuned model when it starts from it, the rerank
training keys, seed, precision, device), not how `rerank` uses them (`SCORING_ONLY`): the jobs of a sweep whose
reranker inputs agree (e.g. lists from BM25, jobs that vary the bi-encoder's training) share one reranker
(pipeline.SHARED_STAGES). Under a launcher every rank trains it (the HF Trainer runs DDP) and rank 0 writes.

Writes reranker/model (a standard CrossEncoder directory with its card), reranker/dataset (its training lists) and
reranker/train_log.json. Checkpoints live in <run_dir>/checkpoints/reranker-<key> (<shared_dir>/checkpoints/... in a
sweep, so that whichever job computes it next finds them) so that `rerank.resume=true` continues a killed run."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
from sentence_transformers import CrossEncoder

from domain_embed import devices, distributed
from domain_embed.context import RunContext
from domain_embed.errors import ConfigError, ModelLoadError
from domain_embed.retrieval.evaluate import DEV_SPLIT
from domain_embed.rundir import atomic_write_json, read_json, stable_hash
from domain_embed.stages import first_stage
from domain_embed.stages.base import Stage, register
from domain_embed.stages.baseline import ranking_file, split_dir
from domain_embed.stages.finetune import trained_model_path
from domain_embed.tracking import trainer_report_to
from domain_embed.tuning.mining import labelled_positives
from domain_embed.tuning.reranker import dev_lists, new_reranker, sample_queries, train_reranker, training_lists
from domain_embed.tuning.trainer import save_model

SCORING_ONLY = ("depths", "weights", "first_stages", "latency_queries")  # rerank keys that never reach the weights
_HOW = ("resume", "keep_checkpoints")  # how the run gets there, not what it produces
TRAIN_SPLIT = "train"


def not_run(ctx: RunContext) -> str | None:
    """Why this run cannot rerank (then no reranker is trained, and the report says it under `not_run`)."""
    e = ctx.cfg.eval
    if e.split == DEV_SPLIT or DEV_SPLIT not in ctx.data.qrels:
        where = "which is the evaluated split here" if e.split == DEV_SPLIT else "and the data has none"
        return (f"the depth, weight and first stage are chosen on the dev split, {where}: evaluate another split with "
                "a dev split beside it, or drop `reranker` and `rerank` from `stages`")
    return None


def _inputs(ctx: RunContext) -> dict:
    r = ctx.cfg.rerank
    if r.model is not None:
        return {"model": r.model}
    if why := not_run(ctx):
        return {"not_run": why}
    training = {k: v for k, v in dataclasses.asdict(r).items() if k not in SCORING_ONLY + _HOW}
    source = first_stage.lists_source(ctx, r.lists_from)
    inputs = {"lists": {"from": source, **first_stage.lists_key(ctx, source)}, "base_model": ctx.embedder.fingerprint,
              "rerank": training, "seed": ctx.cfg.seed, "precision": ctx.cfg.training.precision,
              "device": ctx.cfg.device}
    if r.init == "tuned":
        inputs["finetune"] = ctx.run_dir.manifest("finetune")["key"]
    return inputs


def _device(ctx: RunContext) -> str | None:
    return devices.placement(ctx.cfg.device)


def _checkpoints(ctx: RunContext) -> Path:
    return (ctx.shared_dir or ctx.run_dir.root) / "checkpoints" / f"reranker-{stable_hash(_inputs(ctx))[:16]}"


def _start(ctx: RunContext) -> tuple[CrossEncoder, str]:
    """The model training starts from (`rerank.init`) and where it was loaded from."""
    init, cfg = ctx.cfg.rerank.init, ctx.cfg
    path = {"base": ctx.embedder.location}.get(init) or (str(trained_model_path(ctx)) if init == "tuned" else init)
    return _loaded("rerank.init", path, lambda: new_reranker(path, cfg.rerank.max_length, seed=cfg.seed,
                                                            device=_device(ctx),
                                                            trust_remote_code=cfg.model.trust_remote_code)), path


def train_lists(ctx: RunContext):
    """The training lists: the first stage's top `list_depth` for a seeded sample of the train queries."""
    r, data = ctx.cfg.rerank, ctx.data
    qids, texts, qrels = data.split(TRAIN_SPLIT)
    rows = sample_queries(qids, r.max_train_queries, ctx.cfg.seed)
    qids, texts = [qids[i] for i in rows], [texts[i] for i in rows]
    ranked, _ = first_stage.rank(ctx, first_stage.lists_source(ctx, r.lists_from), texts, r.list_depth)
    return training_lists(qids, texts, ranked, data.corpus_ids, labelled_positives({TRAIN_SPLIT: qrels}),
                          labelled_positives(data.qrels), r.num_negatives, first_stage.window_text(ctx, texts),
                          seed=ctx.cfg.seed)


def _dev(ctx: RunContext) -> list[dict]:
    """The dev check: a seeded sample of dev queries, each with the first stage's stored dev list, `list_depth`
    deep."""
    r, data = ctx.cfg.rerank, ctx.data
    qids, texts, qrels = data.split(DEV_SPLIT)
    source = first_stage.lists_source(ctx, r.lists_from)
    folder = split_dir(ctx.run_dir.stage_dir(first_stage.source_stage(source)), DEV_SPLIT, ctx)
    ranked = np.load(folder / ranking_file(source))["indices"][:, :r.list_depth]
    rows = sample_queries(qids, r.dev_eval_queries, ctx.cfg.seed)
    position = {d: i for i, d in enumerate(data.corpus_ids)}
    positives = [[position[d] for d in sorted(qrels[qids[i]]) if qrels[qids[i]][d] > 0 and d in position]
                 for i in rows]
    queries = [texts[i] for i in rows]
    return dev_lists(queries, ranked[rows], positives, first_stage.window_text(ctx, queries))


def _run(ctx: RunContext, out: Path, extras: dict) -> None:
    """Trains the reranker on its first stage's train lists (its dev lists evaluate it) and publishes it with its
    card, training lists and log."""
    r, cfg = ctx.cfg.rerank, ctx.cfg
    if r.model is not None or not_run(ctx):  # nothing to train: the manifest's inputs say which model, or why not
        return
    if r.list_depth < max(r.depths, default=0):
        raise ConfigError(f"rerank.list_depth={r.list_depth} is below the deepest of rerank.depths={list(r.depths)}: "
                          "the reranker must have seen lists as deep as those it reorders")
    model, start = _start(ctx)
    lists, stats = train_lists(ctx)
    dev = _dev(ctx)
    work = _checkpoints(ctx)
    result = train_reranker(model, lists, dev, r, work, seed=cfg.seed, precision=cfg.training.precision,
                            device=cfg.device, report_to=trainer_report_to(cfg.tracking))
    distributed.barrier()  # every rank has loaded the best checkpoint back before rank 0 removes them
    if not distributed.is_main():  # every rank trained the same weights; rank 0 saves them
        return
    lists.save_to_disk(str(out / "dataset"))
    evals = [h for h in result.log_history if "eval_dev_ndcg@10" in h]
    source = first_stage.lists_source(ctx, r.lists_from)
    table = (f"| step | dev nDCG@10 (`{source}`'s top {r.list_depth}) |\n|---|---|\n"
             + "\n".join(f"| {h['step']} | {h['eval_dev_ndcg@10']:.4f} |" for h in evals)) if evals else "(no dev set)"
    save_model(model, out / "model", {"metrics_table": table, "training_config": dataclasses.asdict(r)})
    atomic_write_json(out / "train_log.json", {**dataclasses.asdict(result), "base_model": start, "init": r.init,
                                               "loss": str(r.loss), "lists_from": source,
                                               "list_depth": r.list_depth, "learning_rate": r.learning_rate,
                                               "rows": stats, "dev_queries": len(dev)})
    if not r.keep_checkpoints:
        shutil.rmtree(work, ignore_errors=True)


def load_reranker(ctx: RunContext) -> tuple[CrossEncoder, dict]:
    """The cross-encoder this stage made or recorded, and its provenance (the report's `rerank.reranker`)."""
    r = ctx.cfg.rerank
    if r.model is None:
        path = ctx.run_dir.stage_dir("reranker") / "model"
        trained = read_json(path.parent / "train_log.json")
        return _cross_encoder(ctx, str(path)), {"source": "trained", "path": str(path),
                                                "shared": ctx.run_dir.is_linked("reranker"),
                                                **{k: v for k, v in trained.items() if k != "log_history"}}
    return _loaded("rerank.model", r.model, lambda: _cross_encoder(ctx, r.model)), {"source": "given", "path": r.model}


def _loaded(key: str, value: str, load: Callable[[], CrossEncoder]) -> CrossEncoder:
    """`load()`, or one clear line naming the config key when the model cannot be loaded."""
    try:
        return load()
    except Exception as exc:  # the hub, the filesystem and transformers all raise different types
        raise ModelLoadError(f"cannot load {key} '{value}': {exc.__class__.__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc


def _cross_encoder(ctx: RunContext, path: str) -> CrossEncoder:
    return CrossEncoder(path, max_length=ctx.cfg.rerank.max_length, device=_device(ctx),
                        trust_remote_code=ctx.cfg.model.trust_remote_code)


register(Stage("reranker", requires=("evaluate",), inputs=_inputs, run=_run,
               does="the cross-encoder trained on its first stage's lists (or rerank.model loaded)"))
