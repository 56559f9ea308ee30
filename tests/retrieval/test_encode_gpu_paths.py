"""The encoder's GPU paths on a CPU (issue 26): each CUDA fact they read is faked (device count, LOCAL_RANK, compute
capability, event completion), and sentence-transformers' unpadded path (flash attention on a GPU) runs on the CPU
through its own flattening collator, which transformers' sdpa attention computes as packed sequences."""

import collections
import threading
import time
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

from domain_embed import devices, distributed
from domain_embed.config import ModelConfig
from domain_embed.errors import ModelLoadError
from domain_embed.retrieval import shards
from domain_embed.retrieval.embed import Embedder
from domain_embed.retrieval.timing import Clock, EncodeStats

TEXTS = [f"passage {i}: the firm shall notify " + "the regulator of a change " * (i % 9) for i in range(60)]


def _embedder(path, cache=None, **kw):
    settings = {k: kw.pop(k) for k in ("max_batch_tokens", "workers", "shard_rows") if k in kw}
    return Embedder(ModelConfig(name="tiny", path=str(path), **kw), cache_dir=cache, device="cpu",
                    show_progress=False, **settings)


def _one_gpu(monkeypatch, capability=(8, 0)):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)


def test_device_auto_under_a_per_task_launcher_loads_on_the_one_visible_gpu(tiny_model, monkeypatch):
    """SLURM --gpus-per-task: the task sees one GPU (ordinal 0) and LOCAL_RANK=3. sentence-transformers' own pick
    for device=None would be cuda:3, an invalid ordinal there."""
    import sentence_transformers

    _one_gpu(monkeypatch)
    monkeypatch.setenv("LOCAL_RANK", "3")
    asked = []

    def loader(location, device=None, **kwargs):
        asked.append(device)
        raise RuntimeError("no GPU in this test")

    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", loader)
    assert distributed.cuda_device() == 0
    config = ModelConfig(name="tiny", path=str(tiny_model), encode_dtype="fp32")
    with pytest.raises(ModelLoadError):
        _ = Embedder(config, cache_dir=None, device="auto").model
    assert asked == ["cuda:0"]
    with pytest.raises(ModelLoadError):  # an explicit device is kept as it is
        _ = Embedder(config, cache_dir=None, device="cuda:1").model
    assert asked == ["cuda:0", "cuda:1"]


class _Event:
    """A CUDA event of one fake stream: complete only once it, or an event recorded after it, was waited for."""

    waited_up_to = -1
    recorded = 0

    def __init__(self, enable_timing=False):
        self.seq, self.stream = None, None

    def record(self, stream=None):
        self.seq, self.stream = _Event.recorded, stream
        _Event.recorded += 1

    def synchronize(self):
        _Event.waited_up_to = max(_Event.waited_up_to, self.seq)

    def elapsed_time(self, end):
        if max(self.seq, end.seq) > _Event.waited_up_to:  # torch: "device not ready"
            raise RuntimeError("CUDA error: device not ready")
        return 1000.0 * (end.seq - self.seq)


def _fake_events(monkeypatch):
    streams = {0: "stream of cuda:0", 1: "stream of cuda:1"}
    monkeypatch.setattr(torch.cuda, "Event", _Event)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: streams[
        0 if device is None or torch.device(device).index is None else torch.device(device).index])
    monkeypatch.setattr(_Event, "waited_up_to", -1)
    clock = Clock(torch.device("cuda", 1))
    for name in ("h2d", "compute", "d2h"):
        with clock.span(name):
            pass
    return clock


def test_the_clock_waits_for_its_last_event_before_reading_the_times(monkeypatch):
    """A one-batch encode reads its times right after queuing the copy, when its events are not complete yet:
    torch refuses elapsed_time then."""
    clock, stats = _fake_events(monkeypatch), EncodeStats()
    clock.add_to(stats)
    assert (stats.h2d_s, stats.compute_s, stats.d2h_s) == (1.0, 1.0, 1.0)
    assert _Event.waited_up_to == _Event.recorded - 1  # one wait, for the last event: every other one is earlier


def test_the_clock_records_on_the_models_stream(monkeypatch):
    """The model on cuda:1 while cuda:0 is current: its copies and kernels run on cuda:1's stream, so its events must
    be recorded there to time them."""
    clock = _fake_events(monkeypatch)
    assert {event.stream for _, start, end in clock.spans for event in (start, end)} == {"stream of cuda:1"}


@pytest.mark.parametrize(("capability", "attention"), [((7, 5), None), ((7, 0), None), ((8, 0), "flash_attention_2"),
                                                       ((9, 0), "flash_attention_2")])
def test_flash_attention_only_on_ampere_or_newer(monkeypatch, capability, attention):
    """flash-attn installed on a T4 (7.5) or V100 (7.0): flash-attn 2 raises there, so transformers' default stays."""
    _one_gpu(monkeypatch, capability)
    monkeypatch.setattr("transformers.utils.is_flash_attn_2_available", lambda: True)
    assert devices.encode_settings(None, half=True).attn_implementation == attention
    assert devices.encode_settings("cuda:0", half=True).attn_implementation == attention


def test_padding_to_a_multiple_of_8_never_passes_the_window():
    assert devices.pad_multiple(True, 256) == 8
    assert devices.pad_multiple(True, 510) is None  # 510 tokens would be padded to 512
    assert devices.pad_multiple(False, 256) is None


def _packed(embedder: Embedder) -> Embedder:
    """sentence-transformers' unpadded path, as with flash attention on a GPU: its flattening collator."""
    from transformers import DataCollatorWithFlattening

    transformer = embedder.model[0]
    transformer.data_collator = DataCollatorWithFlattening(return_seq_idx=True, return_flash_attn_kwargs=True,
                                                           return_position_ids=True)
    transformer._flatten_position_offset = 0
    transformer.can_flatten_inputs = True
    return embedder


def _batch_tokens(embedder: Embedder) -> list[int]:
    sizes = []
    embedder.model[0].register_forward_pre_hook(lambda module, args: sizes.append(args[0]["input_ids"].numel()))
    return sizes


def test_packed_batches_stay_within_the_budget_with_a_long_prompt(tiny_model):
    """An instruction prompt is tokens too: sized by characters without it, packed batches took 338 tokens of a
    200-token budget here (2-4x on real instructions)."""
    prompt = "Represent this legal passage for retrieving the obligations it sets out: "
    emb = _packed(_embedder(tiny_model, document_prompt=prompt, max_batch_tokens=200))
    sizes = _batch_tokens(emb)
    vectors = emb.encode_documents(TEXTS)
    assert "attention_mask" not in emb.model.preprocess(TEXTS[:2], prompt=prompt)  # really the packed path
    assert sizes and max(sizes) <= 200 and sum(sizes) == emb.stats.tokens
    plain = emb.model.encode(TEXTS, prompt=prompt, normalize_embeddings=True)
    np.testing.assert_allclose(vectors, plain, atol=1e-6)


def test_a_text_of_no_token_in_the_packed_path_keeps_the_other_rows(tiny_model):
    """A tokenizer that adds no special tokens gives an empty text no token; the flattening collator drops it, and
    the batch then has one vector fewer than texts. It gets a zero vector (as padded mean pooling gives it), and
    every other text its own."""
    from tokenizers import processors

    emb = _embedder(tiny_model, max_batch_tokens=200)
    emb.model.tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(single="$A", pair="$A $B")
    texts = [*TEXTS[:20], "", *TEXTS[20:40]]
    assert emb.model.tokenizer("")["input_ids"] == []
    padded = emb.model.encode(texts, normalize_embeddings=True)  # sentence-transformers' own packed encode fails
    vectors = _packed(emb).encode_documents(texts)
    np.testing.assert_allclose(vectors, padded, atol=1e-6)
    assert not vectors[20].any()


def test_loader_workers_are_forked_once_per_embedder(tiny_model, monkeypatch):
    """Two calls of three shards each, two tokenizer workers: two processes in all, not two per shard."""
    import multiprocessing.process

    started = []
    start = multiprocessing.process.BaseProcess.start
    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start",
                        lambda self: (started.append(self.name), start(self))[1])
    emb = _embedder(tiny_model, workers=2, shard_rows=20)
    plain = emb.model.encode(TEXTS, normalize_embeddings=True)
    np.testing.assert_allclose(emb.encode_documents(TEXTS), plain, atol=1e-6)
    np.testing.assert_allclose(emb.encode_queries(TEXTS[:7]), plain[:7], atol=1e-6)
    assert emb.stats.shards_encoded == 4 and len(started) == 2


def test_a_shards_write_overlaps_the_next_shards_compute(tiny_model, tmp_path, monkeypatch):
    """The first shard's publish waits (up to 30 s) for the model to start on the second shard: written in series,
    it never sees that and the test fails; overlapped, it does, and nothing waits long."""
    emb = _embedder(tiny_model, tmp_path, shard_rows=20)
    computing, seen = threading.Event(), []
    emb.model[0].register_forward_pre_hook(lambda module, args: computing.set())
    publish = shards.publish_shard

    def slow_publish(path, vectors):
        if not seen:
            computing.clear()
            seen.append(computing.wait(30))
        publish(path, vectors)

    monkeypatch.setattr(shards, "publish_shard", slow_publish)
    t0 = time.perf_counter()
    vectors = emb.encode_documents(TEXTS)
    assert seen == [True] and time.perf_counter() - t0 < 30
    np.testing.assert_allclose(vectors, emb.model.encode(TEXTS, normalize_embeddings=True), atol=1e-6)


class _OnDevice(torch.Tensor):
    """A tensor the encode put on its device: what the host would have to wait for."""


_HOST_READS = {"__bool__", "item", "tolist", "cpu", "numpy", "__int__", "__float__", "__index__", "nonzero"}


class _Syncs(TorchFunctionMode):
    """A fake device: tensors copied with non_blocking=True or made with a device= argument (and every tensor
    computed from them) are `_OnDevice`; a read of their values on the host (bool, item, tolist, cpu, numpy...,
    a boolean index) is a host sync, counted by its caller outside torch: the package or a library. Thread-local,
    like torch's function modes: it counts the encoding thread."""

    def __init__(self):
        super().__init__()
        self.calls = collections.Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        boolean_index = name == "__getitem__" and getattr(args[1], "dtype", None) == torch.bool
        if (name in _HOST_READS or boolean_index) and any(isinstance(a, _OnDevice) for a in args):
            caller = next(f for f in reversed(traceback.extract_stack()[:-1]) if "/torch/" not in f.filename)
            self.calls["package" if "domain_embed" in caller.filename else Path(caller.filename).parent.name] += 1
        out = func(*args, **kwargs)
        if isinstance(out, torch.Tensor) and not isinstance(out, _OnDevice) and (
                (name == "to" and kwargs.get("non_blocking")) or kwargs.get("device") is not None):
            out = out.as_subclass(_OnDevice)
        return out


@pytest.mark.parametrize("packed", [False, True])
def test_the_package_makes_no_host_sync_while_it_encodes(tiny_model, packed):
    """fp16 (the finite check on) in 2 shards of several batches: the encoding thread never waits for the device
    (the copy's wait and the finite check are the writer thread's, once per shard). What syncs per batch is
    inside the libraries (docs/encode-syncs.md): transformers' check of the padded sdpa mask for all-ones, or of
    the packed position ids for packed sequences."""
    emb = _embedder(tiny_model, encode_dtype="fp16", max_batch_tokens=200, shard_rows=32)
    if packed:
        _packed(emb)
    plain = emb.model.encode(TEXTS, normalize_embeddings=True)
    with _Syncs() as syncs:
        vectors = emb.encode_documents(TEXTS)
    assert emb.stats.shards_encoded == 2 and emb.stats.batches > 4
    assert syncs.calls == {"transformers": emb.stats.batches}
    assert (np.sum(vectors * plain, axis=1) > 0.99).all()
