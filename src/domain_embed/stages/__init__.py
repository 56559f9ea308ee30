"""Stages register themselves by name; the pipeline looks them up here and imports none directly."""

from domain_embed.stages import (  # noqa: F401  (registration)
    audit,
    baseline,
    compare,
    evaluate,
    finetune,
    mine,
    rerank,
    reranker,
    triplets,
)
from domain_embed.stages.base import REGISTRY, Stage

__all__ = ["REGISTRY", "Stage"]
