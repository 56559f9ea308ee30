"""Mining rounds on the tiny BEIR set: every round is scored on one fixed dev set (the triplets stage's), and a
round's model is published only if it beats the round before it on that set."""

import dataclasses
import json

import numpy as np
import pytest
from datasets import DatasetDict
from sentence_transformers import SentenceTransformer

import domain_embed.stages.finetune as finetune
from domain_embed.context import RunContext
from domain_embed.pipeline import run_pipeline


@pytest.mark.parametrize("second_round", ["worse", "better"])
def test_a_second_round_is_kept_only_if_it_beats_the_first_on_the_same_dev_set(
        make_config, tiny_beir, tiny_model, tmp_path, monkeypatch, second_round):
    """Round 2's score is shifted (its weights are what it trained): a worse round 2 leaves round 1's model
    published and ends the rounds (mining.rounds=3), a better one is published and round 3 runs."""
    seen = []
    train = finetune.train_model

    def shifted(model, train_dataset, dev, cfg, output_dir, **kwargs):
        result = train(model, train_dataset, dev, cfg, output_dir, **kwargs)
        seen.append((output_dir.name, dev, result.best_dev_ndcg10))
        if output_dir.name == "round2":
            return dataclasses.replace(result, best_dev_ndcg10=seen[0][2] + (-0.5 if second_round == "worse" else 0.5))
        return result

    monkeypatch.setattr(finetune, "train_model", shifted)
    run = tmp_path / "run"
    # a small dev corpus: the dev queries' positives and mined negatives, so a re-mined dev set would differ
    cfg = make_config(run, "+domain=beir", f"data.path={tiny_beir}", f"model.path={tiny_model}", "eval.batch_size=16",
                      f"cache_dir={tmp_path / 'cache'}", "stages=[evaluate]", "mining.relative_margin=null",
                      "mining.rounds=3", "eval.hybrid.enabled=false", "training.batch_size=4", "training.eval_steps=2",
                      "training.save_steps=2", "training.num_negatives=1", "training.learning_rate=1e-3",
                      "training.dev_corpus_size=12", "training.keep_checkpoints=true")
    ctx = RunContext(cfg, run)
    report = run_pipeline(ctx)

    dev_sets = [finetune._dev_hash(dev) for _, dev, _ in seen]
    assert len(set(dev_sets)) == 1 and report["training"]["dev_set_sha256"] == dev_sets[0]
    first = DatasetDict.load_from_disk(str(run / "triplets" / "dataset"))["dev"]
    assert set(seen[0][1].corpus) >= {i for row in first for i in row["negative_ids"]}  # round 1's (base) negatives
    remined = DatasetDict.load_from_disk(str(run / "finetune" / "round2" / "dataset"))["dev"]
    assert [r["negative_ids"] for r in remined] != [r["negative_ids"] for r in first]  # a re-mined dev set differs

    training = report["training"]
    rounds = training["rounds"]
    work = finetune.checkpoints_dir(ctx, ctx.run_dir.manifest("finetune")["key"])
    published = SentenceTransformer(str(run / "finetune" / "model"), device="cpu")
    round1 = SentenceTransformer(str(work / "round1-model"), device="cpu")
    probe = ["topic3 rule", "which duties apply"]
    same_as_round1 = np.allclose(published.encode(probe), round1.encode(probe), atol=1e-6)
    md = (run / "report.md").read_text()
    if second_round == "worse":
        assert [r["kept"] for r in rounds] == [True, False] and training["kept_round"] == 1
        assert training["best_dev_ndcg@10"] == pytest.approx(rounds[0]["best_dev_ndcg@10"])  # the Optuna objective
        assert training["best_checkpoint"] == rounds[0]["best_checkpoint"]
        assert same_as_round1
        assert "**Round 1's model is the published one** (a round that did not beat it ends the rounds" in md
        assert "| 2 | " in md and "| no |" in md
        # the published model's corpus vectors were cached by round 2's mining: evaluate encodes nothing new
        assert json.loads((run / "evaluate" / "manifest.json").read_text())["cost"]["corpus_encodes"] == 0
    else:
        assert [r["kept"] for r in rounds][:2] == [True, True] and len(rounds) == 3
        assert training["kept_round"] == (3 if rounds[2]["kept"] else 2)
        assert not same_as_round1
        assert f"**Round {training['kept_round']}'s model is the published one**." in md
