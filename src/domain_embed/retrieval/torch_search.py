"""The torch backend of exact search (`search.py`): blocked matmul + top-k, for machines without FAISS GPU."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

_RESIDENT_FRACTION = 0.5  # torch keeps the corpus on its device only below this share of free memory


def _free_bytes(device: str) -> int:
    if device == "cuda":
        import torch

        return torch.cuda.mem_get_info()[0]
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _torch_precision(device: str, fp16: bool) -> tuple[torch.dtype, str]:
    """(dtype, label): float32 unless `search.fp16` asks, on every device, so that exact search, the baseline
    metrics and mining margins do not depend on the machine; a 16-bit run says so in its label."""
    import torch

    return (torch.float16, f"torch-{device}(fp16)") if fp16 else (torch.float32, f"torch-{device}")


def torch_searcher(corpus, *, fp16: bool, device: str, block: int):
    """(search of a query block, label): exact top-k by matmul, merged across corpus blocks of `block` rows.

    The corpus stays on the device only if it fits comfortably (moving it there is building this: the caller's
    `add` phase); otherwise its blocks are streamed to the device for every query block: bounded memory at the
    price of more transfers."""
    import torch

    dtype, label = _torch_precision(device, fp16)
    n, d = corpus.shape
    starts = range(0, n, block)

    def load(start: int):
        rows = np.asarray(corpus[start:start + block])
        return torch.from_numpy(rows if rows.flags.writeable else rows.copy()).to(device=device, dtype=dtype)

    resident = n * d * dtype.itemsize < _RESIDENT_FRACTION * _free_bytes(device)
    blocks = [load(s) for s in starts] if resident else None
    log.info("torch search on %s: corpus %s", device, "resident" if resident else "streamed per query block")

    def search_block(q: np.ndarray, k: int):
        with torch.inference_mode():
            qt = torch.from_numpy(q if q.flags.writeable else q.copy()).to(device=device, dtype=dtype)
            best_s = best_i = None
            for b, start in enumerate(starts):
                part = blocks[b] if resident else load(start)
                s, i = torch.topk((qt @ part.T).float(), min(k, part.shape[0]), dim=1)
                i += start
                if best_s is not None:
                    s = torch.cat([best_s, s], 1)
                    s, pos = torch.topk(s, min(k, s.shape[1]), dim=1)  # k may exceed two blocks' worth
                    i = torch.gather(torch.cat([best_i, i], 1), 1, pos)
                best_s, best_i = s, i
            return best_s.cpu().numpy(), best_i.cpu().numpy()

    return search_block, label
