"""scripts/gpu_check.py on a CPU: what it measures (the package's Embedder and trainer, dtypes alternated, the
warm-up and the final save outside the timed steps, quality on dev), the FLOP and MFU arithmetic with faked GPU
names, and the verdicts against the aims."""

import dataclasses
import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import gpu_check  # noqa: E402

from domain_embed.gpu_check import checks, context, encode, flops, report, training  # noqa: E402


def test_a_failing_command_that_printed_nothing_is_reported_not_raised():
    silent = subprocess.CompletedProcess(["x"], 1, stdout="", stderr="")
    assert report.last_line(silent) == "(no output)"
    only_stdout = subprocess.CompletedProcess(["x"], 1, stdout="a\nKilled\n", stderr="  \n")
    assert report.last_line(only_stdout) == "Killed"
    both = subprocess.CompletedProcess(["x"], 2, stdout="ok", stderr="error: data.path missing\n")
    assert report.last_line(both) == "error: data.path missing"


def _fake_gpu(monkeypatch, name: str | None) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: name is not None)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)


@pytest.mark.parametrize(("name", "dtype", "peak"), [
    ("NVIDIA H200", "bf16", 989),
    ("NVIDIA H200", "fp32", 67),  # plain fp32: an encode keeps TF32 off
    ("NVIDIA H200", "tf32", 495),  # fp32 training on a GPU with TF32
    ("NVIDIA H100 80GB HBM3", "bf16", 989),
    ("NVIDIA H100 PCIe", "bf16", 756),
    ("NVIDIA A100-SXM4-80GB", "bf16", 312),
    ("NVIDIA L40S", "bf16", 362),
    ("NVIDIA L4", "fp32", 30),
])
def test_model_flop_utilisation_against_a_known_gpus_peak(monkeypatch, name, dtype, peak):
    _fake_gpu(monkeypatch, name)
    found, per_second = flops.peak_flops(dtype)
    assert found == name and round(per_second / 1e12) == peak
    assert flops.mfu(0.25 * per_second * 2.0, 2.0, dtype) == f"MFU 25.0% of {peak:,} TFLOP/s {dtype}"


@pytest.mark.parametrize("name", ["NVIDIA L40", "NVIDIA GH200 480GB", "NVIDIA GeForce RTX 4090"])
def test_no_utilisation_is_claimed_on_an_unknown_gpu_or_a_cpu(monkeypatch, name):
    _fake_gpu(monkeypatch, name)  # an L40 is not an L4, a GH200 not an H200: whole names only
    assert flops.peak_flops("bf16") is None
    assert flops.mfu(1e12, 1.0, "bf16") == f"MFU unknown ({name} is not in PEAK_FLOPS)"
    _fake_gpu(monkeypatch, None)
    assert flops.mfu(1e12, 1.0, "bf16") == "no MFU on a CPU"


def test_flops_per_token_counts_the_layers_a_token_passes_through(tiny_model):
    """2 x the encoder layers' weights and biases, counted from the BERT config; the embedding tables (lookups) and
    the pooler (one token per text) are not."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(tiny_model), device="cpu")
    c = model[0].auto_model.config
    d, ff = c.hidden_size, c.intermediate_size
    per_layer = 4 * (d * d + d) + (d * ff + ff) + (ff * d + d) + 2 * (2 * d)  # q k v o, up, down, 2 layer norms
    assert flops.flops_per_token(model) == 2 * c.num_hidden_layers * per_layer
    assert flops.flops_per_token(model) < 2 * sum(p.numel() for p in model.parameters()) / 10  # tables dominate


def test_aims_are_judged_only_on_a_full_gpu_run():
    assert report.AIMS["encode bf16"].verdict(20_000) == ">= 20,000 passages/s: met"
    assert report.AIMS["encode bf16"].verdict(19_999) == ">= 20,000 passages/s: MISSED"
    assert report.AIMS["search"].verdict(1.2) == "<= 1 s: MISSED"
    assert report.AIMS["pipeline"].verdict(59) == "<= 60 s: met"
    judged = report.judge({"judged": True}, ("encode bf16", 25_000), ("encode busy", 70))
    assert judged == ">= 20,000 passages/s: met; >= 80 % GPU busy: MISSED"
    assert report.judge({"judged": False}, ("encode bf16", 25_000)) == ""
    table = report.table([report.Row("search torch", "9 queries/s", "detail", "<= 1 s: met"),
                             report.Row("total", "3 s", "full sizes")])
    assert table.splitlines()[2].split() == ["search", "torch", "9", "queries/s", "<=", "1", "s:", "met", "detail"]
    assert table.splitlines()[3].split()[:4] == ["total", "3", "s", "-"]


def test_the_median_run_is_picked_by_its_time():
    assert report.median_index([3.0, 1.0, 2.0]) == 2
    assert report.median_index([1.0, 2.0]) == 1  # of two, the slower: no figure better than both runs' middle


def test_an_encode_is_split_from_the_embedders_running_totals():
    from domain_embed.retrieval.embed import EncodeStats

    before = encode.snapshot(EncodeStats(tokenize_s=1.0, h2d_s=0.1, compute_s=2.0, d2h_s=0.2, tokens=1000,
                                            padded_tokens=1500, seconds=9.0))
    after = encode.snapshot(EncodeStats(tokenize_s=1.5, h2d_s=0.15, compute_s=2.8, d2h_s=0.25, tokens=3000,
                                           padded_tokens=4500, seconds=10.0))
    part = encode.encode_breakdown(before, after, wall=1.0)
    assert part == pytest.approx({"tokenize_s": 0.5, "h2d_s": 0.05, "compute_s": 0.8, "d2h_s": 0.05, "tokens": 2000,
                                  "padded_tokens": 3000, "busy": 80.0})
    detail = encode.encode_detail(part, 1.0, 10.0, "bf16", cuda=True)
    assert "tokenize 0.50 s | h2d 0.05 s | compute 0.80 s | d2h 0.05 s; GPU busy 80%" in detail
    assert "2,000 tokens (1.50x with padding)" in detail


def _ctx(tiny_model, tiny_beir, profile=None, **kwargs) -> dict:
    return checks.context(cuda=False, quick=True, data=tiny_beir, data_label="tiny BEIR", model=str(tiny_model),
                          profile=profile, **kwargs)


def test_encode_times_the_packages_embedder_alternating_dtypes_and_scores_them_on_dev(tiny_model, tiny_beir,
                                                                                     monkeypatch, tmp_path):
    import domain_embed.retrieval.evaluate as evaluate
    from domain_embed.retrieval.embed import Embedder

    encodes, splits = [], []
    original_encode, original_evaluate = Embedder.encode_documents, evaluate.evaluate_dense

    def encode_documents(self, texts, **kwargs):
        encodes.append(self.encode_dtype)
        return original_encode(self, texts, **kwargs)

    def evaluate_dense(name, embedder, data, windows, split, cfg, *args, **kwargs):
        splits.append((name, split))
        return original_evaluate(name, embedder, data, windows, split, cfg, *args, **kwargs)

    monkeypatch.setattr(Embedder, "encode_documents", encode_documents)
    monkeypatch.setattr(evaluate, "evaluate_dense", evaluate_dense)
    rows = encode.check_encode(_ctx(tiny_model, tiny_beir, profile=tmp_path))
    # a warm-up each, then A B A B, one profiled encode, and the encode of each dtype's dev evaluation
    assert encodes == ["bf16", "fp32", "bf16", "fp32", "bf16", "fp32", "bf16", "bf16", "fp32"]
    assert splits == [("bf16", "dev"), ("fp32", "dev")]
    assert [r.check for r in rows] == ["encode MiniLM bf16", "encode MiniLM fp32", "encode dtype effect (dev)"]
    assert rows[0].result.endswith(" passages/s") and "median of 2 runs alternated" in rows[0].detail
    assert "tokenize " in rows[0].detail and "| compute " in rows[0].detail and "model busy" in rows[0].detail
    assert "on the dev split (10 queries" in rows[2].detail and rows[2].result.endswith(" nDCG@10")
    assert all(r.aim == "" for r in rows)  # a CPU run is not judged
    with gzip.open(tmp_path / "encode_trace.json.gz") as f:
        assert json.load(f)["traceEvents"]


def test_training_is_timed_after_the_warm_up_and_before_the_final_save(tiny_model, monkeypatch, tmp_path):
    """Equal-length texts: the timed steps' token count is exact, so it shows which steps were counted."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.trainer import SentenceTransformerTrainer

    from domain_embed.tuning.trainer import train_model

    saves = []
    original_save = SentenceTransformerTrainer._save_checkpoint

    def save_checkpoint(self, *args, **kwargs):
        saves.append(time.perf_counter())
        return original_save(self, *args, **kwargs)

    monkeypatch.setattr(SentenceTransformerTrainer, "_save_checkpoint", save_checkpoint)
    model = SentenceTransformer(str(tiny_model), device="cpu")
    words = sorted(w for w in model.tokenizer.get_vocab() if w.isalpha() and w.isascii() and len(w) > 4)[:360]
    dataset = Dataset.from_dict({c: [f"{words[3 * i + j]} rule" for i in range(40)]  # whole words: 1 token each
                                 for j, c in enumerate(("anchor", "positive", "negative_1"))})
    per_text = 4  # [CLS] word rule [SEP]
    assert all(len(model.tokenizer(t)["input_ids"]) == per_text for c in dataset.column_names for t in dataset[c])
    sizes = dataclasses.replace(context.QUICK, batch_size=4)
    timer = training.StepTimer(model, warmup=2, cuda=False)
    train_model(model, dataset, None, training.train_config(sizes, "fp32", 5), tmp_path, seed=0, callbacks=[timer])
    assert timer.steps == 3 and timer.wall > 0 and timer.host_s >= 0 and timer.gpu_s is None
    assert timer.tokens == timer.padded_tokens == 3 * 4 * 3 * per_text  # 3 steps x 4 rows x 3 texts, no padding
    assert saves and saves[-1] >= timer.ended  # the final checkpoint comes after the timed steps


def _trained_configs(monkeypatch, *fields: str) -> list[tuple]:
    """Records `fields` of the TrainingConfig of every `train_model` call (it still trains)."""
    import domain_embed.tuning.trainer as trainer

    seen, original = [], trainer.train_model

    def train_model(model, dataset, dev, cfg, *args, **kwargs):
        seen.append(tuple(getattr(cfg, f) for f in fields))
        return original(model, dataset, dev, cfg, *args, **kwargs)

    monkeypatch.setattr(trainer, "train_model", train_model)
    return seen


def test_training_check_alternates_precisions(tiny_model, tiny_beir, monkeypatch, tmp_path):
    precisions = _trained_configs(monkeypatch, "precision", "max_steps")
    rows = training.check_training(_ctx(tiny_model, tiny_beir, profile=tmp_path))
    q = context.QUICK
    timed, profiled = q.warmup_steps + q.steps, q.warmup_steps + q.profiled_steps
    assert precisions == [("bf16", timed), ("fp32", timed), ("bf16", timed), ("fp32", timed), ("bf16", profiled)]
    assert [r.check for r in rows] == ["train MNRL bf16", "train MNRL fp32"]
    assert f"{q.steps} steps x batch {q.batch_size}" in rows[0].detail and "median of 2 runs" in rows[0].detail
    with gzip.open(tmp_path / "train_trace.json.gz") as f:
        assert json.load(f)["traceEvents"]


def test_gpu_check_runs_from_the_offline_bundles_scripts_alone(tmp_path):
    """offline_bundle.CHECK_SCRIPTS is all a bundle carries of scripts/: gpu_check and what it imports."""
    import offline_bundle

    for name in offline_bundle.CHECK_SCRIPTS:
        shutil.copy2(REPO / "scripts" / name, tmp_path / name)
    proc = subprocess.run([sys.executable, str(tmp_path / "gpu_check.py"), "--help"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "--profile" in proc.stdout


def test_gpu_run_needs_a_prepared_bundle(tmp_path):
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu_run.sh"), str(tmp_path / "none")], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "gpu_run.sh --prepare" in proc.stderr


@pytest.mark.slow
def test_gpu_run_checks_with_the_bundle_and_leaves_rows_log_and_traces_in_out(tiny_model, tiny_beir, tmp_path):
    """The GPU session's one script, on a stand-in bundle (its install.sh a no-op, its venv this interpreter, the tiny
    model and data): tests/test_offline_bundle.py installs a real one."""
    bundle, out = tmp_path / "bundle", tmp_path / "out"
    (bundle / "venv" / "bin").mkdir(parents=True)
    (bundle / "manifest.json").write_text("{}")
    (bundle / "install.sh").write_text('echo "bundle installed into $VENV"\n')
    (bundle / "venv" / "bin" / "python").write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    (bundle / "venv" / "bin" / "python").chmod(0o755)
    (bundle / "venv" / "model").symlink_to(tiny_model)
    (bundle / "data").symlink_to(tiny_beir)
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu_run.sh"), str(bundle), "--quick"], capture_output=True,
                          text=True, timeout=1200, env={**os.environ, "OUT": str(out)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = {r["check"]: r for r in json.loads((out / "gpu_check.json").read_text())}
    assert "FAILED" not in {r["result"] for r in rows.values()}
    for check in ("search torch", "encode MiniLM bf16", "encode dtype effect (dev)", "train MNRL fp32",
                  "e2e budget=smoke"):
        assert check in rows, sorted(rows)
    assert rows["compile"]["result"] == "skipped"  # a CPU run leaves the torch.compile rows to a GPU
    assert "stages (s): audit" in rows["e2e budget=smoke"]["detail"]
    log = (out / "gpu_check.log").read_text()
    assert f"bundle installed into {bundle}/venv" in log and "encode dtype effect (dev)" in log.split("check ")[-1]
    assert (out / "encode_trace.json.gz").stat().st_size and (out / "train_trace.json.gz").stat().st_size


@pytest.mark.parametrize(("tf32", "training", "precision", "expected"), [
    (True, True, "fp32", "tf32"),  # train_model turns TF32 on for training on an Ampere or newer GPU
    (True, False, "fp32", "fp32"),  # encoding keeps it off
    (True, True, "bf16", "bf16"),
    (False, True, "fp32", "fp32"),  # a V100 or T4 has no TF32
])
def test_fp32_training_utilisation_is_against_the_tf32_peak_where_tf32_is_on(monkeypatch, tf32, training, precision,
                                                                              expected):
    from domain_embed import devices

    _fake_gpu(monkeypatch, "NVIDIA H200")
    monkeypatch.setattr(devices, "tf32_native", lambda: tf32)
    dtype = flops.peak_dtype(precision, training=training)
    assert dtype == expected
    peak = {"tf32": 495, "fp32": 67, "bf16": 989}[expected]
    assert flops.mfu(0.5 * peak * 1e12, 1.0, dtype) == f"MFU 50.0% of {peak:,} TFLOP/s {expected}"


@pytest.mark.parametrize(("argv", "cuda", "rows"), [
    ([], True, True),  # a GPU run has them
    (["--quick"], False, False),  # a CPU run would spend minutes in inductor
    (["--quick", "--compile", "on"], False, True),
    (["--compile", "off"], True, False),
])
def test_the_compile_rows_are_a_gpu_runs_unless_the_flag_says(argv, cuda, rows, tmp_path):
    args = gpu_check.parser().parse_args(argv)
    choice = {"auto": None, "on": True, "off": False}[args.compile]
    ctx = checks.context(cuda=cuda, quick=args.quick, data=tmp_path, data_label="x", model=None, profile=None,
                         compile_rows=choice)
    assert ctx["compile"] is rows
    if not rows:
        with pytest.raises(report.Skipped, match="--compile on forces them"):
            checks.check_compiled(ctx)


def test_the_compile_rows_train_and_encode_through_torch_compile(tiny_model, tiny_beir, monkeypatch):
    """torch.compile is faked (an identity that records what it was given): the rows, not inductor, are checked
    here; tests/tuning/test_trainer.py compiles for real."""
    import torch

    compiled = []
    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: compiled.append(type(model).__name__) or model)
    configs = _trained_configs(monkeypatch, "precision", "torch_compile")
    rows = checks.check_compiled(_ctx(tiny_model, tiny_beir, compile_rows=True))
    assert configs == [("bf16", True)]
    assert compiled == ["SentenceTransformer", "SentenceTransformer"]  # the trainer's model, then the Embedder's
    assert [r.check for r in rows] == ["train MNRL bf16 compiled", "encode MiniLM bf16 compiled"]
    assert rows[0].result.endswith(" samples/s") and "training.torch_compile=true" in rows[0].detail
    assert "compiling included" in rows[0].detail and "compile True" in rows[1].detail
    assert rows[1].result.endswith(" passages/s") and "the first encode" in rows[1].detail
    table = report.table(rows)
    assert [line.split()[:4] for line in table.splitlines()[2:]] == [["train", "MNRL", "bf16", "compiled"],
                                                                     ["encode", "MiniLM", "bf16", "compiled"]]
