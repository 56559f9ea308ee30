"""Every configurable loss builds, and one real trainer step with it moves the weights."""

import pytest
import torch
from datasets import Dataset
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer import losses

from domain_embed.config import TrainingConfig
from domain_embed.errors import ConfigError
from domain_embed.tuning.losses import build_loss, columns_for
from domain_embed.tuning.trainer import train_model


def _load(path) -> SentenceTransformer:
    return SentenceTransformer(str(path), device="cpu")


def _rows(columns: list[str], n: int = 16) -> Dataset:
    """Distinct texts in every column, so the no-duplicates sampler keeps whole batches."""
    return Dataset.from_dict({c: [f"{c} text about rule {i} and clause {(i * 7) % n}" for i in range(n)]
                              for c in columns})


@pytest.mark.parametrize(("loss", "num_negatives", "matryoshka", "expected"), [
    ("mnrl", 2, [], losses.MultipleNegativesRankingLoss),
    ("cached_mnrl", 1, [], losses.CachedMultipleNegativesRankingLoss),
    ("triplet", 1, [], losses.TripletLoss),
    ("gist", 1, [], losses.GISTEmbedLoss),
    ("mnrl", 1, [32, 16, 8], losses.MatryoshkaLoss),
])
def test_loss_builds_and_one_step_changes_the_weights(tiny_model, tmp_path, loss, num_negatives, matryoshka,
                                                      expected):
    model = _load(tiny_model)
    cfg = TrainingConfig(loss=loss, num_negatives=num_negatives, mini_batch_size=4, matryoshka_dims=matryoshka,
                         batch_size=8, max_steps=1, learning_rate=1e-2, warmup=0.0, logging_steps=1)
    guide = _load(tiny_model) if loss == "gist" else None
    built = build_loss(model, cfg, guide)
    assert isinstance(built, expected)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = train_model(model, _rows(columns_for(loss, num_negatives)), None, cfg, tmp_path, seed=0, guide=guide)
    assert result.global_step == 1
    assert torch.isfinite(torch.tensor(result.log_history[0]["loss"]))
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_in_batch_losses_pass_gather_across_devices(tiny_model, monkeypatch):
    model = _load(tiny_model)
    monkeypatch.setenv("WORLD_SIZE", "2")
    for name in ("mnrl", "cached_mnrl", "gist"):
        for gather in (True, False):
            built = build_loss(model, TrainingConfig(loss=name, gather_across_devices=gather), guide=model)
            assert built.gather_across_devices is gather
    monkeypatch.setenv("WORLD_SIZE", "1")  # one process: nothing to gather, so no per-step warning
    assert build_loss(model, TrainingConfig(loss="mnrl", gather_across_devices=True)).gather_across_devices is False


@pytest.mark.parametrize("configured", [[32, 8], [8]])
def test_matryoshka_wraps_with_the_configured_dims_and_always_the_models_own(tiny_model, configured):
    built = build_loss(_load(tiny_model), TrainingConfig(loss="cached_mnrl", matryoshka_dims=configured))
    assert isinstance(built, losses.MatryoshkaLoss)
    assert list(built.matryoshka_dims) == [32, 8]
    assert isinstance(built.loss, losses.CachedMultipleNegativesRankingLoss)


def test_the_matryoshka_recipe_fits_models_of_other_dimensions():
    """conf/recipe/matryoshka.yaml names truncations only: MiniLM gets the 384/256/128/64 it was measured with, a
    768-dim model trains its own 768 (a list naming 384 would have left its full width untrained)."""
    from hydra import compose, initialize_config_module

    from domain_embed.hydra_setup import register_configs
    from domain_embed.tuning.losses import matryoshka_dims

    register_configs()
    with initialize_config_module("domain_embed.conf", version_base="1.3"):
        configured = list(compose("config", ["+recipe=matryoshka"]).training.matryoshka_dims)
    assert matryoshka_dims(configured, 384) == [384, 256, 128, 64]
    assert matryoshka_dims(configured, 768) == [768, 256, 128, 64]
    assert matryoshka_dims(configured, 256) == [256, 128, 64]
    with pytest.raises(ConfigError, match="below the model's dimension 128"):
        matryoshka_dims(configured, 128)
    assert matryoshka_dims([], 768) == []


@pytest.mark.parametrize(("overrides", "message"), [
    ({"loss": "infonce"}, "unknown training.loss"),
    ({"loss": "gist"}, "guide"),
    ({"matryoshka_dims": [64, 16]}, "1..31"),
    ({"matryoshka_dims": [8, 16]}, "decreasing"),
    ({"matryoshka_dims": [16, 16]}, "decreasing"),
    ({"matryoshka_dims": [16, 0]}, "1..31"),
    ({"matryoshka_dims": [32, 32]}, "1..31"),
    ({"loss": "cached_mnrl", "mini_batch_size": 0}, "mini_batch_size"),
])
def test_bad_loss_configs_raise_config_error(tiny_model, overrides, message):
    with pytest.raises(ConfigError, match=message):
        build_loss(_load(tiny_model), TrainingConfig(**overrides))


def test_columns_for_each_loss():
    assert columns_for("mnrl", 0) == ["anchor", "positive"]
    assert columns_for("cached_mnrl", 3) == ["anchor", "positive", "negative_1", "negative_2", "negative_3"]
    assert columns_for("gist", 1) == ["anchor", "positive", "negative_1"]
    assert columns_for("triplet", 5) == ["anchor", "positive", "negative"]
    with pytest.raises(ConfigError, match="num_negatives >= 1"):
        columns_for("triplet", 0)
    with pytest.raises(ConfigError, match=">= 0"):
        columns_for("mnrl", -1)
    with pytest.raises(ConfigError, match=r"unknown training\.loss"):
        columns_for("contrastive", 1)
    with pytest.raises(ConfigError, match="at most one hard negative"):  # it would fail at the first step
        columns_for("gist", 3)
