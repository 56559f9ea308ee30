"""Dockerfile.cuda: clean under hadolint, and its versions in step with pyproject.toml and scripts/install.sh."""

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = "\n".join(line for line in (REPO / "Dockerfile.cuda").read_text().splitlines()
                       if not line.lstrip().startswith("#"))  # instructions only: comments may name anything
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
LINTER_MISSING = 3  # scripts/lint_docker.sh: hadolint absent and not installable


def _arg(name: str) -> str:
    (value,) = re.findall(rf"^ARG {name}=(\S+)$", DOCKERFILE, flags=re.MULTILINE)
    return value


def _requirements(extra: str | None = None) -> list[Requirement]:
    return [Requirement(r) for r in (PYPROJECT["optional-dependencies"][extra] if extra else PYPROJECT["dependencies"])]


def test_hadolint_finds_nothing():
    proc = subprocess.run(["bash", str(REPO / "scripts" / "lint_docker.sh")], capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable}, timeout=300)
    if proc.returncode == LINTER_MISSING:
        pytest.skip(proc.stderr.strip())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Dockerfile.cuda" in proc.stdout


def test_torch_and_python_match_the_package_and_the_cpu_install():
    torch = Version(_arg("TORCH_VERSION"))
    (requirement,) = [r for r in _requirements() if r.name == "torch"]
    assert torch in requirement.specifier
    install_sh = (REPO / "scripts" / "install.sh").read_text()
    (cpu_pin,) = re.findall(r"TORCH_SPEC=\$\{TORCH_SPEC:-torch==([\d.]+)\}", install_sh)
    assert torch == Version(cpu_pin)  # the GPU image trains with the torch the CPU install and CI test
    python = Version(_arg("PYTHON_VERSION"))
    assert python in SpecifierSet(PYPROJECT["requires-python"])


def test_faiss_comes_from_the_gpu_extra_for_the_same_cuda_major_as_torch_and_the_base_image():
    assert re.search(r'pip install [^\n]*"\.\[gpu(,\w+)*\]"', DOCKERFILE), "installs the package's gpu extra"
    assert not re.search(r"faiss-(gpu|cpu)", DOCKERFILE), "no faiss pin of its own: pyproject.toml's range"
    (faiss,) = [r for r in _requirements("gpu") if r.name.startswith("faiss")]
    assert faiss.name == "faiss-gpu-cu12"
    base = re.search(r"^FROM nvidia/cuda:(\d+)\.\d+\S*-runtime-ubuntu", DOCKERFILE, flags=re.MULTILINE)
    assert base, "a CUDA runtime base image"
    index = re.fullmatch(r"https://download\.pytorch\.org/whl/cu(\d+)(\d)", _arg("TORCH_INDEX_URL"))  # cu128: 12.8
    assert index, _arg("TORCH_INDEX_URL")
    assert base.group(1) == index.group(1) == faiss.name.removeprefix("faiss-gpu-cu")


def test_runs_as_a_non_root_user_with_caches_on_volumes():
    users = re.findall(r"^USER (\S+)$", DOCKERFILE, flags=re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert 'ENTRYPOINT ["python", "-m", "train"]' in DOCKERFILE
    volumes = re.search(r"^VOLUME \[(.*)\]$", DOCKERFILE, flags=re.MULTILINE).group(1)
    for env in ("HF_HOME", "WANDB_DIR", "DOMAIN_EMBED_CACHE"):
        (path,) = re.findall(rf"\b{env}=(\S+)", DOCKERFILE)
        assert f'"{path}"' in volumes, env


def _copy_like_the_image(root: Path) -> None:
    """The build context's files that the image's COPY instructions take (not `COPY --from`), each put under `root`
    where the image puts it (relative to the WORKDIR in force)."""
    workdir, copied = "/", []
    for line in DOCKERFILE.splitlines():
        if line.startswith("WORKDIR "):
            workdir = line.split()[1]
        elif line.startswith("COPY ") and not line.startswith("COPY --"):
            *sources, dest = line.split()[1:]
            for source in sources:
                target = root / workdir.lstrip("/") / dest
                target = target / Path(source).name if dest.endswith("/") else target
                if (REPO / source).is_dir():
                    shutil.copytree(REPO / source, target, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(REPO / source, target)
                copied.append(target)
    assert copied, "the image copies the repository's files"


def test_the_gpu_check_runs_from_what_the_image_copies(tmp_path):
    """`docker run --entrypoint bash domain-embed:cuda /src/scripts/gpu_check.sh` on a GPU box: gpu_check and every
    sibling script it imports are in the image, next to the package the image installs from its copied src/."""
    _copy_like_the_image(tmp_path)
    image = tmp_path / "src"  # the image's /src, where the Dockerfile's comment runs the check from
    assert sorted(p.name for p in image.iterdir()) == ["README.md", "conf", "pyproject.toml", "scripts", "src"]
    env = {**os.environ, "PYTHONPATH": str(image / "src")}  # what `uv pip install .` makes importable there
    proc = subprocess.run([sys.executable, str(image / "scripts" / "gpu_check.py"), "--help"], capture_output=True,
                          text=True, cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "--profile" in proc.stdout and "--bundle" in proc.stdout
    probe = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); import gpu_check, "
                            "domain_embed; print(gpu_check.__file__, domain_embed.__file__)", str(image / "scripts")],
                           capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300, check=True)
    assert all(path.startswith(str(image)) for path in probe.stdout.split())  # nothing came from the repository


def test_the_launcher_configs_are_under_the_working_directory_for_an_accelerate_entrypoint():
    """`docker run --entrypoint accelerate domain-embed:cuda launch --config_file conf/accelerate/multi_gpu.yaml
    -m train ...` (README): conf/ is copied to /src and linked at the WORKDIR the image ends in."""
    workdirs = re.findall(r"^WORKDIR (\S+)$", DOCKERFILE, flags=re.MULTILINE)
    copied = re.search(r"^WORKDIR (\S+)$(?:(?!^WORKDIR).)*^COPY conf \./conf$", DOCKERFILE,
                       flags=re.MULTILINE | re.DOTALL).group(1)
    assert f"ln -s {copied}/conf {workdirs[-1]}/conf" in DOCKERFILE
