"""Model FLOPs and utilisation (MFU) against a known GPU's dense peak."""

from __future__ import annotations

import re

# Dense peak FLOP/s (no sparsity) for the MFU figures: bf16/fp16 tensor cores, TF32 tensor cores (fp32 training: see
# `peak_dtype`), and plain fp32 (encoding keeps TF32 off). The first name found as a whole word in the device name wins.
PEAK_FLOPS = (("H100 PCIe", {"bf16": 756e12, "tf32": 378e12, "fp32": 51e12}),
              ("H100", {"bf16": 989e12, "tf32": 495e12, "fp32": 67e12}),
              ("H200", {"bf16": 989e12, "tf32": 495e12, "fp32": 67e12}),
              ("A100", {"bf16": 312e12, "tf32": 156e12, "fp32": 19.5e12}),
              ("L40S", {"bf16": 362e12, "tf32": 183e12, "fp32": 91.6e12}),
              ("L4", {"bf16": 121e12, "tf32": 60e12, "fp32": 30.3e12}))


def peak_dtype(precision: str, *, training: bool) -> str:
    """The peak a run in `precision` is measured against: an fp32 training run's matmuls are TF32 where the GPU has it
    (`devices.tf32_matmuls` in `train_model`), an encode's stay plain fp32."""
    from domain_embed import devices

    return "tf32" if precision == "fp32" and training and devices.tf32_native() else precision


def peak_flops(dtype: str) -> tuple[str, float] | None:
    """(GPU name, dense peak FLOP/s in `dtype`) of CUDA device 0; None on a CPU or a GPU not in PEAK_FLOPS."""
    import torch

    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(0)
    for key, peaks in PEAK_FLOPS:
        if re.search(rf"\b{re.escape(key)}\b", name):
            return name, peaks[dtype]
    return None


def mfu(flops: float, seconds: float, dtype: str) -> str:
    """Model FLOP utilisation: `flops` done in `seconds` against the GPU's dense peak in `dtype`."""
    peak = peak_flops(dtype)
    if peak is None:
        import torch

        return (f"MFU unknown ({torch.cuda.get_device_name(0)} is not in PEAK_FLOPS)" if torch.cuda.is_available()
                else "no MFU on a CPU")
    return f"MFU {flops / seconds / peak[1]:.1%} of {peak[1] / 1e12:,.0f} TFLOP/s {dtype}"


def flops_per_token(model) -> float:
    """A forward pass's FLOPs per token: 2 x the parameters every token passes through. The embedding tables are
    lookups and the pooler sees one token per text, so neither counts; attention scores are left out (about 4% at
    MiniLM's lengths)."""
    skipped = sum(p.numel() for n, p in model.named_parameters() if "embeddings" in n or "pooler" in n)
    return 2.0 * (sum(p.numel() for p in model.parameters()) - skipped)

