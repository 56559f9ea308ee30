"""Stages mine + triplets on the tiny BEIR set: one corpus encode, no labelled positive as negative."""

import json

import pytest
from datasets import DatasetDict

from domain_embed.context import RunContext
from domain_embed.pipeline import run_pipeline


@pytest.fixture
def overrides(tiny_beir, tiny_model, tmp_path):
    return ["+domain=beir", f"data.path={tiny_beir}", f"model.path={tiny_model}", "eval.batch_size=16",
            f"cache_dir={tmp_path / 'cache'}", "stages=[audit,baseline,mine,triplets]"]


def _labelled(beir):
    out = {}
    for split in ("train", "dev", "test"):
        for line in list((beir / "qrels" / f"{split}.tsv").open())[1:]:
            q, d, _ = line.split("\t")
            out.setdefault(q, set()).add(d)
    return out


def test_mine_and_triplets_write_dataset_and_meta(make_config, overrides, tmp_path, tiny_beir):
    run = tmp_path / "run"
    report = run_pipeline(RunContext(make_config(run, *overrides, "mining.relative_margin=null",
                                            "training.num_negatives=1"), run))
    assert report["cost"]["corpus_encodes"] == 1  # mining reused the baseline's corpus vectors
    assert json.loads((run / "mine" / "manifest.json").read_text())["cost"]["corpus_encodes"] == 0
    data = DatasetDict.load_from_disk(str(run / "triplets" / "dataset"))
    assert len(data["train"]) == 10 and len(data["dev"]) == 10  # one positive per train/dev query
    labelled = _labelled(tiny_beir)
    for split in ("train", "dev"):
        for row in data[split]:
            assert row["negative_ids"] and not set(row["negative_ids"]) & labelled[row["query_id"]]
            assert len(row["negatives"]) == len(row["negative_scores"]) == len(row["negative_ids"])
    assert not {r["query_id"] for r in data["train"]} & {r["query_id"] for r in data["dev"]}
    mnrl = DatasetDict.load_from_disk(str(run / "triplets" / "mnrl"))
    assert mnrl["train"].column_names == ["anchor", "positive", "negative_1"]
    meta = json.loads((run / "triplets" / "mining_meta.json").read_text())
    assert meta["parameters"]["range_max"] == 100 and meta["backend"] == "faiss-cpu"
    assert meta["dropped_by_rule"]["labelled_positive"] >= 20  # each mined query's own positive
    assert meta["warnings"] and "500" in meta["warnings"][0]
    assert (run / "triplets" / "scores.png").stat().st_size > 1000
    assert report["mining"]["split"]["train_rows"] == 10 and "Hard negatives" in (run / "report.md").read_text()


def test_long_document_contributes_a_window_that_fits(make_config, overrides, tmp_path, tiny_model):
    from transformers import AutoTokenizer

    run = tmp_path / "run"
    run_pipeline(RunContext(make_config(run, *overrides, "mining.relative_margin=null",
                                        "mining.num_negatives=60"), run))
    data = DatasetDict.load_from_disk(str(run / "triplets" / "dataset"))
    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    texts = [t for split in data.values() for row in split for t in row["negatives"]]
    assert any("clause" in t for t in texts)  # the long document d7 was mined
    assert max(len(tok(t)["input_ids"]) for t in texts) <= 64



def test_second_round_mines_with_the_tuned_model_and_never_picks_a_labelled_positive(make_config, overrides,
                                                                                    tmp_path, tiny_beir):
    run = tmp_path / "run"
    train = ["training.batch_size=4", "training.eval_steps=2", "training.save_steps=2", "training.num_negatives=1",
             "training.learning_rate=1e-3"]
    report = run_pipeline(RunContext(make_config(run, *overrides, *train, "stages=[evaluate]",
                                                 "mining.relative_margin=null", "mining.rounds=2",
                                                 "eval.hybrid.enabled=false"), run))
    log = json.loads((run / "finetune" / "train_log.json").read_text())
    assert [r["round"] for r in log["rounds"]] == [1, 2] and all(r["global_step"] > 0 for r in log["rounds"])
    assert log["global_step"] == sum(r["global_step"] for r in log["rounds"])
    second = log["rounds"][1]["mining"]
    assert second["parameters"]["rounds"] == 2 and second["dropped_by_rule"]["labelled_positive"] >= 20
    data = DatasetDict.load_from_disk(str(run / "finetune" / "round2" / "dataset"))
    first = DatasetDict.load_from_disk(str(run / "triplets" / "dataset"))
    labelled = _labelled(tiny_beir)
    for split in ("train", "dev"):
        assert len(data[split]) == len(first[split])
        for row in data[split]:
            assert row["negative_ids"] and not set(row["negative_ids"]) & labelled[row["query_id"]]
    assert [r["negative_ids"] for r in data["train"]] != [r["negative_ids"] for r in first["train"]]
    # base model once (baseline), the round-1 model once (round-2 mining), the final model once (evaluate)
    assert json.loads((run / "finetune" / "manifest.json").read_text())["cost"]["corpus_encodes"] == 1
    assert report["cost"]["corpus_encodes"] == 3
    md = (run / "report.md").read_text()
    assert "re-mined with the previous round's model" in md
    assert f"| 2 | {len(data['train'])} | {log['rounds'][1]['global_step']} |" in md
