import os

import pytest

from domain_embed.rundir import RunDir, atomic_write_text, stable_hash


def test_stage_output_is_published_only_when_complete(tmp_path):
    rd = RunDir(tmp_path)
    with rd.stage_output("mine", "k1", {"a": 1}) as (out, extras):
        (out / "part.txt").write_text("v1")
        extras["cost"] = {"corpus_encodes": 0}
    assert rd.is_done("mine", "k1") and not rd.is_done("mine", "k2")
    assert rd.manifest("mine")["inputs"] == {"a": 1} and "torch" in rd.manifest("mine")["versions"]

    with pytest.raises(RuntimeError), rd.stage_output("mine", "k2", {"a": 2}) as (out, _):
        (out / "part.txt").write_text("half")
        raise RuntimeError("killed mid-stage")
    # the earlier complete output is intact, nothing half-written is visible, no temp folder is left
    assert (tmp_path / "mine" / "part.txt").read_text() == "v1" and rd.is_done("mine", "k1")
    assert sorted(os.listdir(tmp_path)) == ["mine"]


def test_atomic_write_keeps_old_file_when_writing_fails(tmp_path, monkeypatch):
    target = tmp_path / "report.json"
    atomic_write_text(target, "old")

    def boom(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="No space"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["report.json"]


def test_stable_hash_ignores_key_order():
    assert stable_hash({"a": 1, "b": [1, 2]}) == stable_hash({"b": [1, 2], "a": 1})
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})
