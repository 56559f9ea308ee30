"""Training objectives offered by the fine-tune stage, built from `TrainingConfig`.

Every loss here reads its inputs by column position, so `columns_for` is the one place that says which columns
(and in which order) the training dataset must hold for a given loss.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import pairwise

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer import losses

from domain_embed import distributed
from domain_embed.config import TrainingConfig
from domain_embed.errors import ConfigError


def _gather(cfg: TrainingConfig) -> bool:
    """Gathering only means something with several ranks; asking for it alone just logs a warning per step."""
    return cfg.gather_across_devices and distributed.world_size() > 1


def _mnrl(model: SentenceTransformer, cfg: TrainingConfig, guide: SentenceTransformer | None) -> torch.nn.Module:
    return losses.MultipleNegativesRankingLoss(model, gather_across_devices=_gather(cfg))


def _cached_mnrl(model: SentenceTransformer, cfg: TrainingConfig, guide: SentenceTransformer | None) -> torch.nn.Module:
    if cfg.mini_batch_size < 1:
        raise ConfigError(f"training.mini_batch_size must be >= 1, got {cfg.mini_batch_size}")
    return losses.CachedMultipleNegativesRankingLoss(model, mini_batch_size=cfg.mini_batch_size,
                                                     gather_across_devices=_gather(cfg))


def _triplet(model: SentenceTransformer, cfg: TrainingConfig, guide: SentenceTransformer | None) -> torch.nn.Module:
    return losses.TripletLoss(model, triplet_margin=cfg.triplet_margin)


def _gist(model: SentenceTransformer, cfg: TrainingConfig, guide: SentenceTransformer | None) -> torch.nn.Module:
    if guide is None:
        raise ConfigError("training.loss=gist needs a guide model (the base model) to filter false negatives")
    return losses.GISTEmbedLoss(model, guide, gather_across_devices=_gather(cfg))


_BUILDERS: dict[str, Callable[[SentenceTransformer, TrainingConfig, SentenceTransformer | None], torch.nn.Module]] = {
    "mnrl": _mnrl,
    "cached_mnrl": _cached_mnrl,
    "triplet": _triplet,
    "gist": _gist,
}


def _require_known(loss: str) -> None:
    if loss not in _BUILDERS:
        raise ConfigError(f"unknown training.loss '{loss}' (expected one of: {', '.join(_BUILDERS)})")


def columns_for(loss: str, num_negatives: int) -> list[str]:
    """Dataset columns the loss reads, in order. In-batch losses take `num_negatives` hard negatives
    (0: pairs only, every other positive in the batch is a negative); triplet takes exactly one."""
    _require_known(loss)
    if loss == "triplet":
        if num_negatives < 1:
            raise ConfigError("training.loss=triplet needs a negative: set training.num_negatives >= 1")
        return ["anchor", "positive", "negative"]
    if num_negatives < 0:
        raise ConfigError(f"training.num_negatives must be >= 0, got {num_negatives}")
    if loss == "gist" and num_negatives > 1:  # GISTEmbedLoss reads (anchor, positive[, negative])
        raise ConfigError(f"training.loss=gist takes at most one hard negative: set training.num_negatives=1 "
                          f"(got {num_negatives})")
    return ["anchor", "positive", *(f"negative_{i}" for i in range(1, num_negatives + 1))]


def matryoshka_dims(configured: Sequence[int], model_dim: int) -> list[int]:
    """The dimensions MatryoshkaLoss trains and the evaluation scores: the model's own, then the configured smaller
    ones. A list of truncations alone (e.g. [256, 128, 64]) thus fits a model of any larger dimension; naming the
    model's dimension first is allowed too. Empty: no Matryoshka training."""
    if not configured:
        return []
    dims = [int(d) for d in configured]
    smaller = dims[1:] if dims[0] == model_dim else dims
    if any(d < 1 or d >= model_dim for d in smaller):
        raise ConfigError(f"training.matryoshka_dims {dims} must lie below the model's dimension {model_dim} (in "
                          f"1..{model_dim - 1}; the full {model_dim} is always trained too)")
    if any(a <= b for a, b in pairwise(smaller)):
        raise ConfigError(f"training.matryoshka_dims {dims} must be strictly decreasing, e.g. [256, 128, 64]")
    return [model_dim, *smaller]


def build_loss(model: SentenceTransformer, cfg: TrainingConfig,
               guide: SentenceTransformer | None = None) -> torch.nn.Module:
    """The configured loss; non-empty `matryoshka_dims` wraps it so that truncated embeddings also rank well."""
    _require_known(cfg.loss)
    loss = _BUILDERS[cfg.loss](model, cfg, guide)
    if not cfg.matryoshka_dims:
        return loss
    dims = matryoshka_dims(cfg.matryoshka_dims, model.get_embedding_dimension())
    return losses.MatryoshkaLoss(model, loss, matryoshka_dims=dims)
