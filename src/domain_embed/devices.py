"""What the visible accelerator can do natively: the one place that decides half-precision dtypes and the
hardware-dependent speed settings of training.

Training (`training.precision=auto`) and encoding (`model.encode_dtype=auto`) both ask here, so they can
never disagree about a GPU.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def bf16_native() -> bool:
    """bf16 in hardware (Ampere and newer). `torch.cuda.is_bf16_supported()` alone also counts emulation,
    which would make a T4 or V100 train and encode in slow emulated bf16."""
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)


def half_dtype() -> torch.dtype:
    """The fast 16-bit dtype of the visible GPU: bf16 where native, else fp16."""
    return torch.bfloat16 if bf16_native() else torch.float16


def tf32_native() -> bool:
    """TF32 matmuls in hardware (Ampere and newer): fp32 work on tensor cores, at a 10-bit mantissa."""
    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8


@contextmanager
def tf32_matmuls(enabled: bool) -> Iterator[None]:
    """TF32 for the fp32 matmuls inside the block only (training), so that encoding before and after it in the same
    process gives the same vectors as in a fresh one. Not through TrainingArguments(tf32=True), which switches it on
    for the whole process."""
    saved = torch.get_float32_matmul_precision()
    if enabled:
        torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(saved)


def loader_workers(on_cuda: bool) -> int:
    """DataLoader workers that tokenize the next batches while the GPU trains (up to 4, one core left to the main
    process). None on CPU: the model itself wants every core there, and tokenizing is a small share of a step."""
    if not on_cuda:
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(0, min(4, cores - 1))


def pad_multiple(on_cuda: bool) -> int | None:
    """Batches padded to a multiple of 8 tokens fit tensor-core tiles; on CPU that is only extra tokens."""
    return 8 if on_cuda else None
