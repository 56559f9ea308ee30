"""Stage `finetune`: sentence-transformers' Trainer on the mined triplets, best checkpoint by dev nDCG@10.

Checkpoints live in <run_dir>/checkpoints/<key> (outside the stage's temporary folder) so a killed run
resumes with `training.resume=true`; the finished model is published as finetune/model, a standard
sentence-transformers directory, with finetune/train_log.json (loss, lr, grad norm, dev metrics, per round). With
`mining.rounds` > 1, round r re-mines with the model of round r - 1 and writes finetune/round<r>/ (dataset,
mining_meta.json).

Every round is scored on one fixed dev set, built from the triplets stage (the base model's negatives), so the
rounds' scores compare like with like, and so do the scores of every job of a sweep sharing that stage. Round r's
model is kept only if its best dev nDCG@10 beats the kept model's; otherwise the kept model is published, and later
rounds stop (they would re-mine with the same model and train the same way again)."""

from __future__ import annotations

import dataclasses
import random
import shutil
from pathlib import Path

from datasets import Dataset, DatasetDict

from domain_embed import distributed
from domain_embed.config import TrainingConfig
from domain_embed.context import RunContext
from domain_embed.errors import DataError
from domain_embed.report.plots import plot_training
from domain_embed.rundir import atomic_write_json, read_json, stable_hash
from domain_embed.stages.base import Stage, register
from domain_embed.stages.mine import mine_with, mining_stats
from domain_embed.stages.triplets import triplet_data
from domain_embed.tracking import trainer_report_to
from domain_embed.tuning.losses import columns_for
from domain_embed.tuning.trainer import DevSet, save_model, train_model
from domain_embed.tuning.triplets import mnrl_view, triplet_view


def _training_inputs(ctx: RunContext) -> dict:
    training = dataclasses.asdict(ctx.cfg.training)
    for key in ("resume", "keep_checkpoints"):  # how the run gets there, not what it produces
        training.pop(key)
    inputs = {"triplets": ctx.run_dir.manifest("triplets")["key"], "model": ctx.embedder.fingerprint,
              "training": training, "seed": ctx.cfg.seed}
    if ctx.cfg.mining.rounds > 1:  # later rounds mine here, by the mining rules the triplets key already holds
        inputs["mining_rounds"] = ctx.cfg.mining.rounds
    return inputs


def checkpoints_dir(ctx: RunContext, key: str) -> Path:
    return ctx.run_dir.root / "checkpoints" / key[:16]


def dev_set(ctx: RunContext, dev, size: int, seed: int, max_queries: int | None = None) -> DevSet:
    """Dev queries (a seeded sample of `max_queries`) with their positives, their mined negatives and a random
    sample of the corpus: small enough to evaluate often, hard enough to rank checkpoints."""
    if max_queries is not None:
        qids = sorted(set(dev["query_id"]))
        kept = set(random.Random(seed).sample(qids, min(max_queries, len(qids))))
        dev = dev.filter(lambda row: row["query_id"] in kept)
    windows = ctx.windows()
    first_window = {}
    for w, p in enumerate(windows.parents.tolist()):
        first_window.setdefault(p, w)
    texts = windows.texts(ctx.documents)
    corpus, relevant, queries = {}, {}, {}
    for row in dev:
        queries[row["query_id"]] = row["query"]
        relevant.setdefault(row["query_id"], set()).add(row["positive_id"])
        corpus[row["positive_id"]] = row["positive"]
        corpus.update(zip(row["negative_ids"], row["negatives"], strict=True))
    ids = ctx.data.corpus_ids
    rng = random.Random(seed)
    for i in rng.sample(range(len(ids)), min(len(ids), max(0, size - len(corpus)))):
        corpus.setdefault(ids[i], texts[first_window[i]])
    return DevSet(queries=queries, corpus=corpus, relevant=relevant)


def _loss_view(ds: Dataset, training: TrainingConfig) -> Dataset:
    view = triplet_view(ds) if training.loss == "triplet" else mnrl_view(ds, training.num_negatives)
    return view.select_columns(columns_for(training.loss, training.num_negatives))


def _check_rows(train: Dataset, training: TrainingConfig) -> None:
    ranks = distributed.world_size()
    # several ranks drop each epoch's last partial batch (equal steps everywhere): fewer rows than one global batch
    # would leave nothing to train on, and the HF Trainer would only say the dataloader has no length
    if len(train) == 0 or (ranks > 1 and len(train) < training.batch_size * ranks):
        raise DataError(f"{len(train)} training rows with {training.num_negatives} hard negatives each, fewer than one "
                        f"batch ({training.batch_size} per rank x {ranks} rank(s)): lower training.batch_size or "
                        "training.num_negatives, or mine more (see triplets/mining_meta.json)", field="triplets")


def _remine(ctx: RunContext, model, folder: Path) -> tuple[DatasetDict, dict, int]:
    """The next round's triplets: the same mining rules over the current model's ranking. Its corpus vectors are
    encoded once (counted) into the embedding cache, keyed by the saved weights."""
    if distributed.is_main():
        model.save(str(folder))
    distributed.barrier()
    embedder = ctx.make_embedder(dataclasses.replace(ctx.cfg.model, path=str(folder), packaged=None, revision=None))
    result = mine_with(ctx, embedder)
    data, split_stats = triplet_data(ctx, result, embedder)
    return data, {**mining_stats(ctx, result), "split": split_stats}, embedder.stats.corpus_encodes


def _run(ctx: RunContext, out: Path, extras: dict) -> None:
    cfg = ctx.cfg
    training = cfg.training
    data = DatasetDict.load_from_disk(str(ctx.run_dir.stage_dir("triplets") / "dataset"))
    base = ctx.embedder
    # a fresh copy (the base model stays untouched for the guide), in fp32 whatever the encode dtype: the optimizer
    # keeps fp32 master weights and mixed precision comes from training.precision
    model = ctx.make_embedder(dataclasses.replace(cfg.model, encode_dtype="fp32")).model
    guide = base.model if training.loss == "gist" else None
    work = checkpoints_dir(ctx, stable_hash(_training_inputs(ctx)))
    # the one dev set of every round (and of every sweep job sharing the triplets stage): never re-mined
    dev = dev_set(ctx, data["dev"], training.dev_corpus_size, cfg.seed, training.dev_max_queries) \
        if len(data["dev"]) else None
    rounds, encodes, history, kept = [], 0, [], None
    for r in range(1, cfg.mining.rounds + 1):
        mining = None
        if r > 1:  # round r trains the model of round r - 1 on negatives it mined itself
            data, mining, n = _remine(ctx, model, work / f"round{r - 1}-model")
            encodes += n
            if distributed.is_main():  # provenance: what round r trained on, and how it was mined
                data.save_to_disk(str(out / f"round{r}" / "dataset"))
                atomic_write_json(out / f"round{r}" / "mining_meta.json", mining)
        train = _loss_view(data["train"], training)
        _check_rows(train, training)
        result = train_model(model, train, dev, training, work if r == 1 else work / f"round{r}", seed=cfg.seed,
                             guide=guide, report_to=trainer_report_to(cfg.tracking), device=cfg.device,
                             query_prompt=cfg.model.query_prompt, document_prompt=cfg.model.document_prompt,
                             dev_batch_size=cfg.eval.batch_size)
        history += [{**row, "round": r} for row in result.log_history]
        rounds.append({"round": r, "train_rows": len(train), "dev_queries": len(dev.queries) if dev else 0,
                       "dev_corpus": len(dev.corpus) if dev else 0, "global_step": result.global_step,
                       "best_dev_ndcg@10": result.best_dev_ndcg10,
                       "train_seconds": result.train_seconds, "samples_per_second": result.samples_per_second,
                       "best_checkpoint": str(result.best_checkpoint) if result.best_checkpoint else None,
                       "resumed_from": str(result.resumed_from) if result.resumed_from else None,
                       "mining": mining, "kept": _beats(result.best_dev_ndcg10, kept)})
        if rounds[-1]["kept"]:
            kept = rounds[-1]
            kept_weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()} \
                if r < cfg.mining.rounds else None
        else:  # back to the kept model; a further round would re-mine with it and repeat this one
            model.load_state_dict(kept_weights)
            break
    if not distributed.is_main():  # every rank trained the same weights; rank 0 saves them
        return
    evals = [r for r in history if "eval_dev_cosine_ndcg@10" in r]
    table = ("| round | step | dev nDCG@10 |\n|---|---|---|\n"
             + "\n".join(f"| {r['round']} | {r['step']} | {r['eval_dev_cosine_ndcg@10']:.4f} |" for r in evals))
    save_model(model, out / "model", {"metrics_table": table if evals else "(no dev set)",
                                      "training_config": dataclasses.asdict(training)})
    last = rounds[-1]
    # best_dev_ndcg@10 is the published model's score on the fixed dev set: the Optuna objective and the sweep's
    # ranking when jobs evaluate test
    log = {"best_checkpoint": kept["best_checkpoint"], "best_dev_ndcg@10": kept["best_dev_ndcg@10"],
           "kept_round": kept["round"], "rounds_planned": cfg.mining.rounds, "dev_set_sha256": _dev_hash(dev),
           "global_step": sum(r["global_step"] for r in rounds), "train_rows": kept["train_rows"],
           "dev_queries": last["dev_queries"], "dev_corpus": last["dev_corpus"],
           "train_seconds": sum(r["train_seconds"] for r in rounds),
           "samples_per_second": last["samples_per_second"], "peak_gpu_memory_gib": _peak_gpu_memory_gib(),
           # where a killed run picked up: the first round that found a checkpoint (a later one, if any, was done)
           "resumed_from": next((r["resumed_from"] for r in rounds if r["resumed_from"]), None),
           "rounds": rounds, "log_history": history}
    atomic_write_json(out / "train_log.json", log)
    plot_training(history, out / "training.png")
    extras["cost"] = {"corpus_encodes": encodes}
    if not training.keep_checkpoints:  # only a killed, unfinished stage resumes from them
        shutil.rmtree(work, ignore_errors=True)


def _beats(score: float | None, kept: dict | None) -> bool:
    """Round 1 is always kept; a later round only if its best dev nDCG@10 is higher than the kept round's (without
    a dev set there is nothing to compare, and the last round is kept)."""
    return kept is None or score is None or score > kept["best_dev_ndcg@10"]


def _dev_hash(dev: DevSet | None) -> str | None:
    """Says which dev set a score was measured on: equal hashes, comparable scores (the sweep summary checks)."""
    return None if dev is None else stable_hash(
        {"queries": dev.queries, "corpus": dev.corpus, "relevant": {q: sorted(d) for q, d in dev.relevant.items()}})


def _peak_gpu_memory_gib() -> float | None:
    """What fine-tuning needed on the GPU (the process's peak; no stage before it holds more than a model)."""
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None


def trained_model_path(ctx: RunContext) -> Path:
    return ctx.run_dir.stage_dir("finetune") / "model"


def train_log(ctx: RunContext) -> dict:
    return read_json(ctx.run_dir.stage_dir("finetune") / "train_log.json")


register(Stage("finetune", requires=("triplets",), inputs=_training_inputs, run=_run,
               does="the model fine-tuned on the triplets, best checkpoint by dev nDCG@10"))
