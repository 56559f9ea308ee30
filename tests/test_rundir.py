import errno
import os
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from domain_embed.rundir import RunDir, atomic_write_json, atomic_write_text, publish_dir, stable_hash


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _publish(final: Path, files: dict[str, str]) -> None:
    with publish_dir(final) as tmp:
        for name, text in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_text(text)


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


def test_a_failed_publish_leaves_the_finished_folder_byte_identical(tmp_path, monkeypatch):
    final = tmp_path / "model"
    _publish(final, {"weights.bin": "v1", "sub/config.json": "{}"})
    before = _tree(final)

    with pytest.raises(RuntimeError), publish_dir(final) as tmp:  # killed while filling
        (tmp / "weights.bin").write_text("half")
        raise RuntimeError("crash")
    assert _tree(final) == before and os.listdir(tmp_path) == ["model"]

    real_rename = Path.rename

    def failing_rename(self, target):  # the disk fails at the very last step, after the old one moved aside
        if ".tmp-" in self.name:
            raise OSError(errno.EIO, "I/O error")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", failing_rename)
    with pytest.raises(OSError, match="I/O"):
        _publish(final, {"weights.bin": "v2"})
    assert _tree(final) == before and os.listdir(tmp_path) == ["model"]


def test_a_later_publish_replaces_a_finished_folder(tmp_path):
    final = tmp_path / "stage"
    _publish(final, {"a": "1", "b": "1"})
    _publish(final, {"a": "2"})
    assert _tree(final) == {"a": b"2"} and os.listdir(tmp_path) == ["stage"]


@pytest.mark.parametrize("existing", [False, True])
def test_of_two_publishers_of_one_key_the_first_finished_wins(tmp_path, existing):
    final = tmp_path / "key"
    if existing:
        _publish(final, {"x": "old"})
    with publish_dir(final) as slow:  # started first, finishes last
        (slow / "x").write_text("slow")
        _publish(final, {"x": "fast"})
    assert _tree(final) == {"x": b"fast"}
    assert os.listdir(tmp_path) == ["key"]  # the loser's temporary folder is gone


def test_concurrent_publishers_leave_one_whole_copy(tmp_path):
    final, start = tmp_path / "key", threading.Barrier(8)

    def write(i: int) -> None:
        with publish_dir(final) as tmp:
            start.wait()
            for name in ("a", "b", "c"):
                (tmp / name).write_text(f"{i}")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(write, range(8)))  # re-raises a writer's error
    assert len(set(_tree(final).values())) == 1 and sorted(_tree(final)) == ["a", "b", "c"]
    assert os.listdir(tmp_path) == ["key"]


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_written_files_and_folders_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "report.md", "# report")
        atomic_write_json(tmp_path / "report.json", {"a": 1})
        with publish_dir(tmp_path / "model") as tmp:
            atomic_write_text(tmp / "README.md", "card")
            (tmp / "model.safetensors").write_bytes(b"")
            (tmp / "model.safetensors").chmod(0o600)  # as safetensors leaves it (a private temp file, renamed)
    finally:
        os.umask(old)
    for path, full in [("report.md", 0o666), ("report.json", 0o666), ("model", 0o777), ("model/README.md", 0o666),
                       ("model/model.safetensors", 0o666)]:
        assert stat.S_IMODE((tmp_path / path).stat().st_mode) == full & ~umask, path
