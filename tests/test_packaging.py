"""The configs ship inside the wheel, so `python -m train` works from a regular (non-editable) install,
and a user's own domain YAML plugs in through --config-dir."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _compose(cwd, *args, env=None):
    return subprocess.run([sys.executable, "-m", "train", *args, "--cfg", "job"], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env={**os.environ, **(env or {})})


def test_wheel_ships_the_config_tree_and_runs_from_it(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path / "dist"), str(REPO)], check=True, capture_output=True, timeout=300)
    wheel = next((tmp_path / "dist").glob("domain_embed-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for yaml in ("config.yaml", "domain/legal.yaml", "model/minilm.yaml", "budget/smoke.yaml"):
        assert f"domain_embed/conf/{yaml}" in names
    assert "train.py" in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)  # what pip would install, without the editable hook
    proc = _compose(tmp_path, "+domain=legal", "budget=smoke",
                    env={"PYTHONPATH": str(site), "PYTHONSAFEPATH": "1"})
    assert proc.returncode == 0, proc.stderr
    assert "RegNLP/ObliQA" in proc.stdout and "max_corpus: 1000" in proc.stdout
    probe = subprocess.run([sys.executable, "-c", "import domain_embed; print(domain_embed.__file__)"],
                           env={**os.environ, "PYTHONPATH": str(site)}, capture_output=True, text=True)
    assert probe.stdout.startswith(str(site))


def test_user_domain_from_config_dir(tmp_path):
    (tmp_path / "my_conf" / "domain").mkdir(parents=True)
    (tmp_path / "my_conf" / "domain" / "contracts.yaml").write_text(
        "# @package _global_\ndata:\n  name: contracts\n  path: /data/contracts-beir\n")
    proc = _compose(tmp_path, "--config-dir", str(tmp_path / "my_conf"), "+domain=contracts")
    assert proc.returncode == 0, proc.stderr
    assert "name: contracts" in proc.stdout and "path: /data/contracts-beir" in proc.stdout
    typo = tmp_path / "my_conf" / "domain" / "typo.yaml"
    typo.write_text("# @package _global_\ndata:\n  nmae: contracts\n")
    proc = _compose(tmp_path, "--config-dir", str(tmp_path / "my_conf"), "+domain=typo")
    assert proc.returncode != 0 and "nmae" in proc.stderr
