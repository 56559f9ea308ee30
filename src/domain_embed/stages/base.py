"""A stage is a named step with declared upstream stages, the inputs that determine its output
(hashed into its manifest key) and a function that writes its output folder."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from domain_embed.context import RunContext


@dataclass(frozen=True)
class Stage:
    name: str
    requires: tuple[str, ...]
    inputs: Callable[[RunContext], dict]
    run: Callable[[RunContext, Path, dict], None]  # (context, output folder, manifest extras)
    does: str = ""  # what it produces, in a few words: the console's line for the stage


REGISTRY: dict[str, Stage] = {}


def register(stage: Stage) -> Stage:
    REGISTRY[stage.name] = stage
    return stage
