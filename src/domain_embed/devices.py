"""What the visible accelerator can do natively: the one place that decides half-precision dtypes and the
hardware-dependent speed settings of training and encoding.

Training (`training.precision=auto`) and encoding (`model.encode_dtype=auto`, the `eval.*` encode keys) all ask
here, so they can never disagree about a GPU.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch

from domain_embed import distributed


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


def _precision_switches() -> tuple[str, object, list]:
    """(attribute, its TF32 value, the objects holding it: the generic one first, its children after) of torch's
    fp32 precision switches. torch >= 2.9 has the new `fp32_precision` API, which transformers uses; once it is set,
    reading the legacy one (`get_float32_matmul_precision`, `allow_tf32`) raises "mix of the legacy and new APIs"."""
    b = torch.backends
    if hasattr(b, "fp32_precision"):
        return "fp32_precision", "tf32", [b, b.cuda.matmul, b.cudnn, b.cudnn.conv, b.cudnn.rnn, b.mkldnn,
                                          b.mkldnn.matmul, b.mkldnn.conv, b.mkldnn.rnn]
    return "allow_tf32", True, [b.cuda.matmul, b.cudnn]


@contextmanager
def tf32_matmuls(enabled: bool) -> Iterator[None]:
    """TF32 for the fp32 CUDA matmuls inside the block only (training), so that encoding before and after it in the
    same process gives the same vectors as in a fresh one. Every precision switch is put back on the way out, also
    the ones set inside the block by others: building TrainingArguments with torch_compile turns TF32 on for the
    whole process (transformers' `enable_tf32`). Only switches that changed are written, so a block that changed
    nothing leaves a legacy-API user's settings readable."""
    name, tf32, holders = _precision_switches()
    saved = [(holder, getattr(holder, name)) for holder in holders]
    if enabled:
        setattr(torch.backends.cuda.matmul, name, tf32)
    try:
        yield
    finally:
        for holder, value in saved:  # the generic switch first: setting it resets its children
            if getattr(holder, name) != value:
                setattr(holder, name, value)


def loader_workers(on_cuda: bool) -> int:
    """DataLoader workers that tokenize the next batches while the GPU trains or encodes (up to 4 per rank, one
    of the rank's cores left to its main process). None on CPU: the model itself wants every core there, and
    tokenizing is a small share of a step."""
    if not on_cuda:
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    per_rank = max(1, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1))))
    return max(0, min(4, per_rank - 1))


def recompute_activations(on_cuda: bool) -> bool:
    """Gradient checkpointing whatever `training.gradient_checkpointing` says, on CPU: the default recipe (MiniLM,
    batch 32, three negatives, 256 tokens) otherwise holds 5-15 GB of activations per step there, and with it
    under 6 GB (scripts/bench_train_memory.py). The layers' forward runs again in the backward pass with the same
    dropout masks (the RNG state is kept), so the losses and weights are those of a run that keeps its activations,
    for about a third more compute. A GPU keeps them unless asked: its memory is the user's to size."""
    return not on_cuda


def pad_multiple(on_cuda: bool, window: int) -> int | None:
    """Batches padded to a multiple of 8 tokens fit tensor-core tiles; on CPU that is only extra tokens. Never for
    a model window off the 8-token grid: a text cut at the window would be padded past it, to positions the model
    may not have."""
    return 8 if on_cuda and window % 8 == 0 else None


def placement(device: str | None) -> str | None:
    """Where a model this package loads itself goes, for a `device` setting. `auto` on a GPU machine is this rank's
    GPU among the visible ones (`distributed.cuda_device`): left to sentence-transformers, it would be
    cuda:LOCAL_RANK, which does not exist where a launcher shows each task only its own GPU (LOCAL_RANK=3, one GPU
    visible). Elsewhere None lets the library choose (cpu, mps)."""
    if device not in (None, "auto"):
        return device
    return f"cuda:{distributed.cuda_device()}" if torch.cuda.is_available() else None


def on_cuda(device: str | None) -> bool:
    """Whether an encode with this `device` setting (None or "auto": the default) runs on a GPU."""
    return torch.cuda.is_available() and (device in (None, "auto") or device.startswith("cuda"))


def flash_attention_native(device: str | None) -> bool:
    """flash-attn 2 runs on Ampere and newer (compute capability 8.0) only: it raises on a T4 or V100."""
    return torch.cuda.get_device_capability(torch.device(placement(device)))[0] >= 8


@dataclass(frozen=True)
class EncodeSettings:
    """How `Embedder` batches and shards an encode on one device: the one place where `auto` is settled."""

    max_batch_tokens: int  # tokens per forward pass, padding included
    workers: int  # DataLoader processes tokenizing ahead of the model (0: the main thread does, in series)
    shard_rows: int  # rows per published shard (before the at-most-1,024-shards rule)
    compile: bool  # torch.compile the model, sequences padded up to length buckets
    attn_implementation: str | None  # None: transformers' default for the model (sdpa for BERT)


# Chosen on the 2-core development CPU with MiniLM, fp32, 160 ObliQA passages at 256 tokens (docs/benchmarks-encode.md):
# budgets of 16,384 / 8,192 / 4,096 / 2,048 / 1,024 tokens computed 2.05 / 1.67 / 1.42 / 1.28 / 1.21x the real tokens
# (padding), and 4,096 was the fastest (smaller batches lost more to per-batch work than padding saved); workers
# would take cores from the model there; a 256-row shard is ~15 s of CPU encode: a kill loses little. Compiled, the
# encode ran 1.19x slower (the 64-token buckets pad 22% more tokens; per token no faster) after ~45 s of compiling.
_CPU = EncodeSettings(max_batch_tokens=4096, workers=0, shard_rows=256, compile=False, attn_implementation=None)
# On a GPU: large batches keep it busy, tokenization runs in worker processes, a shard is tens of thousands of rows
# (one device-to-host copy each) and attention skips padding where flash-attn is installed.
_GPU = EncodeSettings(max_batch_tokens=131_072, workers=4, shard_rows=32_768, compile=False,
                      attn_implementation="flash_attention_2")


def encode_settings(device: str | None, half: bool, *, max_batch_tokens: int | str = "auto",
                    workers: int | str = "auto", shard_rows: int | str = "auto", compile: bool | str = "auto",
                    attn_implementation: str = "auto") -> EncodeSettings:
    """Fills each `auto` with this device's default; explicit values are kept (and checked). Flash attention
    (unpadded: sentence-transformers then packs the texts of a batch without padding) is the GPU default only in a
    16-bit dtype, when the flash-attn package is installed and the GPU is Ampere or newer; otherwise transformers'
    own default stays (sdpa for BERT)."""
    from domain_embed.errors import ConfigError

    gpu = on_cuda(device)
    base = _GPU if gpu else _CPU
    attn = base.attn_implementation
    if attn == "flash_attention_2":
        from transformers.utils import is_flash_attn_2_available

        attn = attn if half and is_flash_attn_2_available() and flash_attention_native(device) else None
    if gpu:
        base = replace(base, workers=min(base.workers, loader_workers(True)))
    chosen = EncodeSettings(
        max_batch_tokens=base.max_batch_tokens if max_batch_tokens == "auto" else max_batch_tokens,
        workers=base.workers if workers == "auto" else workers,
        shard_rows=base.shard_rows if shard_rows == "auto" else shard_rows,
        compile=base.compile if compile == "auto" else compile,
        attn_implementation=attn if attn_implementation == "auto" else attn_implementation)
    for name in ("max_batch_tokens", "workers", "shard_rows"):
        value = getattr(chosen, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < (0 if name == "workers" else 1):
            raise ConfigError(f"eval.{name} must be auto or an integer >= {0 if name == 'workers' else 1}, "
                              f"got {value!r}")
    if not isinstance(chosen.compile, bool):
        raise ConfigError(f"eval.compile must be auto, true or false, got {chosen.compile!r}")
    return chosen


def machine(device) -> str:
    """The device a speed figure was measured on, as the report states it (a time means little without it)."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} ({device})"
    return f"CPU, {torch.get_num_threads()} torch threads of {os.cpu_count()} cores"
