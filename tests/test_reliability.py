"""Reliability: kill -9 mid-stage, bad input and config through the CLI, unsafe loading, leaked secrets, and
outputs that cannot be written. The CLI runs in subprocesses (killhooks.py); a `sitecustomize` hook
(tests/pause_hook, switched on by DE_TEST_HOOK) holds a run at a named point so that the SIGKILL lands there, not at
a lucky moment."""

import ctypes
import errno
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from killhooks import cli, finish, kill_when

from domain_embed.config import ModelConfig
from domain_embed.context import RunContext
from domain_embed.pipeline import run_pipeline
from domain_embed.retrieval.embed import Embedder

SRC = Path(__file__).resolve().parents[1] / "src"
SECRETS = {"WANDB_API_KEY": "wandb-sentinel-3f9c1e0d", "HF_TOKEN": "hf_sentinel8d2b7a41"}
TRAINING = ["training.batch_size=4", "training.epochs=2", "training.num_negatives=1", "training.eval_steps=2",
            "training.save_steps=2", "training.logging_steps=1", "training.learning_rate=1e-3"]

def _data_args(beir: Path, model: Path, cache: Path) -> list[str]:
    return ["+domain=beir", f"data.path={beir}", f"model.path={model}", f"cache_dir={cache}"]


class _Reference:
    """The uninterrupted run, started at fixture set-up so that it overlaps the run that gets killed."""

    def __init__(self, proc: subprocess.Popen, run: Path):
        self.proc, self.run, self._result = proc, run, None

    def result(self) -> tuple[int, str, dict]:
        if self._result is None:
            code, out = finish(self.proc)
            assert code == 0, out[-3000:]
            self._result = code, out, json.loads((self.run / "report.json").read_text())
        return self._result


@pytest.fixture(scope="module")
def reference(tiny_beir, tiny_model, tmp_path_factory) -> _Reference:
    """Whole pipeline through the CLI, with W&B and HF tokens in its environment (tracking=none)."""
    root = tmp_path_factory.mktemp("reference")
    run = root / "run"
    proc = cli(run, *_data_args(tiny_beir, tiny_model, root / "cache"), *TRAINING, env=SECRETS)
    return _Reference(proc, run)


# ---------------------------------------------------------------- kill -9


def test_kill_9_during_finetune_then_resume_matches_the_uninterrupted_run(reference, tiny_beir,
                                                                          tiny_model, tmp_path):
    run = tmp_path / "run"
    args = [*_data_args(tiny_beir, tiny_model, tmp_path / "cache"), *TRAINING]
    killed = cli(run, *args, hook="pause_after_checkpoint")
    state = kill_when(killed, "checkpoints/*/checkpoints/checkpoint-*/trainer_state.json", run)
    assert killed.returncode == -signal.SIGKILL
    assert not (run / "finetune").exists() and not (run / "report.json").exists()

    code, out = finish(cli(run, *args, "training.resume=true"))
    assert code == 0, out[-3000:]
    resumed = json.loads((run / "report.json").read_text())
    _, _, uninterrupted = reference.result()
    assert resumed["run"]["ran_now"] == ["finetune", "evaluate", "reranker", "rerank"]  # finished ones not redone
    assert resumed["training"]["resumed_from"] == str(state.parent)
    # killed in round 1 of 2 (mining.rounds=2): round 1 resumed, round 2 mined with its model and ran whole
    assert [r["resumed_from"] for r in resumed["training"]["rounds"]] == [str(state.parent), None]
    assert resumed["training"]["global_step"] == uninterrupted["training"]["global_step"] > 4  # 4 in round 1
    assert resumed["training"]["best_dev_ndcg@10"] == pytest.approx(uninterrupted["training"]["best_dev_ndcg@10"],
                                                                    abs=1e-6)
    tuned = uninterrupted["metrics"]["tuned"]
    assert tuned != uninterrupted["metrics"]["baseline"]  # training moved the model: equality below means something
    assert resumed["metrics"]["tuned"] == pytest.approx(tuned, abs=1e-6)


def test_kill_9_during_mine_leaves_nothing_taken_as_finished(make_config, tiny_beir, tiny_model, tmp_path):
    run = tmp_path / "run"
    args = [*_data_args(tiny_beir, tiny_model, tmp_path / "cache"), "stages=[mine]"]
    run_pipeline(RunContext(make_config(run, *args, "mining.num_negatives=3"), run))
    before = {name: (run / "mine" / name).read_bytes() for name in ("manifest.json", "mined.jsonl", "stats.json")}

    killed = cli(run, *args, "mining.num_negatives=2", hook="pause_in_mine")
    kill_when(killed, ".mine.tmp-*/stats.json", run)  # the new output, whole but unpublished
    assert {name: (run / "mine" / name).read_bytes() for name in before} == before

    again = run_pipeline(RunContext(make_config(run, *args, "mining.num_negatives=2"), run))
    assert again["run"]["ran_now"] == ["mine"]  # recomputed, not picked up from the killed run's folder
    manifest = json.loads((run / "mine" / "manifest.json").read_text())
    assert manifest["key"] != json.loads(before["manifest.json"])["key"]
    assert manifest["inputs"]["mining"]["num_negatives"] == 2


# ---------------------------------------------------------------- bad input and config, through the CLI


def _edit_line(path: Path, number: int, content: bytes) -> None:
    lines = path.read_bytes().splitlines(keepends=True)
    lines[number - 1] = content + b"\n"
    path.write_bytes(b"".join(lines))


def _append(path: Path, line: str) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(line + "\n")


# case: (edit of a copy of tiny_beir, file, line, field, words). Empty text and a missing model path are
# covered in test_cli.py.
BAD_DATA = {
    "missing file": (lambda d: (d / "queries.jsonl").unlink(), "queries.jsonl", None, None, "not found"),
    "bad JSON line": (lambda d: _edit_line(d / "corpus.jsonl", 3, b"{not json"), "corpus.jsonl", 3, None,
                      "bad JSON"),
    "duplicate id": (lambda d: _append(d / "corpus.jsonl", '{"_id": "d5", "text": "again"}'), "corpus.jsonl", 61,
                     "_id", "duplicate id 'd5'"),
    "qrels unknown id": (lambda d: _append(d / "qrels" / "test.tsv", "q21\td999\t1"), "test.tsv", 13, "corpus-id",
                         "unknown corpus id 'd999'"),
    "split with no queries": (lambda d: (d / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\n"),
                              "dev.tsv", None, None, "no queries"),
    "non-UTF-8 bytes": (lambda d: _edit_line(d / "corpus.jsonl", 2, b'{"_id": "d1", "text": "caf\xe9"}'),
                        "corpus.jsonl", 2, None, "not valid UTF-8"),
    "empty corpus": (lambda d: (d / "corpus.jsonl").write_text(""), "corpus.jsonl", None, None, "corpus is empty"),
}
# case: (override, what the one-line error must name). A typo in a plain override is covered in test_cli.py;
# `+` forces a key past Hydra's check, and the typed config would then drop it silently.
BAD_CONFIG = {
    "forced unknown key": ("+eval.k_vaules=[1,5]", "k_vaules"),
    "forced unknown group": ("+trainig.batch_size=8", "trainig"),
    "unknown group option": ("model=minlm", "minlm"),
}


def _drop_root_file_powers() -> None:
    """Runs in the child before exec: root ignores file modes, so drop the capabilities that let it
    (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER) from the bounding set."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2, 3):
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


@pytest.fixture(scope="module")
def cli_errors(tiny_beir, tiny_model, tmp_path_factory) -> dict[str, tuple[int, str, Path, Path]]:
    """Every bad-input, bad-config and read-only case through `python -m train`, three at a time:
    case -> (exit code, output, the BEIR folder it read, its run directory)."""
    root = tmp_path_factory.mktemp("cli-errors")
    jobs = {}  # case -> (data, run directory, overrides, Popen options)
    for name, (edit, *_) in BAD_DATA.items():
        data = root / f"data-{name.replace(' ', '-')}"
        shutil.copytree(tiny_beir, data)
        edit(data)
        jobs[name] = (data, root / f"run-{name.replace(' ', '-')}", [], {})
    for name, (override, _) in BAD_CONFIG.items():
        jobs[name] = (tiny_beir, root / f"run-{name.replace(' ', '-')}", [override], {})
    read_only = root / "read-only"
    read_only.mkdir(mode=0o555)
    jobs["read-only run dir"] = (tiny_beir, read_only, ["stages=[audit]"],
                                 {"preexec_fn": _drop_root_file_powers if os.geteuid() == 0 else None})
    pending, running, results = list(jobs), {}, {}
    while pending or running:
        if pending and len(running) < 3:
            name = pending.pop(0)
            data, run, overrides, popen = jobs[name]
            running[name] = cli(run, *_data_args(data, tiny_model, root / "cache"), *overrides, **popen)
        elif done := [name for name, proc in running.items() if proc.poll() is not None]:
            for name in done:
                results[name] = (*finish(running.pop(name)), *jobs[name][:2])
        else:
            time.sleep(0.2)
    return results


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize("case", BAD_DATA)
def test_bad_input_is_one_line_naming_file_line_and_field_with_exit_code_2(cli_errors, case):
    code, out, data, _ = cli_errors[case]
    _, file, line, field, words = BAD_DATA[case]
    assert code == 2, out[-2000:]
    assert "Traceback" not in out
    (error,) = _error_lines(out)
    where = re.search(r"error: (\S+?)(?::(\d+))?(?:, field '([^']+)')?: ", error)
    assert where, error
    assert Path(where.group(1)).name == file and Path(where.group(1)).is_relative_to(data)
    assert (int(where.group(2)) if where.group(2) else None, where.group(3)) == (line, field)
    assert words in error


@pytest.mark.parametrize("case", BAD_CONFIG)
def test_unknown_or_mistyped_config_key_fails_naming_it(cli_errors, case):
    code, out, _, _ = cli_errors[case]
    assert code != 0, out[-2000:]
    assert BAD_CONFIG[case][1] in out and "Traceback" not in out


def test_read_only_run_dir_is_a_clear_error(cli_errors):
    code, out, _, run = cli_errors["read-only run dir"]
    assert code == 2, out[-2000:]
    assert "Traceback" not in out
    (error,) = _error_lines(out)
    assert str(run) in error and "Permission denied" in error


# ---------------------------------------------------------------- safety


def test_remote_code_runs_only_when_the_model_config_says_so(make_config, tiny_model, tmp_path, monkeypatch):
    import sentence_transformers

    seen = []
    real = sentence_transformers.SentenceTransformer

    def recording(*args, **kwargs):
        seen.append(kwargs["trust_remote_code"])
        return real(*args, **kwargs)

    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", recording)
    models = sorted(p.stem for p in (SRC / "domain_embed" / "conf" / "model").glob("*.yaml"))
    for name in models:  # no shipped model config turns it on, so none may run remote code
        cfg = make_config(tmp_path, "+domain=beir", "data.path=x", f"model={name}", f"model.path={tiny_model}")
        assert cfg.model.trust_remote_code is False, name
        _ = Embedder(cfg.model, cache_dir=None).model
    cfg = make_config(tmp_path, "+domain=beir", "data.path=x", "model.trust_remote_code=true",
                      f"model.path={tiny_model}")
    _ = Embedder(cfg.model, cache_dir=None).model
    assert seen == [False] * len(models) + [True]
    # and every other loader in the package passes the config's value, never a literal
    for path in SRC.rglob("*.py"):
        for value in re.findall(r"trust_remote_code=([^,)\s]+)", path.read_text()):
            assert value.endswith("trust_remote_code"), (path, value)


UNSAFE_LOADERS = re.compile(r"\bimport pickle\b|\bpickle\.loads?\(|torch\.load\(|allow_pickle\s*=\s*True|"
                            r"weights_only\s*=\s*False|\bjoblib\b|\bdill\b|cloudpickle|read_pickle|yaml\.load\(|"
                            r"\bmarshal\b|(?<![\w.])eval\(|(?<![\w.])exec\(")


def test_no_code_path_unpickles_what_it_reads():
    found = [f"{p.relative_to(SRC)}:{n}: {line.strip()}" for p in SRC.rglob("*.py")
             for n, line in enumerate(p.read_text().splitlines(), 1) if UNSAFE_LOADERS.search(line)]
    assert found == []
    import inspect

    assert inspect.signature(np.load).parameters["allow_pickle"].default is False


class _Tripwire:
    """Unpickling it creates a file: proof that a pickle in the cache would have run."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return Path.touch, (self.path,)


def test_a_pickle_planted_in_the_embedding_cache_is_refused_not_run(tiny_model, tmp_path):
    cfg = ModelConfig(path=str(tiny_model))
    texts = ["capital requirements", "client assets"]
    Embedder(cfg, cache_dir=tmp_path / "cache", show_progress=False).encode_documents(texts)
    (entry,) = (tmp_path / "cache" / "embeddings").iterdir()
    marker = tmp_path / "unpickled"
    np.save(entry / "embeddings.npy", np.array([_Tripwire(marker)], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError):
        Embedder(cfg, cache_dir=tmp_path / "cache", show_progress=False).encode_documents(texts)
    assert not marker.exists()


def test_tokens_never_reach_logs_reports_or_model_cards(reference):
    _, output, report = reference.result()
    assert report["run"]["config"]["tracking"]["backend"] == "none"
    config = json.dumps(report["run"]["config"])
    written = {p: p.read_bytes() for p in reference.run.rglob("*") if p.is_file()}
    assert (reference.run / "finetune" / "model" / "README.md") in written and (reference.run / "train.log") in written
    for secret in SECRETS.values():
        assert secret not in output and secret not in config
        assert [p for p, content in written.items() if secret.encode() in content] == []


# ---------------------------------------------------------------- outputs that cannot be written


def test_a_full_disk_while_writing_the_report_keeps_the_previous_outputs(make_config, tiny_beir, tiny_model,
                                                                         tmp_path, monkeypatch):
    run = tmp_path / "run"
    args = [*_data_args(tiny_beir, tiny_model, tmp_path / "cache"), "stages=[audit,baseline]"]
    run_pipeline(RunContext(make_config(run, *args), run))
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    real_replace = os.replace

    def full_disk(src, dst, *a, **k):
        if Path(dst).name == "report.json":
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError) as caught:
        run_pipeline(RunContext(make_config(run, *args), run))  # stages up to date: only the report is rewritten
    assert caught.value.errno == errno.ENOSPC
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before  # no temp file left either
