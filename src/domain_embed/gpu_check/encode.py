"""The encode rows: the package's `Embedder` on the corpus passages in bf16 and fp32, alternated, split into its
phases; each dtype's dev nDCG@10."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from domain_embed.gpu_check.alternate import Side, alternate
from domain_embed.gpu_check.context import DTYPES, SEED, data_slice, package_embedder, peak_memory, reset_peak, sync
from domain_embed.gpu_check.flops import flops_per_token, mfu
from domain_embed.gpu_check.report import Row, judge, median_index

# What this check reads from `Embedder.stats` (retrieval/embed.py's EncodeStats), as running totals: seconds of host
# tokenization, host-to-device copy, compute and device-to-host copy (the last three CUDA-event times on a GPU), then
# the tokens encoded without and with padding.
ENCODE_SPLIT = ("tokenize_s", "h2d_s", "compute_s", "d2h_s")


ENCODE_TOKENS = ("tokens", "padded_tokens")


def snapshot(stats) -> dict[str, float]:
    """The ENCODE_SPLIT and ENCODE_TOKENS running totals of an `Embedder.stats`."""
    return {n: getattr(stats, n) for n in ENCODE_SPLIT + ENCODE_TOKENS}


def encode_breakdown(before: dict[str, float], after: dict[str, float], wall: float) -> dict[str, float]:
    """What one encode added to each total between two snapshots, and how busy the model kept the device: compute
    over the synchronised wall, in %."""
    got = {n: after[n] - before[n] for n in after}
    return got | {"busy": 100 * got["compute_s"] / wall}


def encode_detail(part: dict[str, float], wall: float, flops_token: float, dtype: str, cuda: bool) -> str:
    split = " | ".join(f"{n.removesuffix('_s')} {part[n]:.2f} s" for n in ENCODE_SPLIT)
    padding = part["padded_tokens"] / max(part["tokens"], 1)
    return (f"{split}; {'GPU' if cuda else 'model'} busy {part['busy']:.0f}%; {part['tokens']:,.0f} tokens "
            f"({padding:.2f}x with padding), {mfu(flops_token * part['tokens'], wall, dtype)}")


def check_encode(ctx: dict) -> list[Row]:
    """`Embedder.encode_documents` of the corpus passages (truncated at max_seq_length, no windows, so both dtypes
    see the same text) in bf16 and fp32, alternated; then each dtype's dev nDCG@10 through the package's evaluator."""
    from domain_embed.config import EvalConfig
    from domain_embed.data.chunking import Windows
    from domain_embed.retrieval.evaluate import DEV_SPLIT, evaluate_dense
    from domain_embed.retrieval.metrics import paired_bootstrap

    s, data = ctx["sizes"], data_slice(ctx)
    texts = data.documents()
    embedders = {dtype: package_embedder(ctx, dtype) for dtype in DTYPES}
    for embedder in embedders.values():  # warm-up: weights, tokenizer workers, kernels (compiled ones too) for every
        embedder.encode_documents(texts)  # padded length, the allocator
    sync(ctx)

    def prepare(dtype: str):
        sync(ctx)
        reset_peak(ctx)
        return dtype, snapshot(embedders[dtype].stats)

    def run(prepared) -> tuple:
        dtype, before = prepared
        embedders[dtype].encode_documents(texts)
        sync(ctx)
        return before, snapshot(embedders[dtype].stats), peak_memory(ctx)

    runs = alternate(*(Side(dtype, run, prepare=lambda d=dtype: prepare(d)) for dtype in DTYPES), rounds=s.rounds)
    flops_token = flops_per_token(embedders["fp32"].model)
    rows = []
    for dtype, measured in runs.items():
        i = median_index(measured.seconds)
        wall = measured.seconds[i]
        before, after, peak = measured.results[i]
        part = encode_breakdown(before, after, wall)
        judged = [(f"encode {dtype}", len(texts) / wall), *([("encode busy", part["busy"])] if dtype == "bf16" else [])]
        rows.append(Row(f"encode MiniLM {dtype}", f"{len(texts) / wall:,.0f} passages/s",
                        f"{len(texts):,} passages from {ctx['data_label']}, max_seq_length {s.max_seq_length}, "
                        f"{settings(embedders[dtype])}; median of {s.rounds} runs alternated with the other dtype, "
                        f"{wall:.2f} s [{min(measured.seconds):.2f}, {max(measured.seconds):.2f}]; "
                        f"{encode_detail(part, wall, flops_token, dtype, ctx['cuda'])}; {peak}", judge(ctx, *judged)))
        if ctx["profile"] and dtype == "bf16":
            profile_encode(ctx, embedders[dtype], texts)
    docs = Windows.identity(texts)
    scored = {dtype: evaluate_dense(dtype, embedders[dtype], data, docs, DEV_SPLIT, EvalConfig(k_values=[10]))
              for dtype in DTYPES}
    ndcg = {dtype: scored[dtype].metrics["ndcg@10"] for dtype in DTYPES}
    effect = paired_bootstrap(ndcg["fp32"], ndcg["bf16"], seed=SEED)
    rows.append(Row("encode dtype effect (dev)", f"{effect['delta']:+.4f} nDCG@10",
                    f"bf16 {ndcg['bf16'].mean():.4f} minus fp32 {ndcg['fp32'].mean():.4f} on the dev split "
                    f"({effect['n_queries']:,} queries, 95% CI [{effect['ci95'][0]:+.4f}, {effect['ci95'][1]:+.4f}], "
                    f"p = {effect['p_value']:.2f}), the same exact search on both"))
    return rows


def compiled_encode_row(ctx: dict) -> Row:
    """`eval.compile=true` in bf16: the first encode (compiling, one graph per length bucket) timed apart from the
    second, the row's figure. Beside the eager bf16 row."""
    texts = data_slice(ctx).documents()
    embedder = package_embedder(ctx, "bf16", compile=True)
    sync(ctx)
    t0 = time.perf_counter()
    embedder.encode_documents(texts)
    sync(ctx)
    first, before = time.perf_counter() - t0, snapshot(embedder.stats)
    reset_peak(ctx)
    t0 = time.perf_counter()
    embedder.encode_documents(texts)
    sync(ctx)
    wall = time.perf_counter() - t0
    part = encode_breakdown(before, snapshot(embedder.stats), wall)
    return Row("encode MiniLM bf16 compiled", f"{len(texts) / wall:,.0f} passages/s",
               f"eval.compile=true: {len(texts):,} passages, {settings(embedder)}; the first encode {first:.1f} s "
               f"(compiling included), the second {wall:.2f} s; "
               f"{encode_detail(part, wall, flops_per_token(embedder.model), 'bf16', ctx['cuda'])}; {peak_memory(ctx)}")


def settings(embedder) -> str:
    st = embedder.settings
    return (f"batches of {st.max_batch_tokens:,} tokens, {st.workers} tokenizer workers, compile {st.compile}, "
            f"attention {st.attn_implementation or 'default'}")


def profile_encode(ctx: dict, embedder, texts: list[str]) -> None:
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if ctx["cuda"] else [])
    with profile(activities=activities) as prof:
        embedder.encode_documents(texts)
        sync(ctx)
    export_trace(prof, ctx["profile"] / "encode_trace.json.gz", torch.cuda.is_available())


def export_trace(prof, path: Path, cuda: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    prof.export_chrome_trace(str(path))
    print(prof.key_averages().table(sort_by="cuda_time_total" if cuda else "cpu_time_total", row_limit=15),
          file=sys.stderr)
    print(f"[gpu_check] profiler trace: {path}", file=sys.stderr)

