"""scripts/install.sh's choices, with a stand-in `.venv/bin/python` that records the pip calls: an existing venv with
FAISS GPU keeps it (what `bash .ci/run` on a GPU box reinstalls), and the gpu extra's torch is a CUDA 12 build."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

FAKE_PYTHON = """#!/usr/bin/env bash
# a venv's python: answers install.sh's questions from FAKE_* and logs every pip call
case "$*" in
  *importlib.metadata*) [ "$FAKE_FAISS_GPU" = 1 ] ;;
  *torch.version.cuda*) echo "$FAKE_CUDA" ;;
  "-m pip"*) echo "$*" >> "$PIP_LOG" ;;
  *) echo "domain-embed 0 torch 0" ;;
esac
"""


def _install(tmp_path: Path, *, faiss_gpu: bool, cuda: str = "12.8", extras: str | None = None):
    (tmp_path / "scripts").mkdir(exist_ok=True)
    shutil.copy(REPO / "scripts" / "install.sh", tmp_path / "scripts")
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True, exist_ok=True)
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    log = tmp_path / "pip.log"
    log.unlink(missing_ok=True)
    env = {"PATH": "/usr/bin:/bin", "PIP_LOG": str(log), "FAKE_FAISS_GPU": "1" if faiss_gpu else "0",
           "FAKE_CUDA": cuda, **({"EXTRAS": extras} if extras else {})}
    proc = subprocess.run(["bash", str(tmp_path / "scripts" / "install.sh")], env=env, capture_output=True, text=True,
                          timeout=60)
    return proc, log.read_text().splitlines() if log.exists() else []


def _package_install(calls: list[str]) -> str:
    (call,) = [c for c in calls if " -e " in c]
    return re.search(r"\.\[([\w,]+)\]", call).group(1)


@pytest.mark.parametrize(("faiss_gpu", "extras"), [(False, "dev,cpu,offline"), (True, "dev,gpu,offline")])
def test_the_default_extras_keep_the_faiss_the_venv_has(tmp_path, faiss_gpu, extras):
    proc, calls = _install(tmp_path, faiss_gpu=faiss_gpu)
    assert proc.returncode == 0, proc.stderr
    assert _package_install(calls) == extras  # never faiss-cpu installed over faiss-gpu


def test_the_gpu_extra_takes_torch_from_a_cuda_12_index_and_refuses_another_cuda_major(tmp_path):
    proc, calls = _install(tmp_path, faiss_gpu=False, extras="gpu,offline,wandb,sweep")
    assert proc.returncode == 0, proc.stderr
    (torch,) = [c for c in calls if "torch==" in c]
    assert "--index-url https://download.pytorch.org/whl/cu128" in torch
    dockerfile = (REPO / "Dockerfile.cuda").read_text()
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128" in dockerfile  # the image's, the same
    proc, calls = _install(tmp_path, faiss_gpu=True, cuda="13.0", extras="gpu,offline")
    assert proc.returncode == 1 and "CUDA 13.0 but faiss-gpu-cu12 needs CUDA 12" in proc.stderr
    assert not [c for c in calls if " -e " in c]  # stops before the package
