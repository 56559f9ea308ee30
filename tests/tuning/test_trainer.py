"""The trainer wrapper on the tiny model: dev metrics and best checkpoint, saving, and exact resumption; and the
arguments a (faked) GPU machine would get."""

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset
from sentence_transformers import SentenceTransformer
from transformers import TrainerCallback

from domain_embed.config import LoraConfig, TrainingConfig
from domain_embed.errors import ConfigError
from domain_embed.tuning import trainer
from domain_embed.tuning.trainer import DevSet, save_model, train_model, training_arguments

METRIC = "eval_dev_cosine_ndcg@10"


def _load(path) -> SentenceTransformer:
    return SentenceTransformer(str(path), device="cpu")


def _triplets(n: int = 64) -> Dataset:
    """Query i matches passage i by its topic words; the negative is another topic's passage."""
    return Dataset.from_dict({
        "query_id": [f"q{i}" for i in range(n)],  # not a loss column: must be dropped before training
        "anchor": [f"what does topic{i} rule{i} require" for i in range(n)],
        "positive": [f"topic{i} rule{i}: the firm shall notify the regulator" for i in range(n)],
        "negative_1": [f"topic{(i + 7) % n} rule{(i + 7) % n}: records are kept for years" for i in range(n)],
    })


def _dev() -> DevSet:
    return DevSet(queries={f"q{i}": f"which duties does topic{i} rule{i} impose" for i in range(12)},
                  corpus={f"d{i}": f"topic{i} rule{i}: a duty of the firm" for i in range(40)},
                  relevant={f"q{i}": {f"d{i}"} for i in range(12)})


def _cfg(**overrides) -> TrainingConfig:
    base = {"num_negatives": 1, "batch_size": 8, "max_steps": 6, "eval_steps": 2, "save_steps": 2,
            "save_total_limit": 2, "logging_steps": 1, "learning_rate": 5e-3, "warmup": 0.0}
    return TrainingConfig(**{**base, **overrides})


def test_dev_metrics_pick_the_best_checkpoint_and_the_saved_model_reloads(tiny_model, tmp_path):
    model = _load(tiny_model)
    result = train_model(model, _triplets(), _dev(), _cfg(), tmp_path / "run", seed=3)
    evals = [row for row in result.log_history if METRIC in row]
    assert [row["step"] for row in evals] == [2, 4, 6]
    assert any("loss" in row and "grad_norm" in row and "learning_rate" in row for row in result.log_history)
    best = max(evals, key=lambda row: row[METRIC])
    assert result.best_dev_ndcg10 == pytest.approx(best[METRIC])
    assert result.best_checkpoint == tmp_path / "run" / "checkpoints" / f"checkpoint-{best['step']}"
    assert result.global_step == 6 and result.samples_per_second > 0 and result.train_seconds > 0
    texts = ["which duties does topic3 rule3 impose", "records are kept"]
    in_memory = model.encode(texts)
    # the best checkpoint was loaded back at the end
    np.testing.assert_allclose(in_memory, _load(result.best_checkpoint).encode(texts), atol=1e-6)

    table = "| model | nDCG@10 |\n|---|---|\n| base | 0.41 |\n| tuned | 0.57 |"
    out = save_model(model, tmp_path / "final", {"metrics_table": table, "training_config": {"loss": "mnrl"}})
    np.testing.assert_allclose(_load(out).encode(texts), in_memory, atol=1e-6)
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and table in card and '"loss": "mnrl"' in card
    assert card.index(table) < card.index("## Model Details")  # ours first, before the template body

    save_model(model, out, {"metrics_table": "| replaced |", "training_config": {}})  # over an existing model
    assert "| replaced |" in (out / "README.md").read_text()
    assert sorted(p.name for p in out.parent.iterdir()) == ["final", "run"]  # no temp or old folders left


def test_early_stopping_stops_when_dev_ndcg_stops_improving(tiny_model, tmp_path):
    cfg = _cfg(max_steps=40, eval_steps=1, save_steps=1, learning_rate=0.0, early_stopping_patience=1)
    result = train_model(_load(tiny_model), _triplets(), _dev(), cfg, tmp_path, seed=0)
    assert result.global_step == 2  # lr 0: the evaluation at step 2 cannot beat the one at step 1


def test_training_arguments_map_the_config(tmp_path):
    cfg = _cfg(warmup=0.1, gradient_accumulation_steps=2, scheduler="cosine", torch_compile=True)
    args = training_arguments(cfg, tmp_path, seed=7, columns=["anchor", "positive"], has_dev=True,
                              report_to=["wandb"], query_prompt="query: ")
    assert args.output_dir == str(tmp_path / "checkpoints")
    assert args.warmup_steps == 0.1 and args.lr_scheduler_type == "cosine" and args.gradient_accumulation_steps == 2
    assert args.batch_sampler == "no_duplicates_hashed" and args.eval_strategy == "steps"
    assert args.optim == "adamw_torch_fused" and not args.logging_nan_inf_filter and args.torch_compile
    # on CPU: tokenized in the main process (workers would take cores from the model), nothing pinned
    assert args.dataloader_num_workers == 0 and not args.dataloader_persistent_workers
    assert not args.dataloader_pin_memory
    two = training_arguments(_cfg(dataloader_workers=2), tmp_path, seed=7, columns=["anchor"], has_dev=False)
    assert two.dataloader_num_workers == 2 and two.dataloader_persistent_workers
    assert args.load_best_model_at_end and args.metric_for_best_model == METRIC and args.greater_is_better
    assert (args.seed, args.data_seed) == (7, 7) and args.report_to == ["wandb"]
    assert not args.bf16 and not args.fp16  # auto precision on CPU is fp32
    assert args.prompts == {"anchor": "query: "}
    plain = training_arguments(cfg, tmp_path, seed=7, columns=["anchor", "positive"], has_dev=False)
    assert plain.eval_strategy == "no" and not plain.load_best_model_at_end and plain.report_to == []
    assert plain.prompts is None


def _fake_gpus(monkeypatch, count: int, *, native_bf16: bool) -> None:
    """`count` GPUs; without native bf16 (T4, V100) torch still reports bf16 support, through emulation."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native_bf16
                        or including_emulation)


def test_a_gpu_gets_persistent_pinned_loader_workers(monkeypatch, tmp_path):
    _fake_gpus(monkeypatch, 1, native_bf16=True)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    args = training_arguments(_cfg(), tmp_path, seed=0, columns=["anchor", "positive"], has_dev=False)
    assert args.dataloader_num_workers == 4 and args.dataloader_persistent_workers and args.dataloader_pin_memory


@pytest.mark.parametrize(("native_bf16", "precision"), [(True, "bf16"), (False, "fp16")])
def test_auto_precision_takes_bf16_only_where_the_gpu_has_it_natively(monkeypatch, tmp_path, native_bf16,
                                                                      precision):
    _fake_gpus(monkeypatch, 1, native_bf16=native_bf16)
    args = training_arguments(_cfg(), tmp_path, seed=0, columns=["anchor", "positive"], has_dev=False)
    assert (args.bf16, args.fp16) == (precision == "bf16", precision == "fp16")


def test_several_gpus_without_a_launcher_train_on_one_not_data_parallel(monkeypatch, tmp_path, caplog):
    """Not nn.DataParallel over all four: one GPU, and the log says how to launch on every one."""
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    _fake_gpus(monkeypatch, 4, native_bf16=True)
    with caplog.at_level(logging.WARNING, logger="domain_embed.distributed"):
        args = training_arguments(_cfg(), tmp_path, seed=0, columns=["anchor", "positive"], has_dev=False)
    assert args.n_gpu == 1 and args.parallel_mode.value == "not_parallel"
    assert args.train_batch_size == args.per_device_train_batch_size  # not 4 GPUs' worth
    assert "accelerate launch --config_file conf/accelerate/multi_gpu.yaml --num_processes 4 -m train" in caplog.text


@pytest.mark.parametrize(("overrides", "has_dev", "message"), [
    ({"precision": "fp8"}, False, "unknown training.precision"),
    ({"warmup": 10.0}, False, "fraction"),
])
def test_training_arguments_reject_bad_configs(tmp_path, overrides, has_dev, message):
    with pytest.raises(ConfigError, match=message):
        training_arguments(_cfg(**overrides), tmp_path, seed=0, columns=["anchor"], has_dev=has_dev)


def _layer_forwards(tiny_model, tmp_path, checkpointing: bool, steps: int = 2) -> tuple[int, list[float]]:
    """Training-mode forward calls of the first transformer layer's attention (the model card's widget examples
    encode in eval mode), and the losses, over `steps` steps."""
    model = _load(tiny_model)
    attention = model.transformers_model.encoder.layer[0].attention
    calls = []
    attention.register_forward_hook(lambda module, *_: calls.append(1) if module.training else None)
    result = train_model(model, _triplets(16), None, _cfg(max_steps=steps, gradient_checkpointing=checkpointing),
                         tmp_path, seed=0)
    return len(calls), [r["loss"] for r in result.log_history if "loss" in r]


def test_gradient_checkpointing_recomputes_the_layers_in_the_backward_pass(tiny_model, tmp_path, monkeypatch):
    """The flag where the device would keep its activations (a GPU); tests/test_lowest_pins.py checks it under the
    oldest transformers and sentence-transformers."""
    monkeypatch.setattr(trainer.devices, "recompute_activations", lambda on_cuda: False)
    plain, _ = _layer_forwards(tiny_model, tmp_path / "plain", checkpointing=False)
    assert plain >= 2  # each step encodes its texts at least once
    assert _layer_forwards(tiny_model, tmp_path / "checkpointed", checkpointing=True)[0] == 2 * plain


def test_a_cpu_recomputes_activations_with_the_losses_of_a_run_that_keeps_them(tiny_model, tmp_path, monkeypatch):
    """The memory bound on CPU (issue 26, item 9): every layer runs again in the backward pass, with dropout on and
    the same masks, so the losses are those of a run that keeps its activations (a GPU's way, forced here)."""
    recomputed, cpu_losses = _layer_forwards(tiny_model, tmp_path / "cpu", checkpointing=False, steps=4)
    monkeypatch.setattr(trainer.devices, "recompute_activations", lambda on_cuda: False, raising=False)
    kept, kept_losses = _layer_forwards(tiny_model, tmp_path / "kept", checkpointing=False, steps=4)
    assert recomputed == 2 * kept
    assert len(cpu_losses) == 4 and len(set(cpu_losses)) > 1
    np.testing.assert_allclose(cpu_losses, kept_losses, rtol=1e-6)


def test_dataset_and_config_mismatches_fail_before_training(tiny_model, tmp_path):
    model = _load(tiny_model)
    with pytest.raises(ConfigError, match="lacks \\['negative_2'\\]"):
        train_model(model, _triplets(), None, _cfg(num_negatives=2), tmp_path, seed=0)
    with pytest.raises(ConfigError, match="needs a dev set"):
        train_model(model, _triplets(), None, _cfg(early_stopping_patience=2), tmp_path, seed=0)


def test_lora_without_a_recent_peft_names_the_extra(tiny_model, tmp_path, monkeypatch):
    def not_installed(name):
        raise trainer.PackageNotFoundError(name)

    monkeypatch.setattr(trainer, "version", not_installed)
    with pytest.raises(ConfigError, match=r"domain-embed\[lora\]"):
        train_model(_load(tiny_model), _triplets(), None, _cfg(lora=LoraConfig(enabled=True)), tmp_path, seed=0)


def test_lora_trains_the_adapter_and_saves_a_merged_model(tiny_model, tmp_path):
    pytest.importorskip("peft", minversion="0.22")
    model = _load(tiny_model)
    cfg = _cfg(max_steps=2, lora=LoraConfig(enabled=True, r=4, alpha=8))
    train_model(model, _triplets(), _dev(), cfg, tmp_path / "run", seed=0)
    texts = ["which duties does topic3 rule3 impose"]
    tuned = model.encode(texts)
    assert not np.allclose(tuned, _load(tiny_model).encode(texts))
    out = save_model(model, tmp_path / "final", {"metrics_table": "|x|", "training_config": {}})
    assert not (out / "adapter_config.json").exists()
    np.testing.assert_allclose(_load(out).encode(texts), tuned, atol=1e-5)


def test_resume_refuses_stale_checkpoints_and_skips_incomplete_ones(tiny_model, tmp_path):
    checkpoints = tmp_path / "checkpoints"
    (checkpoints / "checkpoint-2").mkdir(parents=True)
    (checkpoints / "checkpoint-2" / "trainer_state.json").write_text("{}")
    (checkpoints / "checkpoint-10").mkdir()  # killed while saving: no trainer_state.json
    assert trainer._resume_point(checkpoints, resume=True) == checkpoints / "checkpoint-2"
    with pytest.raises(ConfigError, match="resume=true"):
        trainer._resume_point(checkpoints, resume=False)
    fresh = train_model(_load(tiny_model), _triplets(), None, _cfg(max_steps=1, resume=True), tmp_path / "new",
                        seed=0)
    assert fresh.resumed_from is None and fresh.global_step == 1


RUN_SCRIPT = textwrap.dedent("""
    import json, os, signal, sys
    from pathlib import Path

    from datasets import load_from_disk
    from sentence_transformers import SentenceTransformer
    from transformers import TrainerCallback

    from domain_embed.config import TrainingConfig
    from domain_embed.tuning.trainer import DevSet, train_model

    spec = json.loads(sys.argv[1])

    class KillAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == spec["kill_at"]:
                os.kill(os.getpid(), signal.SIGKILL)

    dev = DevSet(**{k: v for k, v in spec["dev"].items() if k != "relevant"},
                 relevant={q: set(d) for q, d in spec["dev"]["relevant"].items()})
    model = SentenceTransformer(spec["model"], device="cpu")
    result = train_model(model, load_from_disk(spec["data"]), dev, TrainingConfig(**spec["cfg"]), Path(spec["out"]),
                         seed=11, callbacks=[KillAt()])
    Path(spec["out"], "result.json").write_text(json.dumps({
        "global_step": result.global_step, "best": result.best_dev_ndcg10,
        "resumed_from": str(result.resumed_from), "log_history": result.log_history,
        "embeddings": model.encode(spec["probe"]).tolist()}))
""")


def _run(tmp_path: Path, spec: dict, out: str, *, kill_at: int = -1, resume: bool = False) -> subprocess.Popen:
    full = {**spec, "out": str(tmp_path / out), "kill_at": kill_at, "cfg": {**spec["cfg"], "resume": resume}}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the two first runs share the cores; one thread each is faster
    return subprocess.Popen([sys.executable, str(tmp_path / "run.py"), json.dumps(full)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> int:
    _, err = proc.communicate(timeout=120)
    assert proc.returncode in (0, -9), err[-3000:]
    return proc.returncode


def test_killed_run_resumes_to_the_same_result_as_an_uninterrupted_one(tiny_model, tmp_path):
    """24 rows / batch 8 = 3 steps an epoch: the kill at step 5 falls in epoch 2 after checkpoint-4, so
    resuming must restore the sampler's epoch, the position inside it, the optimizer, scheduler and RNG."""
    (tmp_path / "run.py").write_text(RUN_SCRIPT)
    _triplets(24).save_to_disk(str(tmp_path / "data"))
    dev = _dev()
    spec = {"model": str(tiny_model), "data": str(tmp_path / "data"), "probe": list(dev.queries.values())[:4],
            "dev": {"queries": dev.queries, "corpus": dev.corpus,
                    "relevant": {q: sorted(d) for q, d in dev.relevant.items()}},
            "cfg": {"num_negatives": 1, "batch_size": 8, "max_steps": 6, "eval_steps": 2, "save_steps": 2,
                    "save_total_limit": 2, "logging_steps": 1, "learning_rate": 5e-3, "warmup": 0.2}}
    uninterrupted, killed = _run(tmp_path, spec, "a"), _run(tmp_path, spec, "b", kill_at=5)
    assert _finish(uninterrupted) == 0 and _finish(killed) == -9
    assert max(int(p.name.split("-")[1]) for p in (tmp_path / "b" / "checkpoints").glob("checkpoint-*")) == 4
    assert _finish(_run(tmp_path, spec, "b", resume=True)) == 0

    a, b = (json.loads((tmp_path / name / "result.json").read_text()) for name in ("a", "b"))
    assert b["resumed_from"] == str(tmp_path / "b" / "checkpoints" / "checkpoint-4")
    assert a["global_step"] == b["global_step"] == 6
    assert b["best"] == pytest.approx(a["best"], abs=1e-6)
    rows = {name: [r for r in run["log_history"] if "loss" in r or METRIC in r] for name, run in (("a", a), ("b", b))}
    assert [r["step"] for r in rows["a"]] == [r["step"] for r in rows["b"]]
    for ra, rb in zip(rows["a"], rows["b"], strict=True):
        for key in ("loss", "learning_rate", "grad_norm", METRIC):
            if key in ra:
                assert rb[key] == pytest.approx(ra[key], abs=1e-6), (ra["step"], key)
    np.testing.assert_allclose(b["embeddings"], a["embeddings"], atol=1e-6)


def test_checkpoints_at_new_best_evaluations_and_at_the_end_only(tiny_model, tmp_path):
    """No step or time cadence: the evaluations that beat every earlier one, and the last step, are on disk (and
    no other), and the best is loaded back."""
    cfg = _cfg(save_steps=None, checkpoint_minutes=None, save_total_limit=10, eval_steps=1, max_steps=6)
    model = _load(tiny_model)
    result = train_model(model, _triplets(), _dev(), cfg, tmp_path, seed=3)
    scores = [(row["step"], row[METRIC]) for row in result.log_history if METRIC in row]
    new_best = {step for i, (step, value) in enumerate(scores) if all(value > v for _, v in scores[:i])}
    assert len(new_best) < len(scores)  # some evaluation was not a new best: a test that can fail
    saved = {int(p.name.split("-")[1]) for p in (tmp_path / "checkpoints").glob("checkpoint-*")}
    assert saved == new_best | {6}
    assert result.best_checkpoint == tmp_path / "checkpoints" / f"checkpoint-{max(new_best, key=dict(scores).get)}"


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_checkpoint_cadence_by_wall_time_and_by_steps():
    from transformers import TrainerControl, TrainerState

    clock = _Clock()
    cadence = trainer.CheckpointCadence(steps=None, minutes=10, clock=clock)
    args, state, control = object(), TrainerState(max_steps=100), TrainerControl()
    cadence.on_train_begin(args, state, control)
    saves = []
    for step in range(1, 60):
        state.global_step, clock.now = step, step * 60.0  # a minute a step
        cadence.on_step_end(args, state, control)
        if control.should_save:
            saves.append(step)
            cadence.on_save(args, state, control)
            control.should_save = False
    assert saves == [10, 20, 30, 40, 50]
    by_steps = trainer.CheckpointCadence(steps=25, minutes=None, clock=clock)
    steps = []
    for step in range(1, 101):
        state.global_step = step
        by_steps.on_step_end(args, state, control)
        steps += [step] if control.should_save else []
    assert steps == [25, 50, 75, 100]


def _losses_and_vectors(tiny_model, tmp_path, **overrides):
    model = _load(tiny_model)
    result = train_model(model, _triplets(), _dev(), _cfg(**overrides), tmp_path, seed=5)
    rows = [(r["step"], r["loss"], r["grad_norm"]) for r in result.log_history if "loss" in r]
    return rows, result.best_dev_ndcg10, model.encode(list(_dev().queries.values())[:4])


def test_the_fed_loop_trains_exactly_as_the_plain_one_on_cpu(tiny_model, tmp_path, monkeypatch):
    """The hashed sampler, no NaN filter and the checkpoint cadence only change speed: against the arguments of
    before (re-read sampler, NaN filter, a checkpoint at every evaluation) the losses, dev score and weights match."""
    from sentence_transformers.sentence_transformer.training_args import BatchSamplers

    fed = _losses_and_vectors(tiny_model, tmp_path / "fed", save_steps=None)
    arguments = trainer.training_arguments

    def before(*args, **kwargs):
        out = arguments(*args, **kwargs)
        out.batch_sampler, out.logging_nan_inf_filter = BatchSamplers.NO_DUPLICATES, True
        return out

    monkeypatch.setattr(trainer, "training_arguments", before)
    monkeypatch.setattr(trainer, "CheckpointCadence", lambda *a: TrainerCallback())  # the HF Trainer's own steps
    plain = _losses_and_vectors(tiny_model, tmp_path / "plain", save_steps=2)
    assert fed[0] == plain[0] and fed[1] == plain[1]
    np.testing.assert_array_equal(fed[2], plain[2])


def _without_dropout(model: SentenceTransformer) -> SentenceTransformer:
    """For runs whose losses must match: dropout's random masks follow the tensors' shapes and the kernels that draw
    them (a padded or a compiled run draws other masks: equally random, not equal)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


def test_padding_to_a_multiple_of_8_changes_the_shapes_not_the_training(tiny_model, tmp_path, monkeypatch):
    """What a GPU gets (devices.pad_multiple), forced on CPU: every batch is 8-aligned, and the masked padding
    leaves the losses as they were (without dropout: `_without_dropout`)."""
    widths = []

    def run(name):
        model = _without_dropout(_load(tiny_model))
        hook = model.transformers_model.embeddings.register_forward_hook(
            lambda module, args, out: widths.append(out.shape[1]) if module.training else None)
        result = train_model(model, _triplets(), None, _cfg(max_steps=3), tmp_path / name, seed=5)
        hook.remove()
        return [r["loss"] for r in result.log_history if "loss" in r]

    plain = run("plain")
    assert any(w % 8 for w in widths)
    widths.clear()
    monkeypatch.setattr(trainer.devices, "pad_multiple", lambda on_cuda, window: 8)
    padded = run("padded")
    assert widths and all(w % 8 == 0 for w in widths)
    np.testing.assert_allclose(padded, plain, rtol=1e-5)


@pytest.mark.slow
def test_torch_compile_trains_as_eager_and_saves_a_plain_model(tiny_model, tmp_path):
    """`training.torch_compile` (inductor; gcc compiles it on a CPU): the losses of the eager loop, and checkpoints
    and the saved model hold plain weights (no `_orig_mod.` prefix of the compiled wrapper) that reload."""
    from safetensors import safe_open
    from torch._dynamo.utils import counters

    def run(name, **overrides):
        model = _without_dropout(_load(tiny_model))
        result = train_model(model, _triplets(), None, _cfg(max_steps=3, **overrides), tmp_path / name, seed=5)
        return [r["loss"] for r in result.log_history if "loss" in r], model

    eager, _ = run("eager")
    torch._dynamo.reset()
    counters.clear()
    compiled, model = run("compiled", torch_compile=True)
    assert counters["stats"]["unique_graphs"] >= 1  # the model really was compiled
    np.testing.assert_allclose(compiled, eager, rtol=1e-5)
    out = save_model(model, tmp_path / "final", {"metrics_table": "", "training_config": {}})
    weights = list((tmp_path / "compiled").rglob("*.safetensors")) + list(out.rglob("*.safetensors"))
    assert len(weights) >= 2
    for path in weights:
        with safe_open(str(path), "pt") as f:
            assert not [key for key in f.keys() if "_orig_mod" in key], path  # noqa: SIM118 (a safetensors handle)
    texts = ["which duties does topic3 rule3 impose", "records are kept"]
    np.testing.assert_allclose(_load(out).encode(texts), model.encode(texts), atol=1e-6)


def _precision() -> list[str]:
    """torch's fp32 precision switches, read through the new API only (torch >= 2.9)."""
    b = torch.backends
    return [h.fp32_precision for h in (b, b.cuda.matmul, b.cudnn, b.cudnn.conv, b.cudnn.rnn, b.mkldnn,
                                       b.mkldnn.matmul, b.mkldnn.conv, b.mkldnn.rnn)]


def test_tf32_is_on_for_training_only():
    before = _precision()
    with trainer.devices.tf32_matmuls(True):
        assert torch.backends.cuda.matmul.fp32_precision == "tf32"
    assert _precision() == before
    with trainer.devices.tf32_matmuls(False):
        assert _precision() == before


def test_tf32_that_transformers_turns_on_is_read_without_the_legacy_api_and_undone(tiny_model, tmp_path,
                                                                                   monkeypatch):
    """TrainingArguments(torch_compile=True) on an Ampere GPU calls transformers' enable_tf32(True), which sets torch's
    new fp32_precision API; reading the legacy one after it raised "mix of the legacy and new APIs" (torch >= 2.9, on
    CPU too), and TF32 then stayed on for the rest of the process."""
    from transformers.utils.import_utils import enable_tf32

    before = _precision()
    arguments = trainer.training_arguments

    def as_on_ampere_with_compile(*args, **kwargs):
        out = arguments(*args, **kwargs)
        enable_tf32.__wrapped__(True)  # its lru_cache would make it a no-op after a first call in this process
        return out

    monkeypatch.setattr(trainer, "training_arguments", as_on_ampere_with_compile)
    try:
        result = train_model(_load(tiny_model), _triplets(16), None, _cfg(max_steps=1), tmp_path, seed=0)
        assert result.global_step == 1
        assert _precision() == before  # TF32 is off again once training is over
    finally:
        torch.backends.fp32_precision = "none"  # whatever happened above, the later tests start from torch's default


def test_the_dev_set_is_encoded_at_the_encode_batch_size(tiny_model, tmp_path, monkeypatch):
    sizes = []
    build = trainer.build_dev_evaluator

    def recorded(dev, batch_size, **kwargs):
        sizes.append(batch_size)
        return build(dev, batch_size, **kwargs)

    monkeypatch.setattr(trainer, "build_dev_evaluator", recorded)
    train_model(_load(tiny_model), _triplets(), _dev(), _cfg(max_steps=2), tmp_path / "a", seed=0, dev_batch_size=128)
    train_model(_load(tiny_model), _triplets(), _dev(), _cfg(max_steps=2), tmp_path / "b", seed=0)
    assert sizes == [128, 8]  # the training batch size when none is given


CLOCKS_SCRIPT = textwrap.dedent("""
    import functools, itertools, json, sys
    from pathlib import Path

    from datasets import Dataset
    from sentence_transformers import SentenceTransformer

    from domain_embed import distributed
    from domain_embed.config import TrainingConfig
    from domain_embed.tuning import trainer

    model_path, out = sys.argv[1], Path(sys.argv[2])
    distributed.init_process_group()
    rank = distributed.rank()
    # rank 1's clock passes checkpoint_minutes at every look, rank 0's never moves: they disagree at every step
    clock = (lambda: 0.0) if rank == 0 else functools.partial(next, itertools.count(step=3600.0))
    trainer.CheckpointCadence = functools.partial(trainer.CheckpointCadence, clock=clock)
    n = 32
    data = Dataset.from_dict({"anchor": [f"what does topic{i} require" for i in range(n)],
                              "positive": [f"topic{i}: the firm shall notify" for i in range(n)]})
    cfg = TrainingConfig(num_negatives=0, batch_size=4, max_steps=4, save_steps=None, checkpoint_minutes=10,
                         logging_steps=1, warmup=0.0)
    result = trainer.train_model(SentenceTransformer(model_path, device="cpu"), data, None, cfg, out / f"r{rank}",
                                 seed=0)
    saved = sorted(p.name for p in (out / "r0" / "checkpoints").glob("checkpoint-*")) if rank == 0 else None
    (out / f"rank{rank}.json").write_text(json.dumps({"step": result.global_step, "saved": saved}))
""")


def test_ranks_whose_clocks_disagree_save_together_and_finish(tiny_model, tmp_path):
    """Two gloo ranks: rank 1's clock says every step is a wall-time checkpoint, rank 0's says none. Each rank
    deciding alone left one rank in the save's barrier and the other in the next step's all-reduce (a hang; the
    timeout is the guard). Rank 0 decides for both: the run finishes, with the one checkpoint at the end."""
    (tmp_path / "clocks.py").write_text(CLOCKS_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    try:
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                               str(tmp_path / "clocks.py"), str(tiny_model), str(tmp_path)], env=env,
                              capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the ranks hung: {str(exc.stderr)[-2000:]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["step"] for r in ranks] == [4, 4]
    # the end only: rank 0's clock never passed 10 minutes, so rank 1's did not count (with save_total_limit=2, a
    # save at every step would leave checkpoint-3 beside checkpoint-4)
    assert ranks[0]["saved"] == ["checkpoint-4"]


def test_the_tf32_calls_of_transformers_then_ours_in_a_fresh_process():
    """The exact sequence of a compiled run on an Ampere GPU, in a process where nothing read the precision before:
    transformers' enable_tf32(True) (the new API), then our block around training. dce259c's block read the legacy
    API there and raised "mix of the legacy and new APIs" (torch 2.13, on CPU too)."""
    code = textwrap.dedent("""
        import torch
        from transformers.utils.import_utils import enable_tf32
        from domain_embed import devices
        enable_tf32(True)
        with devices.tf32_matmuls(True):
            pass
        print(torch.backends.fp32_precision, torch.backends.cuda.matmul.fp32_precision)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["tf32", "tf32"]  # what transformers set before the block is left as it was
