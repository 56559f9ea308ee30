"""Stages register themselves by name; the pipeline looks them up here and imports none directly."""

from domain_embed.stages import audit, baseline, compare, evaluate, finetune, mine, triplets  # noqa: F401  (registration)
from domain_embed.stages.base import REGISTRY, Stage

__all__ = ["REGISTRY", "Stage"]
