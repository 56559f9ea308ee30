"""What a newcomer sees first: `--help` that teaches, and a misspelt key answered with the closest valid one."""

import os
import subprocess
import sys

import pytest

from domain_embed import overrides


def _train(*args):
    return subprocess.run([sys.executable, "-m", "train", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})


@pytest.mark.parametrize(("arg", "suggestion"), [
    ("training.lerning_rate=1e-5", "training.learning_rate"),
    ("eval.k_vaules=[1,10]", "eval.k_values"),
    ("modle=bge-small", "model"),
    ("mining.rescorer_treshold=0.5", "mining.rescorer_threshold"),
])
def test_a_misspelt_key_names_the_closest_valid_one(arg, suggestion):
    key = arg.split("=")[0]
    assert overrides.check(["+domain=legal", arg]) == f"unknown config key {key}: did you mean {suggestion}?"


@pytest.mark.parametrize("arg", ["training.learning_rate=1e-5", "model=bge-small", "data.hub.splits.validation=dev",
                                 "model.encode_dtype=bf16", "hydra.run.dir=/tmp/x", "+custom=1", "~eval.ood",
                                 "hydra/launcher=slurm", "compare.models=[minilm,bge-small]", "--cfg"])
def test_valid_keys_groups_and_hydras_own_pass(arg):
    assert overrides.check([arg]) is None


def test_the_cli_answers_a_typo_in_one_line_with_exit_2():
    proc = _train("+domain=legal", "training.lerning_rate=1e-5", "--cfg", "job")
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("error: unknown config key training.lerning_rate: "
                                   "did you mean training.learning_rate?")


def test_help_teaches_stages_examples_groups_and_outputs_without_a_config_dump():
    out = _train("--help").stdout
    for needed in ("== Stages", "== Examples ==", "== Config groups", "== Outputs ==", "budget: cpu, full, smoke",
                   "model: bge-base", "stages=[compare]", "python -m train -m", "report.md"):
        assert needed in out, needed
    assert "learning_rate:" not in out  # no 180-line config dump
    assert len(out.splitlines()) < 60
    assert "\naccelerate:" not in out and "not a group but launcher configs" in out  # launcher files, not a group
    assert "outputs/<data>/<model.name>-<budget.name>/" in out and "hash of its path" in out  # as hydra.run.dir


@pytest.mark.parametrize("arg", ["+accelerate=single_gpu", "accelerate=multi_gpu"])
def test_accelerate_is_named_as_launcher_configs_not_a_group(arg):
    assert overrides.check(["+domain=legal", arg]).startswith("accelerate is not a config group: conf/accelerate/")


def test_a_user_error_before_any_stage_is_printed_once_and_leaves_no_folder(tmp_path):
    proc = _train("+domain=beir", "data.path=/nonexistent", f"hydra.run.dir={tmp_path / 'outputs' / 'x' / 'run'}")
    assert proc.returncode == 2
    assert (proc.stdout + proc.stderr).count("BEIR directory not found") == 1
    assert list(tmp_path.iterdir()) == []  # not even outputs/: a typo'd path leaves nothing named after it


def test_cfg_job_resolve_prints_the_run_directory_and_creates_nothing(tmp_path):
    run = tmp_path / "outputs" / "run"
    proc = subprocess.run([sys.executable, "-m", "train", "+domain=legal", "data.path=/data/obliqa",
                           f"hydra.run.dir={run}", "--cfg", "job", "--resolve"], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"run_dir: {run}\n" in proc.stdout and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []
