"""Fine-tuning through sentence-transformers' trainer (HF Trainer + Accelerate underneath).

`TrainingConfig` is mapped onto `SentenceTransformerTrainingArguments` here and nowhere else, so mixed precision,
DDP, checkpoint rotation, best-checkpoint selection and exact resumption all come from the HF Trainer rather than
from a hand-written loop. What makes the loop fed on a GPU (loader workers, padding to tensor-core tiles, fused AdamW,
TF32) is decided by devices.py; none of it changes a CPU run's numbers.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
from datasets import Dataset
from packaging.version import Version
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator
from sentence_transformers.sentence_transformer.trainer import SentenceTransformerTrainer
from sentence_transformers.sentence_transformer.training_args import (
    BatchSamplers,
    SentenceTransformerTrainingArguments,
)
from sentence_transformers.util import cos_sim
from transformers import EarlyStoppingCallback, TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer import TRAINER_STATE_NAME

from domain_embed import devices, distributed
from domain_embed.config import LoraConfig, TrainingConfig
from domain_embed.errors import ConfigError
from domain_embed.rundir import publish_dir
from domain_embed.tuning.losses import build_loss, columns_for
from domain_embed.tuning.progress import use_logged_progress

log = logging.getLogger(__name__)

DEV_NAME = "dev"
DEV_METRIC = "cosine_ndcg@10"  # the evaluator reports it as f"{name}_{DEV_METRIC}", the trainer as "eval_..."
CHECKPOINTS = "checkpoints"
_CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")


@dataclass
class DevSet:
    """Training-time dev retrieval task: picks the best checkpoint and drives early stopping."""

    queries: dict[str, str]
    corpus: dict[str, str]
    relevant: dict[str, set[str]]


@dataclass
class TrainResult:
    best_checkpoint: Path | None  # None without a dev set
    best_dev_ndcg10: float | None
    global_step: int
    log_history: list[dict]  # trainer.state.log_history: loss, learning_rate, grad_norm, eval_* rows
    train_seconds: float
    samples_per_second: float
    resumed_from: Path | None = None


def build_dev_evaluator(dev: DevSet, batch_size: int, name: str = DEV_NAME, *, query_prompt: str = "",
                        document_prompt: str = "") -> InformationRetrievalEvaluator:
    """Cosine scoring is fixed so the primary key is always `{name}_cosine_ndcg@10`, whatever the model's
    similarity function; prompts must match the ones the baseline was evaluated with. Its encode shows no bar: one
    bar at a time, the trainer's (tuning.progress logs each evaluation's result)."""
    return InformationRetrievalEvaluator(
        queries=dev.queries, corpus=dev.corpus, relevant_docs=dev.relevant, name=name, batch_size=batch_size,
        score_functions={"cosine": cos_sim}, ndcg_at_k=[10], mrr_at_k=[10], accuracy_at_k=[1, 10],
        precision_recall_at_k=[1, 10], map_at_k=[100],
        query_prompt=query_prompt or None, corpus_prompt=document_prompt or None)


def _precision_flags(precision: str, on_cuda: bool) -> dict[str, bool]:
    """auto: bf16 where the GPU has it natively, else fp16 (emulated bf16 is slow); CPUs train in fp32 (autocast
    there is slower)."""
    if precision == "auto":
        bf16 = on_cuda and devices.bf16_native()
        return {"bf16": bf16, "fp16": on_cuda and not bf16}
    if precision in ("fp32", "bf16", "fp16"):
        return {"bf16": precision == "bf16", "fp16": precision == "fp16"}
    raise ConfigError(f"unknown training.precision '{precision}' (expected auto, fp32, bf16 or fp16)")


def _prompts(columns: list[str], query_prompt: str, document_prompt: str) -> dict[str, str] | None:
    prompts = {c: query_prompt if c == "anchor" else document_prompt for c in columns}
    return {c: p for c, p in prompts.items() if p} or None


def training_arguments(cfg: TrainingConfig, output_dir: Path, *, seed: int, columns: list[str], has_dev: bool,
                       report_to: Sequence[str] = (), device: str = "auto", query_prompt: str = "",
                       document_prompt: str = "") -> SentenceTransformerTrainingArguments:
    """The one mapping from `TrainingConfig` to the trainer's arguments (checkpoints go to output_dir/checkpoints).
    When to checkpoint is `CheckpointCadence`'s decision, not `save_steps` here."""
    if not 0 <= cfg.warmup < 1:
        raise ConfigError(f"training.warmup is a fraction of the steps, in [0, 1): got {cfg.warmup}")
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"unknown device '{device}' (expected auto, cpu or cuda)")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA device is visible")
    on_cuda = torch.cuda.is_available() and device != "cpu"
    workers = devices.loader_workers(on_cuda) if cfg.dataloader_workers is None else cfg.dataloader_workers
    use_cpu = not on_cuda  # also tells Accelerate to run DDP over gloo when launched on CPUs
    best = {"load_best_model_at_end": True, "metric_for_best_model": f"eval_{DEV_NAME}_{DEV_METRIC}",
            "greater_is_better": True} if has_dev else {}
    args = SentenceTransformerTrainingArguments(
        output_dir=str(output_dir / CHECKPOINTS),
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        warmup_steps=cfg.warmup,  # transformers 5: a float below 1 is a fraction of the total steps
        weight_decay=cfg.weight_decay,
        lr_scheduler_type=cfg.scheduler,
        **_precision_flags(cfg.precision, on_cuda=on_cuda),
        use_cpu=use_cpu,
        # a duplicate text in a batch would be a false in-batch negative; the texts are hashed once (xxhash, as
        # datasets does), not re-read from Arrow for every batch: the same batches
        batch_sampler=BatchSamplers.NO_DUPLICATES_HASHED,
        optim="adamw_torch_fused",  # one kernel for all parameters, on CUDA and on CPU (torch >= 2.4)
        torch_compile=cfg.torch_compile,
        prompts=_prompts(columns, query_prompt, document_prompt),
        eval_strategy="steps" if has_dev else "no",
        eval_steps=cfg.eval_steps,
        save_strategy="steps",
        save_steps=cfg.eval_steps,  # a multiple of eval_steps, as load_best_model_at_end asks; CheckpointCadence rules
        save_total_limit=cfg.save_total_limit,
        **best,
        restore_callback_states_from_checkpoint=True,  # early-stopping patience survives a resume
        logging_steps=cfg.logging_steps,
        logging_nan_inf_filter=False,  # True reads the loss back to the host after every step: a GPU sync
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=workers,
        dataloader_persistent_workers=workers > 0,  # not started again for every epoch
        dataloader_pin_memory=on_cuda,
        dataloader_drop_last=distributed.world_size() > 1,  # equal steps on every rank
        report_to=list(report_to) or "none",
    )
    if args.n_gpu > 1:
        # no launcher: the HF Trainer would feed every GPU from this one process through nn.DataParallel (slower
        # than DDP, and untested here). Pinned here rather than by hiding GPUs through CUDA_VISIBLE_DEVICES, which
        # counts only until CUDA starts (importing bm25s starts it where JAX is installed), and which would also
        # take the other GPUs from FAISS search
        distributed.warn_one_gpu(args.n_gpu)
        args._n_gpu = 1  # as the HF Trainer itself does to keep nn.DataParallel off
    return args


class CheckpointCadence(TrainerCallback):
    """Decides every checkpoint (a full one, with optimizer state): every `steps` steps, once `minutes` of wall time
    have passed since the last one, at the end, and whenever an evaluation beats every earlier one, so the best model
    is on disk for load_best_model_at_end without a checkpoint at every evaluation. Any checkpoint resumes exactly.

    Under a launcher every rank must save at the same step (saving holds a barrier; a rank that skips it starts the
    next step's all-reduce and the ranks hang), so rank 0's clock decides for all."""

    def __init__(self, steps: int | None, minutes: float | None, clock: Callable[[], float] = time.monotonic):
        self.steps, self.minutes, self.clock = steps, minutes, clock
        self._last = clock()

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        self._last = self.clock()

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        # overrides the HF Trainer's own step cadence (set just before, by its DefaultFlowCallback)
        control.should_save = (state.global_step >= state.max_steps
                               or bool(self.steps and state.global_step % self.steps == 0)
                               or (self.minutes is not None and _time_is_up(self.clock, self._last, self.minutes)))

    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, metrics=None,
                    **kwargs):
        # runs before the trainer records the best metric: the same comparison it is about to make
        value = (metrics or {}).get(args.metric_for_best_model) if args.load_best_model_at_end else None
        if value is not None and (state.best_metric is None or value > state.best_metric):
            control.should_save = True

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        self._last = self.clock()


@distributed.main_only
def _time_is_up(clock: Callable[[], float], since: float, minutes: float) -> bool:
    """Rank 0's answer on every rank (a gloo broadcast per step, no GPU sync): the ranks' clocks may disagree."""
    return clock() - since >= 60 * minutes


def _training_columns(dataset: Dataset, cfg: TrainingConfig) -> tuple[Dataset, list[str]]:
    """Keeps only the loss's columns, in its order: losses read texts by position, so an extra column
    (an id, a score) would silently become a "negative"."""
    columns = columns_for(cfg.loss, cfg.num_negatives)
    if missing := [c for c in columns if c not in dataset.column_names]:
        raise ConfigError(f"training.loss={cfg.loss} with num_negatives={cfg.num_negatives} needs columns "
                          f"{columns}; the training set lacks {missing} (it has {dataset.column_names})")
    return dataset.select_columns(columns), columns


def _add_lora(model: SentenceTransformer, lora: LoraConfig) -> None:
    """Adds the adapter through the transformers integration, which also saves and reloads it in checkpoints."""
    from transformers.integrations.peft import MIN_PEFT_VERSION

    try:
        found = version("peft")
    except PackageNotFoundError:
        found = None
    if found is None or Version(found) < Version(MIN_PEFT_VERSION):
        raise ConfigError(f"training.lora.enabled needs peft >= {MIN_PEFT_VERSION} (found {found or 'none'}): "
                          "pip install 'domain-embed[lora]'")
    from peft import LoraConfig as PeftLoraConfig
    from peft import TaskType

    model.add_adapter(PeftLoraConfig(task_type=TaskType.FEATURE_EXTRACTION, r=lora.r, lora_alpha=lora.alpha,
                                     lora_dropout=lora.dropout, target_modules=lora.target_modules))


def _complete_checkpoints(folder: Path) -> list[Path]:
    """Checkpoints by step, newest first. The trainer writes trainer_state.json last, so a checkpoint
    without it was cut short by a kill and cannot be resumed from."""
    found = [(int(m.group(1)), p) for p in folder.glob("checkpoint-*") if (m := _CHECKPOINT_DIR.match(p.name))]
    complete = []
    for _, path in sorted(found, reverse=True):
        if (path / TRAINER_STATE_NAME).is_file():
            complete.append(path)
        else:
            log.warning("ignoring incomplete checkpoint %s (no %s)", path, TRAINER_STATE_NAME)
    return complete


def _resume_point(checkpoints_dir: Path, resume: bool, key: str = "training.resume") -> Path | None:
    """Where to continue from; refuses to start over on top of an earlier run's checkpoints, whose
    rotation and best-model bookkeeping would mix with the new run's."""
    existing = _complete_checkpoints(checkpoints_dir) if checkpoints_dir.is_dir() else []
    if resume:
        if existing:
            log.info("resuming from %s", existing[0])
            return existing[0]
        log.info("%s=true but no checkpoint in %s: starting fresh", key, checkpoints_dir)
        return None
    if existing:
        raise ConfigError(f"{checkpoints_dir} holds checkpoints of an earlier run ({existing[0].name}): set "
                          f"{key}=true to continue it, or remove the folder to start over")
    return None


def train_model(model: SentenceTransformer, train_dataset: Dataset, dev: DevSet | None, cfg: TrainingConfig,
                output_dir: Path, *, seed: int, guide: SentenceTransformer | None = None,
                report_to: Sequence[str] = (), callbacks: Sequence[TrainerCallback] = (), device: str = "auto",
                query_prompt: str = "", document_prompt: str = "", dev_batch_size: int | None = None) -> TrainResult:
    """Trains `model` in place. With a dev set, the best checkpoint by dev nDCG@10 is loaded back at the end.
    `output_dir` must be the same folder across restarts for `cfg.resume` to find the checkpoints. The dev set is
    encoded `dev_batch_size` texts at a time (the run's encode batch size; None: the training batch size)."""
    output_dir = Path(output_dir)
    if cfg.early_stopping_patience is not None and dev is None:
        raise ConfigError("training.early_stopping_patience needs a dev set to watch")
    dataset, columns = _training_columns(train_dataset, cfg)
    # around building the arguments too: with torch_compile on an Ampere GPU, transformers turns TF32 on there, for
    # the whole process
    with devices.tf32_matmuls(devices.on_cuda(device) and devices.tf32_native()):
        args = training_arguments(cfg, output_dir, seed=seed, columns=columns, has_dev=dev is not None,
                                  report_to=report_to, device=device, query_prompt=query_prompt,
                                  document_prompt=document_prompt)
        resume_from = _resume_point(output_dir / CHECKPOINTS, cfg.resume)
        on_cuda = not args.use_cpu
        if cfg.lora.enabled:  # only after every check, since it changes the model
            _add_lora(model, cfg.lora)
        # after LoRA, so that its inputs get the gradients checkpointing needs; on the model, not through the
        # arguments: transformers 5.17 has no activation_checkpointing argument, and from either name the HF Trainer
        # passes keywords (every_n_layers, offload) that sentence-transformers before 6.2 refuses
        if cfg.gradient_checkpointing or devices.recompute_activations(on_cuda):
            model.gradient_checkpointing_enable()
        loss = build_loss(model, cfg, guide)
        evaluator = None if dev is None else build_dev_evaluator(
            dev, dev_batch_size or cfg.batch_size, query_prompt=query_prompt, document_prompt=document_prompt)
        all_callbacks = [CheckpointCadence(cfg.save_steps, cfg.checkpoint_minutes), *callbacks]
        if cfg.early_stopping_patience is not None:
            all_callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience))
        trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset, loss=loss,
                                             evaluator=evaluator, callbacks=all_callbacks)
        use_logged_progress(trainer)
        if multiple := devices.pad_multiple(on_cuda, model.max_seq_length):  # the collator's: the model is as before
            trainer.data_collator.preprocess_fn = functools.partial(
                model.preprocess, processing_kwargs={"text": {"pad_to_multiple_of": multiple}})
        metrics = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None).metrics
    state = trainer.state
    return TrainResult(
        best_checkpoint=Path(state.best_model_checkpoint) if state.best_model_checkpoint else None,
        best_dev_ndcg10=state.best_metric,
        global_step=state.global_step,
        log_history=list(state.log_history),
        train_seconds=metrics["train_runtime"],
        samples_per_second=metrics["train_samples_per_second"],
        resumed_from=resume_from,
    )


def _merge_lora(model: SentenceTransformer) -> None:
    """Folds LoRA weights into the base layers (in place) so the saved directory is a plain model that
    loads without peft or the base model."""
    if not model.has_peft_compatible_model() or not getattr(model.transformers_model, "peft_config", None):
        return
    from peft.tuners.tuners_utils import BaseTunerLayer

    hf_model = model.transformers_model
    for name, module in list(hf_model.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge()
            parent, _, child = name.rpartition(".")
            setattr(hf_model.get_submodule(parent), child, module.get_base_layer())
    hf_model.delete_adapter(list(hf_model.peft_config))


def _with_card_section(card: str, card_data: dict) -> str:
    """Puts our section first in the body, after the YAML front matter the Hub reads, so that it is not buried
    under the template's empty placeholders."""
    config = json.dumps(card_data["training_config"], indent=2, sort_keys=True, default=str)
    section = ("# Domain-adapted model (domain-embed)\n\n## Retrieval before and after fine-tuning\n\n"
               f"{card_data['metrics_table'].strip()}\n\n## Training configuration\n\n```json\n{config}\n```\n\n")
    match = re.match(r"---\n.*?\n---\n+", card, flags=re.DOTALL)
    head = match.group(0) if match else ""
    return head + section + card[len(head):]


def save_model(model: SentenceTransformer, path: Path, card_data: dict) -> Path:
    """Saves a standard sentence-transformers directory whose README.md (sentence-transformers' own card) opens
    with `card_data["metrics_table"]` (markdown) and `card_data["training_config"]` (a dict). Written to a
    temporary sibling first and renamed, so `path` never holds half a model."""
    path = Path(path)
    with publish_dir(path) as tmp:
        _merge_lora(model)
        model.save(str(tmp))
        readme = tmp / "README.md"
        card = readme.read_text(encoding="utf-8") if readme.exists() else ""  # absent if the card generator failed
        readme.write_text(_with_card_section(card, card_data), encoding="utf-8")
    return path
