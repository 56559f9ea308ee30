"""Device timing of `Embedder`'s encodes: what they did and where their time went."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass
class EncodeStats:
    """What this process encoded, and where the time of its encodes went (summed over them).

    The time split: `tokenize_s` is host tokenization (summed over the workers when they tokenize ahead, so it
    overlaps the model there), `h2d_s` host-to-device copies, `compute_s` the model (forward, pooling, normalising),
    `d2h_s` the one device-to-host copy per shard. On CUDA the last three are CUDA-event times on the GPU; on CPU
    `compute_s` is wall time and the copies are 0. `seconds` is the wall time of the encodes. `tokens` counts real
    (non-padding) tokens, `padded_tokens` what the model computed, padding included: their ratio is the padding
    overhead, and `tokens` is what a FLOP count (MFU) should use."""

    corpus_encodes: int = 0  # full corpus encodings computed (cache misses), counted once, on rank 0
    shards_encoded: int = 0  # shards this process encoded (a resumed encode skips the finished ones)
    texts_encoded: int = 0  # texts this process encoded
    cache_hits: int = 0
    seconds: float = 0.0
    batches: int = 0
    tokens: int = 0
    padded_tokens: int = 0
    tokenize_s: float = 0.0
    h2d_s: float = 0.0
    compute_s: float = 0.0
    d2h_s: float = 0.0

    def minus(self, before: EncodeStats) -> EncodeStats:
        return EncodeStats(**{name: value - getattr(before, name) for name, value in vars(self).items()})


class Clock:
    """Times the device phases of one shard. On CUDA: events recorded on the current stream of the model's device
    (where its copies and kernels run, whichever device is current), read after the shard's last event has
    completed: `add_to` waits for that one first (the shard's one sync), since torch refuses `elapsed_time` of an
    event still pending. On CPU: perf_counter around the model (host-device copies are none there)."""

    def __init__(self, device):
        import torch

        self.device = torch.device(device)
        self.cuda, self.spans = self.device.type == "cuda", []

    @contextmanager
    def span(self, name: str) -> Iterator[None]:
        if self.cuda:
            import torch

            stream = torch.cuda.current_stream(self.device)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(stream)
            yield
            end.record(stream)
            self.spans.append((name, start, end))
        elif name == "compute":
            t0 = time.perf_counter()
            yield
            self.spans.append((name, t0, time.perf_counter()))
        else:
            yield

    def add_to(self, stats: EncodeStats) -> None:
        """Waits for the last recorded event (one stream: every earlier one is then complete too), then adds every
        span into `stats`."""
        if self.cuda and self.spans:
            self.spans[-1][2].synchronize()
        for name, start, end in self.spans:
            seconds = start.elapsed_time(end) / 1000 if self.cuda else end - start
            setattr(stats, f"{name}_s", getattr(stats, f"{name}_s") + seconds)
        self.spans.clear()
