"""The air-gapped bundle: the resolver on hand-made wheels, then a real bundle installed with --no-index into a
fresh venv over a "target" that lacks the package's own dependencies, and the GPU check run from it (--quick)."""

import importlib.metadata as md
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import offline_bundle as ob  # noqa: E402

OBLIQA = REPO.parent / "shared" / "data" / "legal" / "obliqa"


def _fake_index(tmp_path, releases: dict[str, dict[str, list[str]]]):
    """A downloader over hand-made wheels: releases[name][version] = Requires-Dist lines; newest first wins."""
    calls = []

    def download(requirement: str, folder: Path) -> Path:
        from packaging.requirements import Requirement

        req = Requirement(requirement)
        calls.append(requirement)
        versions = sorted((Version(v) for v in releases[req.name] if SpecifierSet(str(req.specifier)).contains(v)),
                          reverse=True)
        if not versions:
            raise ob.BundleError(f"no release of {requirement}")
        version = str(versions[0])
        wheel = folder / f"{req.name}-{version}-py3-none-any.whl"
        meta = [f"Name: {req.name}", f"Version: {version}"] + [f"Requires-Dist: {r}"
                                                              for r in releases[req.name][version]]
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr(f"{req.name}-{version}.dist-info/METADATA", "\n".join(meta) + "\n")
        return wheel

    return download, calls


def test_resolver_carries_what_the_target_lacks_and_keeps_what_it_has(tmp_path):
    download, _ = _fake_index(tmp_path, {
        "hydra": {"1.3": ["omega>=2", "yaml"]},
        "omega": {"2.1": ["yaml>=5", 'colorama; sys_platform == "win32"', 'pytest; extra == "dev"']},
        "fs": {"2.0": [], "1.0": []},
        "data": {"5.0": ["fs[http]<=2.0"]},
    })
    target = ob.Target(None, None, {"yaml": "6.0", "torch": "2.11.0"})
    res = ob.resolve([("hydra>=1", "pkg"), ("data", "pkg"), ("torch>=2.4", "pkg")], target, tmp_path, download)
    assert set(res.carried) == {"hydra", "omega", "data", "fs"}  # no colorama (marker), no pytest (extra)
    assert res.carried["omega"]["needed_by"] == "hydra 1.3"
    assert res.kept == {"yaml": "6.0", "torch": "2.11.0"}
    assert sorted(p.name for p in tmp_path.glob("*.whl")) == sorted(f"{n}-{v['version']}-py3-none-any.whl"
                                                                      for n, v in res.carried.items())


def test_resolver_picks_an_older_release_rather_than_replace_a_target_version(tmp_path):
    download, calls = _fake_index(tmp_path, {"data": {"5.2": ["arrow>=24"], "5.1": ["arrow>=21"]}})
    res = ob.resolve([("data>=4", "pkg")], ob.Target(None, None, {"arrow": "22.0"}), tmp_path, download)
    assert res.carried["data"]["version"] == "5.1"
    assert calls == ["data>=4", "data>=4,!=5.2"]
    assert [p.name for p in tmp_path.glob("*.whl")] == ["data-5.1-py3-none-any.whl"]


@pytest.mark.parametrize(("have", "message"), [
    ({"transformers": "5.10"}, "never replaces"),  # the target's version is too old for the package
    ({}, "install its own CUDA build"),  # torch missing on the target: never carried
])
def test_resolver_refuses_to_replace_or_carry_the_targets_core(tmp_path, have, message):
    download, _ = _fake_index(tmp_path, {"transformers": {"5.24": []}})
    roots = [("transformers>=5.17", "pkg")] if have else [("torch>=2.4", "pkg")]
    with pytest.raises(ob.BundleError, match=message):
        ob.resolve(roots, ob.Target(None, None, have), tmp_path, download)


def test_have_file_and_platform_tags(tmp_path):
    freeze = tmp_path / "freeze.txt"
    freeze.write_text("# comment\nTorch==2.11.0+cu130\n-e /src/pkg\nmy_pkg @ file:///tmp/x.whl\npandas\n")
    assert ob.parse_have(freeze) == {"torch": "2.11.0", "my-pkg": None, "pandas": None}
    tags = ob.Target("3.12", "manylinux_2_28_x86_64", {}).platforms()
    assert tags[0] == "manylinux_2_28_x86_64" and "manylinux_2_17_x86_64" in tags and "manylinux2014_x86_64" in tags
    assert ob.Target("3.12", "manylinux_2_28_x86_64", {}).marker_env()["platform_machine"] == "x86_64"


LACKING = ["domain-embed", "hydra-core", "omegaconf", "antlr4-python3-runtime", "bm25s", "PyStemmer", "datasets",
           "dill", "multiprocess"]


def _target_without(tmp_path: Path, lacking: list[str]) -> Path:
    """A Python that has this environment's packages (torch, sentence-transformers, ...) except `lacking`: a
    venv reading a farm of links to this site-packages, the lacking distributions left out."""
    site = Path(md.distribution("torch").locate_file(""))
    hidden = set()
    for name in lacking:
        dist = md.distribution(name)
        hidden |= {Path(str(f)).parts[0] for f in dist.files or []}
    farm = tmp_path / "farm" / "site-packages"
    farm.mkdir(parents=True)
    for entry in site.iterdir():
        if entry.name not in hidden and not entry.name.startswith(("__editable__", "_domain_embed")) \
                and entry.suffix != ".pth":
            (farm / entry.name).symlink_to(entry)
    target = tmp_path / "target"
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(target)], check=True)
    purelib = subprocess.run([str(target / "bin" / "python"), "-c", "import sysconfig; "
                              "print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True,
                             check=True).stdout.strip()
    Path(purelib, "farm.pth").write_text(f"{farm}\n")
    probe = subprocess.run([str(target / "bin" / "python"), "-c", "import torch, sentence_transformers\n"
                            "try:\n import hydra\nexcept ImportError: print('no hydra')"],
                           capture_output=True, text=True)
    assert probe.stdout.strip() == "no hydra", probe.stderr
    return target / "bin" / "python"


@pytest.mark.slow
@pytest.mark.skipif(not OBLIQA.exists(), reason="needs ../shared/data/legal/obliqa")
def test_bundle_installs_offline_and_the_quick_gpu_check_passes_from_it(tmp_path):
    python = _target_without(tmp_path, LACKING)
    freeze = subprocess.run([str(python), "-m", "pip", "--python", str(python), "freeze"], capture_output=True,
                            text=True)
    have = tmp_path / "have.txt"
    lines = freeze.stdout if freeze.returncode == 0 else ""
    if not lines:  # the target venv has no pip of its own: ask this environment's pip about the target
        lines = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "freeze"], capture_output=True,
                               text=True, check=True).stdout
    have.write_text(lines)
    assert "torch==" in lines and "sentence-transformers==" in lines and "hydra-core" not in lines
    bundle = tmp_path / "bundle"
    built = subprocess.run([sys.executable, str(REPO / "scripts" / "offline_bundle.py"), "--out", str(bundle),
                            "--have", str(have), "--model", "minilm", "--data", str(OBLIQA), "--max-corpus", "400"],
                           capture_output=True, text=True, timeout=900)
    assert built.returncode == 0, built.stderr
    assert "total" in built.stdout and "MiB" in built.stdout
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert {"hydra-core", "datasets", "bm25s"} <= set(manifest["carried"])
    assert "torch" in manifest["kept_from_target"] and "sentence-transformers" in manifest["kept_from_target"]
    assert manifest["data"]["documents"] <= 400
    assert manifest["total_bytes"] < 60 * 2**20

    # no index, no network: pip may only read the bundle's wheels
    env = {**os.environ, "PYTHON": str(python), "PIP_NO_INDEX": "1", "PIP_CONFIG_FILE": os.devnull}
    check = subprocess.run(["bash", str(bundle / "scripts" / "gpu_check.sh"), "--bundle", str(bundle), "--quick"],
                           capture_output=True, text=True, timeout=1800, env=env)
    assert check.returncode == 0, check.stdout[-3000:] + check.stderr[-3000:]
    assert "FAILED" not in check.stdout
    for row in ("hydra-core", "search torch", "encode MiniLM bf16", "encode dtype effect (dev)", "train MNRL bf16",
                "e2e budget=smoke"):
        assert row in check.stdout, check.stdout
    venv_python = bundle / "venv" / "bin" / "python"
    where = subprocess.run([str(venv_python), "-c", "import hydra, domain_embed, torch; "
                            "print(hydra.__file__, domain_embed.__file__, torch.__file__)"],
                           capture_output=True, text=True, check=True).stdout.split()
    assert where[0].startswith(str(bundle / "venv")) and where[1].startswith(str(bundle / "venv"))
    assert not where[2].startswith(str(bundle / "venv"))  # torch stays the target's


def test_requested_extras_are_carried_and_an_unknown_one_is_refused():
    requires = ["hydra-core>=1.3", 'faiss-cpu>=1.9; extra == "cpu"', 'wandb>=0.20; extra == "wandb"',
                'hydra-submitit-launcher>=1.2; extra == "sweep"', 'hydra-optuna-sweeper>=1.2; extra == "sweep"']
    env = ob.Target(None, None, {}).marker_env()
    assert ob.package_requirements(requires, env, []) == ["hydra-core>=1.3"]
    assert [r.split(">")[0] for r in ob.package_requirements(requires, env, ["wandb", "sweep"])] == [
        "hydra-core", "wandb", "hydra-submitit-launcher", "hydra-optuna-sweeper"]
    with pytest.raises(ob.BundleError, match=r"unknown extra.*wandbb.*the package has cpu, sweep, wandb"):
        ob.package_requirements(requires, env, ["wandbb"])
