"""Pause points for the kill tests (tests/killhooks.py). With this folder on PYTHONPATH and DE_TEST_HOOK=<name>,
a run holds for good at that point, so that the test's SIGKILL lands there and not at a lucky moment."""

import os
import time

HOLD = 600  # seconds: far longer than any test waits before its SIGKILL


def _hold_after_save(module, name: str) -> None:
    """`module.<name>` (a training entry that takes `callbacks`) holds once it has saved a checkpoint."""
    from transformers import TrainerCallback

    class _Hold(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):  # the checkpoint is complete on disk
            time.sleep(HOLD)

    train = getattr(module, name)
    setattr(module, name, lambda *a, **k: train(*a, **{**k, "callbacks": [_Hold()]}))


def pause_after_checkpoint() -> None:
    import domain_embed.stages.finetune as finetune

    _hold_after_save(finetune, "train_model")


def pause_after_rerank_checkpoint() -> None:
    import domain_embed.stages.reranker as stage

    _hold_after_save(stage, "train_reranker")


def pause_in_mine() -> None:
    import dataclasses

    from domain_embed.stages import REGISTRY

    mine = REGISTRY["mine"]

    def run(ctx, out, extras):
        mine.run(ctx, out, extras)  # every file written, the manifest not yet
        time.sleep(HOLD)

    REGISTRY["mine"] = dataclasses.replace(mine, run=run)


PAUSES = {f.__name__: f for f in (pause_after_checkpoint, pause_after_rerank_checkpoint, pause_in_mine)}

if name := os.environ.get("DE_TEST_HOOK"):
    if name not in PAUSES:  # fatal here: a misspelt pause would let the run go past the point the test kills at
        raise SystemExit(f"{__file__}: unknown DE_TEST_HOOK {name!r}, known: {', '.join(PAUSES)}")
    PAUSES[name]()
