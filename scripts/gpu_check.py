"""A GPU machine, measured through the package, printed as ONE table judged against the aims of one H200.

Rows: versions; exact search on 1M x 384 synthetic vectors (FAISS GPU when this faiss build has GPUs, else the
package's torch backend); the package's `Embedder` encoding the corpus passages, and its trainer (`train_model`,
MNRL, batch 128, one hard negative), each in bf16 and fp32. The two dtypes alternate (A B A B A B, the median of 3
runs, after a warm-up, `torch.cuda.synchronize()` at every boundary). An encode is split into host tokenization,
host-to-device copy, GPU compute and device-to-host copy (`Embedder.stats`, see ENCODE_SPLIT), a training run into
the host's time between steps and the GPU's inside them (CUDA events); both give GPU busy %, MFU from the real
(non-padding) token count and peak GPU memory. The nDCG@10 each encode dtype gives is scored on the dev split
(`model.encode_dtype=auto` rests on it: never on test). Last, the whole pipeline of `python -m train` with the
default recipe, stage by stage (`budget=smoke`, cut further, with --quick). `--profile DIR` writes torch.profiler
traces of one encode and 20 training steps. A missing optional package or data set is a "skipped" row; a check
that fails is a FAILED row and exit code 1.

    bash scripts/gpu_check.sh [--data ../shared/data/legal/obliqa] [--model DIR] [--profile DIR] [--json FILE]
    bash scripts/gpu_check.sh --bundle DIR     # install an offline bundle (scripts/offline_bundle.py), check with it
    bash scripts/gpu_check.sh --quick          # reduced sizes, runs on a CPU-only machine in a few minutes
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from domain_embed.gpu_check import checks
from domain_embed.gpu_check.report import Row, table

REPO = Path(__file__).resolve().parents[1]


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO.parent / "shared/data/legal/obliqa"),
                    help="a BEIR folder (ObliQA by default); synthetic passages when it is missing")
    ap.add_argument("--model", help="a sentence-transformers directory (default: the packaged MiniLM weights)")
    ap.add_argument("--quick", action="store_true", help="reduced sizes: a CPU-only machine finishes in minutes")
    ap.add_argument("--profile", type=Path, help="write torch.profiler traces of an encode and 20 training steps "
                                                 "(3 with --quick) here")
    ap.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                    help="the torch.compile rows (training.torch_compile=true, eval.compile=true); auto: on a GPU "
                         "only (inductor takes minutes on a CPU)")
    ap.add_argument("--json", help="also write the rows to this file")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.quick:
        print("no CUDA device visible: run with --quick for a reduced CPU check", file=sys.stderr)
        return 2
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        data, label = checks.data_folder(args.data, args.quick, Path(tmp))
        ctx = checks.context(cuda=cuda, quick=args.quick, data=data, data_label=label, model=args.model,
                             profile=args.profile, compile_rows={"auto": None, "on": True, "off": False}[args.compile])
        rows, failed = checks.run(ctx)
    rows.append(Row("total", f"{time.perf_counter() - started:.0f} s",
                    "quick (reduced sizes, not judged)" if args.quick else "full sizes"))
    print("\n" + table(rows))
    if args.json:
        checks.write_json(rows, args.json)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
