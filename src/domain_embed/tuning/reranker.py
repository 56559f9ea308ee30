"""The reranker trained in the run: a cross-encoder on the triplets stage's rows, through sentence-transformers'
CrossEncoderTrainer (checkpoints, resume, dev evaluation and best-checkpoint selection come from the HF Trainer).

Its rows reuse what mining kept (dense and BM25 negatives, after the false-negative rules, as best windows), so the
reranker adds no corpus encode and sees only train queries; dev queries rank their positives among their mined
negatives during training.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from datasets import Dataset
from sentence_transformers import CrossEncoder
from sentence_transformers.cross_encoder.evaluation import CrossEncoderRerankingEvaluator
from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss
from sentence_transformers.cross_encoder.trainer import CrossEncoderTrainer
from sentence_transformers.cross_encoder.training_args import CrossEncoderTrainingArguments
from transformers import set_seed

from domain_embed.config import RerankConfig
from domain_embed.errors import ConfigError, DataError
from domain_embed.tuning.progress import use_logged_progress
from domain_embed.tuning.trainer import CHECKPOINTS, _precision_flags, _resume_point

DEV_NAME = "dev"
DEV_METRIC = f"eval_{DEV_NAME}_ndcg@10"  # CrossEncoderRerankingEvaluator's primary metric, as the trainer logs it
COLUMNS = ("query", "document", "label")  # what the loss reads, in its order


def _sampled(ds: Dataset, max_queries: int | None, seed: int) -> Dataset:
    if max_queries is None:
        return ds
    qids = sorted(set(ds["query_id"]))
    kept = set(random.Random(seed).sample(qids, min(max_queries, len(qids))))
    return ds.filter(lambda row: row["query_id"] in kept)


def training_rows(ds: Dataset, labelled: dict[str, set[str]], num_negatives: int, *, max_queries: int | None = None,
                  seed: int = 0) -> tuple[Dataset, dict]:
    """(query, document, label) rows from triplet rows: each positive as 1, the first `num_negatives` mined negatives
    as 0, each (query, document) once. A negative labelled relevant for the query in any split (`labelled`) is
    dropped and counted: mining already removed those, so a count above 0 means its qrels differ from these."""
    if num_negatives < 1:
        raise ConfigError(f"rerank.num_negatives must be >= 1, got {num_negatives}")
    ds = _sampled(ds, max_queries, seed)
    rows: dict[tuple[str, str], dict] = {}
    dropped = 0
    for r in ds:
        qid = r["query_id"]
        rows.setdefault((qid, r["positive_id"]), {"query_id": qid, "doc_id": r["positive_id"], "query": r["query"],
                                                  "document": r["positive"], "label": 1.0})
        for nid, text in list(zip(r["negative_ids"], r["negatives"], strict=True))[:num_negatives]:
            if nid in labelled.get(qid, set()):
                dropped += 1
                continue
            rows.setdefault((qid, nid), {"query_id": qid, "doc_id": nid, "query": r["query"], "document": text,
                                         "label": 0.0})
    out = list(rows.values())
    positives = sum(r["label"] == 1.0 for r in out)
    stats = {"queries": len({r["query_id"] for r in out}), "rows": len(out), "positives": positives,
             "negatives": len(out) - positives, "dropped_labelled_positive": dropped}
    return Dataset.from_list(out), stats


def dev_samples(ds: Dataset, max_queries: int | None, seed: int) -> list[dict]:
    """The reranking evaluator's samples: each dev query's positives among its mined negatives."""
    by_query: dict[str, dict] = {}
    for r in _sampled(ds, max_queries, seed):
        s = by_query.setdefault(r["query_id"], {"query": r["query"], "positive": [], "negative": {}})
        if r["positive"] not in s["positive"]:
            s["positive"].append(r["positive"])
        s["negative"].update(zip(r["negative_ids"], r["negatives"], strict=True))
    return [{"query": s["query"], "positive": s["positive"], "negative": list(s["negative"].values())}
            for s in by_query.values() if s["negative"]]


def _errors_only(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR


def new_reranker(base: str, max_length: int, *, seed: int, device: str | None = None,
                 trust_remote_code: bool = False) -> CrossEncoder:
    """The base model's transformer under a fresh one-logit head, initialised from `seed` (not from whatever the
    process drew before). The libraries' warnings that the head is new (transformers' load report) and that a
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
    train_seconds: float
    samples_per_second: float
    log_history: list[dict]
    resumed_from: str | None


def training_arguments(cfg: RerankConfig, output_dir: Path, *, seed: int, has_dev: bool, precision: str = "auto",
                       device: str = "auto", report_to: Sequence[str] = ()) -> CrossEncoderTrainingArguments:
    if not 0 <= cfg.warmup < 1:
        raise ConfigError(f"rerank.warmup is a fraction of the steps, in [0, 1): got {cfg.warmup}")
    on_cuda = torch.cuda.is_available() and device != "cpu"
    best = {"load_best_model_at_end": True, "metric_for_best_model": DEV_METRIC, "greater_is_better": True} \
        if has_dev else {}
    return CrossEncoderTrainingArguments(
        output_dir=str(output_dir / CHECKPOINTS), per_device_train_batch_size=cfg.train_batch_size,
        per_device_eval_batch_size=cfg.batch_size, learning_rate=cfg.learning_rate, num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps, warmup_steps=cfg.warmup, **_precision_flags(precision, on_cuda=on_cuda),
        use_cpu=not on_cuda, eval_strategy="steps" if has_dev else "no", eval_steps=cfg.eval_steps,
        save_strategy="steps", save_steps=cfg.eval_steps, save_total_limit=cfg.save_total_limit, **best,
        logging_steps=max(1, cfg.eval_steps // 4), seed=seed, data_seed=seed, dataloader_pin_memory=on_cuda,
        # under DDP: a CrossEncoder's forward returns a BatchEncoding, in which DDP's search for unused parameters
        # finds no tensor, so it would take every parameter for unused and fail in the first backward; none is
        ddp_find_unused_parameters=False, report_to=list(report_to) or "none")


def train_reranker(model: CrossEncoder, rows: Dataset, dev: list[dict], cfg: RerankConfig, output_dir: Path, *,
                   seed: int, precision: str = "auto", device: str = "auto",
                   report_to: Sequence[str] = (), callbacks: Sequence = ()) -> RerankerTrainResult:
    """Trains `model` in place with BinaryCrossEntropyLoss (positives weighted by the negatives per positive, so
    both labels weigh the same); with dev samples, the best checkpoint by dev nDCG@10 is loaded back at the end.
    `output_dir` must be the same across restarts for `cfg.resume` to find the checkpoints."""
    output_dir = Path(output_dir)
    if len(rows) == 0:
        raise DataError("no reranker training rows: the triplets stage kept no train row with a negative",
                        field="triplets")
    args = training_arguments(cfg, output_dir, seed=seed, has_dev=bool(dev), precision=precision, device=device,
                              report_to=report_to)
    resume_from = _resume_point(output_dir / CHECKPOINTS, cfg.resume, "rerank.resume")
    positives = sum(1 for label in rows["label"] if label == 1.0)
    loss = BinaryCrossEntropyLoss(model, pos_weight=torch.tensor((len(rows) - positives) / max(positives, 1)))
    evaluator = CrossEncoderRerankingEvaluator(dev, at_k=10, name=DEV_NAME, batch_size=cfg.batch_size) if dev else None
    trainer = CrossEncoderTrainer(model=model, args=args, train_dataset=rows.select_columns(list(COLUMNS)),
                                  loss=loss, evaluator=evaluator, callbacks=list(callbacks))
    use_logged_progress(trainer)
    metrics = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None).metrics
    state = trainer.state
    return RerankerTrainResult(best_checkpoint=state.best_model_checkpoint, best_dev_ndcg10=state.best_metric,
                               global_step=state.global_step, train_seconds=metrics["train_runtime"],
                               samples_per_second=metrics["train_samples_per_second"],
                               log_history=list(state.log_history),
                               resumed_from=str(resume_from) if resume_from else None)
