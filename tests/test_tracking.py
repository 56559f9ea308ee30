"""W&B offline (no network) holds the training history; tracking=none logs nothing."""

import json
import struct

import pytest

from domain_embed.context import RunContext
from domain_embed.pipeline import run_pipeline

_BLOCK = 32 * 1024


def read_wandb_records(path):
    """Records of a W&B 0.31 offline .wandb file (a LevelDB-style log: 7-byte file header, 32 KiB blocks,
    7-byte record headers crc u32 / length u16 / type u8 with full/first/middle/last = 1/2/3/4)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, pending, records = 7, b"", []
    while pos + 7 <= len(data):
        if _BLOCK - pos % _BLOCK < 7:  # block trailer too small for a header: padding
            pos += _BLOCK - pos % _BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


@pytest.fixture
def overrides(tiny_beir, tiny_model, tmp_path):
    return ["+domain=beir", f"data.path={tiny_beir}", f"model.path={tiny_model}", f"cache_dir={tmp_path / 'cache'}",
            "training.batch_size=4", "training.eval_steps=2", "training.save_steps=2", "training.logging_steps=1"]


def test_wandb_offline_run_holds_history(make_config, overrides, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)  # must never appear in outputs
    run = tmp_path / "run"
    report = run_pipeline(RunContext(make_config(run, *overrides, "tracking=wandb"), run))
    files = list((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1
    records = read_wandb_records(files[0])
    history = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
               for r in records if r.HasField("history") for item in r.history.item}
    assert "train/loss" in history and "train/learning_rate" in history and "train/grad_norm" in history
    assert "eval/dev_cosine_ndcg@10" in history
    summary = {item.key or "/".join(item.nested_key): item.value_json
               for r in records if r.HasField("summary") for item in r.summary.update}
    assert json.loads(summary["tuned/ndcg@10"]) == pytest.approx(report["metrics"]["tuned"]["ndcg@10"])
    assert "mining/train_triplets" in summary
    config_keys = {item.key for r in records for cfg in ([r.config] if r.HasField("config") else [])
                   + ([r.run.config] if r.HasField("run") else []) for item in cfg.update}
    assert {"training", "mining", "data"} <= config_keys
    for path in [run / "report.json", run / "report.md", run / "finetune" / "model" / "README.md"]:
        assert "x" * 40 not in path.read_text()


def test_tracking_none_logs_nothing(make_config, overrides, tmp_path):
    run = tmp_path / "run"
    run_pipeline(RunContext(make_config(run, *overrides, "stages=[audit,baseline]"), run))
    assert not (run / "wandb").exists()
