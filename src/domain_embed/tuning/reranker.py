"""The reranker trained in the run: a cross-encoder on its first stage's own lists, through sentence-transformers'
CrossEncoderTrainer (checkpoints, resume, dev evaluation and best-checkpoint selection come from the HF Trainer).

A training list is a train query's labelled positives and negatives sampled from the first stage's top N, where only
the labelled positives are taken out: the look-alikes that outrank a positive are what a reranker must push down.
The loss is listwise by default (LambdaLoss at nDCG@10, or ListNet; BCE on the lists' pairs stays an option), on raw
scores. During training the library's reranking evaluator orders the same first stage's dev lists, positives absent
from a list counting as missed, so the checkpoint kept is the one that orders the real lists best.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from sentence_transformers import CrossEncoder
from sentence_transformers.cross_encoder.evaluation import CrossEncoderRerankingEvaluator
from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss, LambdaLoss, ListNetLoss
from sentence_transformers.cross_encoder.losses.lambda_loss import NDCGLoss2PPScheme
from sentence_transformers.cross_encoder.trainer import CrossEncoderTrainer
from sentence_transformers.cross_encoder.training_args import CrossEncoderTrainingArguments
from transformers import set_seed

from domain_embed import distributed
from domain_embed.errors import ConfigError, DataError
from domain_embed.stage_configs import RerankConfig, RerankLoss
from domain_embed.tuning.progress import use_logged_progress
from domain_embed.tuning.trainer import CHECKPOINTS, _precision_flags, _resume_point

DEV_NAME = "dev"
DEV_METRIC = f"eval_{DEV_NAME}_ndcg@10"  # CrossEncoderRerankingEvaluator's primary metric, as the trainer logs it
LIST_COLUMNS = ("query", "docs", "labels")  # what a listwise loss reads, in its order
PAIR_COLUMNS = ("query", "document", "label")  # what BinaryCrossEntropyLoss reads

Text = Callable[[int, int], str]  # (query row, document position) -> the document's text for that query


def sample_queries(qids: list[str], max_queries: int | None, seed: int) -> list[int]:
    """Rows of a seeded sample of `max_queries` queries (all: None), in their order."""
    if max_queries is None or max_queries >= len(qids):
        return list(range(len(qids)))
    return sorted(random.Random(seed).sample(range(len(qids)), max_queries))


def training_lists(qids: list[str], queries: list[str], ranked: np.ndarray, corpus_ids: list[str],
                   positives: dict[str, set[str]], labelled: dict[str, set[str]], num_negatives: int, text: Text, *,
                   seed: int = 0) -> tuple[Dataset, dict]:
    """One list per query: its `positives` (the train qrels, ranked or not) and up to `num_negatives` documents
    sampled (seeded) from its first-stage ranking `ranked` (one row per query, -1 padding), from which only the
    documents labelled relevant for the query in any split (`labelled`) are taken out, counted in
    `labelled_in_lists`. Documents are shuffled within a list (a loss must not learn the list's order)."""
    if num_negatives < 1:
        raise ConfigError(f"rerank.num_negatives must be >= 1, got {num_negatives}")
    rng = random.Random(seed)
    position = {d: i for i, d in enumerate(corpus_ids)}
    rows, ranked_positives, taken_out = [], 0, 0
    for row, qid in enumerate(qids):
        pos = [position[d] for d in sorted(positives.get(qid, ())) if d in position]
        if not pos:
            continue
        listed = [int(d) for d in ranked[row] if d >= 0]
        candidates = [d for d in listed if corpus_ids[d] not in labelled.get(qid, ())]
        taken_out += len(listed) - len(candidates)
        ranked_positives += sum(d in listed for d in pos)
        negs = [candidates[i] for i in sorted(rng.sample(range(len(candidates)), min(num_negatives, len(candidates))))]
        docs = [(d, 1.0) for d in pos] + [(d, 0.0) for d in negs]
        rng.shuffle(docs)
        rows.append({"query_id": qid, "doc_ids": [corpus_ids[d] for d, _ in docs], "query": queries[row],
                     "docs": [text(row, d) for d, _ in docs], "labels": [y for _, y in docs]})
    n_pos = sum(sum(r["labels"]) for r in rows)
    n_pairs = sum(len(r["labels"]) for r in rows)
    stats = {"queries": len(rows), "pairs": n_pairs, "positives": int(n_pos), "negatives": int(n_pairs - n_pos),
             "positives_in_lists": ranked_positives, "labelled_in_lists": taken_out}
    return Dataset.from_list(rows), stats


def pairs(lists: Dataset) -> Dataset:
    """The lists' (query, document, label) pairs, for the pointwise loss."""
    return Dataset.from_list([{"query": r["query"], "document": d, "label": y} for r in lists
                              for d, y in zip(r["docs"], r["labels"], strict=True)])


def dev_lists(queries: list[str], ranked: np.ndarray, positives: list[list[int]], text: Text) -> list[dict]:
    """The reranking evaluator's samples: each query's first-stage list as `documents` (in its order) and its
    labelled positives, listed or not (one absent from the list counts as missed)."""
    return [{"query": q, "positive": [text(row, d) for d in pos],
             "documents": [text(row, int(d)) for d in ranked[row] if d >= 0]}
            for row, (q, pos) in enumerate(zip(queries, positives, strict=True)) if pos]


def _errors_only(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR


def new_reranker(base: str, max_length: int, *, seed: int, device: str | None = None,
                 trust_remote_code: bool = False) -> CrossEncoder:
    """The cross-encoder training starts from: a bi-encoder's transformer (`base` a SentenceTransformer) under a fresh
    one-logit head initialised from `seed` (not from whatever the process drew before), or a cross-encoder as it was
    trained (head included). The libraries' warnings that the head is new (transformers' load report) and that a
    SentenceTransformer folder becomes a CrossEncoder are held back: both are the point here."""
    set_seed(seed)
    # a filter, not a level: transformers 5 reads its loader logger's level (>= WARNING) as the cue to check a
    # tensor-parallel plan, and then lists every layer of an unsharded model as "not sharded"
    loggers = [logging.getLogger(name) for name in ("transformers.modeling_utils", "sentence_transformers.base.model")]
    for lg in loggers:
        lg.addFilter(_errors_only)
    try:
        return CrossEncoder(base, num_labels=1, max_length=max_length, device=device,
                            trust_remote_code=trust_remote_code)
    finally:
        for lg in loggers:
            lg.removeFilter(_errors_only)


@dataclass
class RerankerTrainResult:
    best_checkpoint: str | None
    best_dev_ndcg10: float | None
    global_step: int
    eval_steps: int
    train_seconds: float
    samples_per_second: float
    log_history: list[dict]
    resumed_from: str | None


def eval_steps(cfg: RerankConfig, n_rows: int) -> int:
    """Steps between dev evaluations (and checkpoints): `cfg.evaluations` of them in the run, whatever its length.
    Each rank of a launch steps through its share of the rows `train_batch_size` at a time, its last incomplete batch
    dropped (as sentence-transformers sets under DDP)."""
    if cfg.evaluations < 1:
        raise ConfigError(f"rerank.evaluations must be >= 1, got {cfg.evaluations}")
    world = distributed.world_size()
    share = math.ceil(n_rows / world)
    per_epoch = share // cfg.train_batch_size if world > 1 else math.ceil(share / cfg.train_batch_size)
    total = cfg.max_steps if cfg.max_steps > 0 else math.ceil(cfg.epochs * per_epoch)
    return max(1, total // cfg.evaluations)


def training_arguments(cfg: RerankConfig, output_dir: Path, *, steps: int, seed: int, has_dev: bool,
                       precision: str = "auto", device: str = "auto",
                       report_to: Sequence[str] = ()) -> CrossEncoderTrainingArguments:
    if not 0 <= cfg.warmup < 1:
        raise ConfigError(f"rerank.warmup is a fraction of the steps, in [0, 1): got {cfg.warmup}")
    on_cuda = torch.cuda.is_available() and device != "cpu"
    best = {"load_best_model_at_end": True, "metric_for_best_model": DEV_METRIC, "greater_is_better": True} \
        if has_dev else {}
    return CrossEncoderTrainingArguments(
        output_dir=str(output_dir / CHECKPOINTS), per_device_train_batch_size=cfg.train_batch_size,
        per_device_eval_batch_size=cfg.batch_size, learning_rate=cfg.learning_rate, num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps, warmup_steps=cfg.warmup, **_precision_flags(precision, on_cuda=on_cuda),
        use_cpu=not on_cuda, eval_strategy="steps" if has_dev else "no", eval_steps=steps,
        save_strategy="steps", save_steps=steps, save_total_limit=cfg.save_total_limit, **best,
        logging_steps=max(1, steps // 4), seed=seed, data_seed=seed, dataloader_pin_memory=on_cuda,
        # under DDP: a CrossEncoder's forward returns a BatchEncoding, in which DDP's search for unused parameters
        # finds no tensor, so it would take every parameter for unused and fail in the first backward; none is
        ddp_find_unused_parameters=False, report_to=list(report_to) or "none")


def _loss(model: CrossEncoder, lists: Dataset, kind: RerankLoss) -> tuple[torch.nn.Module, Dataset]:
    """The loss and the rows it reads; every loss scores with an identity activation (raw logits, as `rerank`)."""
    if kind == RerankLoss.bce:
        rows = pairs(lists)
        positives = sum(1 for label in rows["label"] if label == 1.0)
        weight = torch.tensor((len(rows) - positives) / max(positives, 1))
        return BinaryCrossEntropyLoss(model, pos_weight=weight), rows.select_columns(list(PAIR_COLUMNS))
    rows = lists.select_columns(list(LIST_COLUMNS))
    if kind == RerankLoss.listnet:
        return ListNetLoss(model, activation_fn=torch.nn.Identity()), rows
    return LambdaLoss(model, weighting_scheme=NDCGLoss2PPScheme(), k=10, activation_fn=torch.nn.Identity()), rows


def train_reranker(model: CrossEncoder, lists: Dataset, dev: list[dict], cfg: RerankConfig, output_dir: Path, *,
                   seed: int, precision: str = "auto", device: str = "auto",
                   report_to: Sequence[str] = (), callbacks: Sequence = ()) -> RerankerTrainResult:
    """Trains `model` in place with `cfg.loss` on `lists` (`training_lists`); with dev lists (`dev_lists`), the
    checkpoint whose dev nDCG@10 over them is best is loaded back at the end. `output_dir` must be the same across
    restarts for `cfg.resume` to find the checkpoints."""
    output_dir = Path(output_dir)
    if len(lists) == 0:
        raise DataError("no reranker training list: no train query has a labelled positive", field="qrels")
    loss, rows = _loss(model, lists, RerankLoss(cfg.loss))
    steps = eval_steps(cfg, len(rows))
    args = training_arguments(cfg, output_dir, steps=steps, seed=seed, has_dev=bool(dev), precision=precision,
                              device=device, report_to=report_to)
    resume_from = _resume_point(output_dir / CHECKPOINTS, cfg.resume, "rerank.resume")
    evaluator = CrossEncoderRerankingEvaluator(dev, at_k=10, always_rerank_positives=False, name=DEV_NAME,
                                               batch_size=cfg.batch_size) if dev else None
    trainer = CrossEncoderTrainer(model=model, args=args, train_dataset=rows, loss=loss, evaluator=evaluator,
                                  callbacks=list(callbacks))
    use_logged_progress(trainer)
    metrics = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None).metrics
    state = trainer.state
    return RerankerTrainResult(best_checkpoint=state.best_model_checkpoint, best_dev_ndcg10=state.best_metric,
                               global_step=state.global_step, eval_steps=steps, train_seconds=metrics["train_runtime"],
                               samples_per_second=metrics["train_samples_per_second"],
                               log_history=list(state.log_history),
                               resumed_from=str(resume_from) if resume_from else None)
