"""What the visible accelerator can do natively: the one place that decides half-precision dtypes.

Training (`training.precision=auto`) and encoding (`model.encode_dtype=auto`) both ask here, so they can
never disagree about a GPU.
"""

from __future__ import annotations

import torch


def bf16_native() -> bool:
    """bf16 in hardware (Ampere and newer). `torch.cuda.is_bf16_supported()` alone also counts emulation,
    which would make a T4 or V100 train and encode in slow emulated bf16."""
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)


def half_dtype() -> torch.dtype:
    """The fast 16-bit dtype of the visible GPU: bf16 where native, else fp16."""
    return torch.bfloat16 if bf16_native() else torch.float16
