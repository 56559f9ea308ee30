"""cost.corpus_encodes: the full-corpus encodes (embedding-cache misses) the run directory's outputs cost;
cost.corpus_encodes_this_run: those of the stages this invocation ran, which the CLI summary line shows."""

import json

import pytest

from domain_embed.cli import _summary_lines
from domain_embed.context import RunContext
from domain_embed.pipeline import run_pipeline

STAGES = ["audit", "baseline", "mine", "triplets", "finetune", "evaluate", "reranker", "rerank"]


@pytest.fixture(autouse=True)
def second_round_published(monkeypatch):
    """Round 2's model is published whatever its dev score, so that the final model is not the round-1 model whose
    corpus vectors round 2's mining cached (tests/test_finetune_rounds.py counts that case)."""
    import domain_embed.stages.finetune as finetune

    monkeypatch.setattr(finetune, "_beats", lambda score, kept: True)


@pytest.fixture
def overrides(tiny_beir, tiny_model):
    return ["+domain=beir", f"data.path={tiny_beir}", f"model.path={tiny_model}", "training.batch_size=4",
            "training.max_steps=2", "training.eval_steps=2", "training.save_steps=2"]


def _run(make_config, run, cache, *overrides) -> dict:
    return run_pipeline(RunContext(make_config(run, f"cache_dir={cache}", *overrides), run))


def _stage_encodes(run) -> dict[str, int]:
    """What each stage's manifest says it encoded (audit and reranker encode nothing and record no cost)."""
    return {s: json.loads((run / s / "manifest.json").read_text())["cost"]["corpus_encodes"] for s in STAGES
            if s not in ("audit", "reranker") and (run / s / "manifest.json").exists()}


def test_cold_cache_warm_cache_and_a_rerun_that_skips_everything(make_config, overrides, tmp_path):
    cache = tmp_path / "cache"
    cold = _run(make_config, tmp_path / "cold", cache, *overrides)
    assert cold["run"]["ran_now"] == STAGES
    # the base model; the round-1 model, for the second round's mining (mining.rounds=2 by default); the final one
    assert _stage_encodes(tmp_path / "cold") == {"baseline": 1, "mine": 0, "triplets": 0, "finetune": 1,
                                                 "evaluate": 1, "rerank": 0}
    assert cold["cost"]["corpus_encodes"] == cold["cost"]["corpus_encodes_this_run"] == 3

    warm = _run(make_config, tmp_path / "warm", cache, *overrides)  # same data, model and seed: same tuned weights
    assert warm["run"]["ran_now"] == STAGES
    assert set(_stage_encodes(tmp_path / "warm").values()) == {0}
    assert warm["cost"]["corpus_encodes"] == warm["cost"]["corpus_encodes_this_run"] == 0

    again = _run(make_config, tmp_path / "cold", cache, *overrides)
    assert again["run"]["ran_now"] == []
    assert again["cost"]["corpus_encodes"] == 3 and again["cost"]["corpus_encodes_this_run"] == 0
    assert _summary_lines(again)[-1].endswith("(corpus encodes this run: 0)")


def test_stages_that_miss_the_cache_count_what_they_encode(make_config, overrides, tmp_path):
    """The cache is emptied between invocations (a new cache_dir): the stage that runs next pays the encode."""
    run = tmp_path / "run"
    _run(make_config, run, tmp_path / "cache1", *overrides, "stages=[audit,baseline,mine]")
    triplets = _run(make_config, run, tmp_path / "cache2", *overrides, "stages=[triplets]")
    assert triplets["run"]["ran_now"] == ["triplets"] and _stage_encodes(run)["triplets"] == 1
    assert triplets["cost"]["corpus_encodes_this_run"] == 1 and triplets["cost"]["corpus_encodes"] == 2

    evaluated = _run(make_config, run, tmp_path / "cache3", *overrides)
    assert evaluated["run"]["ran_now"] == ["finetune", "evaluate", "reranker", "rerank"]
    assert _stage_encodes(run)["evaluate"] == 2  # the base model's corpus vectors were gone too, not only the tuned
    # finetune: the round-1 model for round 2's mining; evaluate: the base and the final model
    assert evaluated["cost"]["corpus_encodes_this_run"] == 3 and evaluated["cost"]["corpus_encodes"] == 5
