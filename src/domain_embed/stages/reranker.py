"""Stage `reranker`: the cross-encoder that stage `rerank` scores with, trained apart from how it is used.

With `rerank.model` unset it is trained from the base model's transformer on the triplets stage's rows; with
`rerank.model` given it is that model, used as it is, and the stage only records it (in its manifest). Its inputs are
only what the weights depend on (the triplets, the base model, the rerank training keys, seed, precision, device),
not how `rerank` uses them (`SCORING_ONLY`): the jobs of a sweep that vary the bi-encoder's training share one
reranker (pipeline.SHARED_STAGES). Under a launcher every rank trains it (the HF Trainer runs DDP) and rank 0 writes.

Writes reranker/model (a standard CrossEncoder directory with its card), reranker/dataset (its training rows) and
reranker/train_log.json. Checkpoints live in <run_dir>/checkpoints/reranker-<key> (<shared_dir>/checkpoints/... in a
sweep, so that whichever job computes it next finds them) so that `rerank.resume=true` continues a killed run."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from datasets import DatasetDict
from sentence_transformers import CrossEncoder

from domain_embed import distributed
from domain_embed.context import RunContext
from domain_embed.errors import ModelLoadError
from domain_embed.retrieval.evaluate import DEV_SPLIT
from domain_embed.rundir import atomic_write_json, read_json, stable_hash
from domain_embed.stages.base import Stage, register
from domain_embed.tracking import trainer_report_to
from domain_embed.tuning.mining import labelled_positives
from domain_embed.tuning.reranker import dev_samples, new_reranker, train_reranker, training_rows
from domain_embed.tuning.trainer import save_model

SCORING_ONLY = ("depths", "first_stages", "latency_queries")  # rerank keys that never reach the weights
_HOW = ("resume", "keep_checkpoints")  # how the run gets there, not what it produces


def not_run(ctx: RunContext) -> str | None:
    """Why this run cannot rerank (then no reranker is trained, and the report says it under `not_run`)."""
    e = ctx.cfg.eval
    if e.split == DEV_SPLIT or DEV_SPLIT not in ctx.data.qrels:
        where = "which is the evaluated split here" if e.split == DEV_SPLIT else "and the data has none"
        return (f"the depth and first stage are chosen on the dev split, {where}: evaluate another split with a dev "
                "split beside it, or drop `reranker` and `rerank` from `stages`")
    return None


def _inputs(ctx: RunContext) -> dict:
    r = ctx.cfg.rerank
    if r.model is not None:
        return {"model": r.model}
    if why := not_run(ctx):
        return {"not_run": why}
    training = {k: v for k, v in dataclasses.asdict(r).items() if k not in SCORING_ONLY + _HOW}
    return {"triplets": ctx.run_dir.manifest("triplets")["key"], "base_model": ctx.embedder.fingerprint,
            "rerank": training, "seed": ctx.cfg.seed, "precision": ctx.cfg.training.precision,
            "device": ctx.cfg.device}


def _device(ctx: RunContext) -> str | None:
    return None if ctx.cfg.device == "auto" else ctx.cfg.device


def _checkpoints(ctx: RunContext) -> Path:
    return (ctx.shared_dir or ctx.run_dir.root) / "checkpoints" / f"reranker-{stable_hash(_inputs(ctx))[:16]}"


def _run(ctx: RunContext, out: Path, extras: dict) -> None:
    """Trains the reranker on the triplets stage's train rows (dev rows evaluate it) and publishes it with its card,
    training rows and log."""
    r, cfg = ctx.cfg.rerank, ctx.cfg
    if r.model is not None or not_run(ctx):  # nothing to train: the manifest's inputs say which model, or why not
        return
    data = DatasetDict.load_from_disk(str(ctx.run_dir.stage_dir("triplets") / "dataset"))
    rows, stats = training_rows(data["train"], labelled_positives(ctx.data.qrels), r.num_negatives,
                                max_queries=r.max_train_queries, seed=cfg.seed)
    dev = dev_samples(data["dev"], r.dev_eval_queries, cfg.seed)
    model = new_reranker(ctx.embedder.location, r.max_length, seed=cfg.seed, device=_device(ctx),
                         trust_remote_code=cfg.model.trust_remote_code)
    work = _checkpoints(ctx)
    result = train_reranker(model, rows, dev, r, work, seed=cfg.seed, precision=cfg.training.precision,
                            device=cfg.device, report_to=trainer_report_to(cfg.tracking))
    distributed.barrier()  # every rank has loaded the best checkpoint back before rank 0 removes them
    if not distributed.is_main():  # every rank trained the same weights; rank 0 saves them
        return
    rows.save_to_disk(str(out / "dataset"))
    evals = [h for h in result.log_history if "eval_dev_ndcg@10" in h]
    table = ("| step | dev nDCG@10 (positives among mined negatives) |\n|---|---|\n"
             + "\n".join(f"| {h['step']} | {h['eval_dev_ndcg@10']:.4f} |" for h in evals)) if evals else "(no dev set)"
    save_model(model, out / "model", {"metrics_table": table, "training_config": dataclasses.asdict(r)})
    atomic_write_json(out / "train_log.json", {**dataclasses.asdict(result), "base_model": ctx.embedder.location,
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
    try:
        model = _cross_encoder(ctx, r.model)
    except Exception as exc:  # the hub, the filesystem and transformers all raise different types
        raise ModelLoadError(f"cannot load rerank.model '{r.model}': {exc.__class__.__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc
    return model, {"source": "given", "path": r.model}


def _cross_encoder(ctx: RunContext, path: str) -> CrossEncoder:
    return CrossEncoder(path, max_length=ctx.cfg.rerank.max_length, device=_device(ctx),
                        trust_remote_code=ctx.cfg.model.trust_remote_code)


register(Stage("reranker", requires=("triplets",), inputs=_inputs, run=_run,
               does="the cross-encoder trained (or rerank.model loaded)"))
