"""The reranker's training rows and its CrossEncoderTrainer run on the tiny model."""

import pytest
from datasets import Dataset

from domain_embed.config import RerankConfig
from domain_embed.errors import ConfigError
from domain_embed.tuning.reranker import DEV_METRIC, dev_samples, new_reranker, train_reranker, training_rows
from domain_embed.tuning.triplets import COLUMNS


def _triplets(n: int = 12) -> Dataset:
    """Query i's positive is d{i}; its mined negatives are the next three documents. q0 has a second positive, d1,
    labelled in the test split only (as mining might not have seen): d1 must not become its negative."""
    rows = []
    for i in range(n):
        negs = [f"d{(i + j) % n}" for j in (1, 2, 3)]
        rows.append({"query_id": f"q{i}", "query": f"what does topic{i} require", "positive_id": f"d{i}",
                     "positive": f"topic{i}: the firm shall notify", "positive_score": 0.9, "negative_ids": negs,
                     "negatives": [f"topic{d[1:]}: the firm shall notify" for d in negs],
                     "negative_scores": [0.5, 0.4, 0.3], "split": "train"})
    rows.append({**rows[0], "positive_id": "d5", "positive": "topic5: the firm shall notify"})  # 2nd positive of q0
    return Dataset.from_dict({c: [r[c] for r in rows] for c in COLUMNS})


LABELLED = {f"q{i}": {f"d{i}"} for i in range(12)} | {"q0": {"d0", "d5", "d1"}}


def test_training_rows_never_hold_a_labelled_positive_as_a_negative():
    rows, stats = training_rows(_triplets(), LABELLED, num_negatives=2)
    pairs = list(zip(rows["query_id"], rows["doc_id"], rows["label"], strict=True))
    assert not [(q, d) for q, d, label in pairs if label == 0.0 and d in LABELLED[q]]
    assert ("q0", "d1", 0.0) not in pairs and stats["dropped_labelled_positive"] == 2  # once per q0 row
    assert len(set((q, d) for q, d, _ in pairs)) == len(pairs)  # each (query, document) once
    assert stats == {"queries": 12, "rows": len(pairs), "positives": 13, "negatives": len(pairs) - 13,
                     "dropped_labelled_positive": 2}
    assert {("q0", "d0", 1.0), ("q0", "d5", 1.0), ("q0", "d2", 0.0)} <= set(pairs)
    assert ("q0", "d3", 0.0) not in pairs  # the third negative is past num_negatives=2


def test_training_rows_sample_queries_and_check_the_count():
    rows, stats = training_rows(_triplets(), LABELLED, 1, max_queries=4, seed=0)
    again, _ = training_rows(_triplets(), LABELLED, 1, max_queries=4, seed=0)
    assert stats["queries"] == 4 and rows["query_id"] == again["query_id"]
    with pytest.raises(ConfigError, match=r"rerank\.num_negatives"):
        training_rows(_triplets(), LABELLED, 0)


def test_dev_samples_group_positives_and_negatives_by_query():
    samples = dev_samples(_triplets(), None, 0)
    q0 = next(s for s in samples if s["query"] == "what does topic0 require")
    assert q0["positive"] == ["topic0: the firm shall notify", "topic5: the firm shall notify"]
    assert len(q0["negative"]) == 3 and len(samples) == 12
    assert len(dev_samples(_triplets(), 5, 0)) == 5


def test_trainer_evaluates_on_dev_keeps_the_best_checkpoint_and_resumes(tiny_model, tmp_path):
    rows, _ = training_rows(_triplets(), LABELLED, 2)
    dev = dev_samples(_triplets(), 4, 0)
    cfg = RerankConfig(train_batch_size=8, epochs=2, eval_steps=2, learning_rate=1e-3, keep_checkpoints=True)
    first = new_reranker(str(tiny_model), 64, seed=0, device="cpu")
    result = train_reranker(first, rows, dev, cfg, tmp_path / "work", seed=0, device="cpu")
    evals = [h[DEV_METRIC] for h in result.log_history if DEV_METRIC in h]
    assert len(evals) >= 2 and result.best_dev_ndcg10 == max(evals) and result.global_step == 10
    assert result.best_checkpoint and result.resumed_from is None
    with pytest.raises(ConfigError, match=r"set rerank\.resume=true"):  # never starts over on old checkpoints
        train_reranker(new_reranker(str(tiny_model), 64, seed=0, device="cpu"), rows, dev, cfg, tmp_path / "work",
                       seed=0, device="cpu")
    again = new_reranker(str(tiny_model), 64, seed=0, device="cpu")
    assert all((a == b).all() for a, b in zip(again.model.state_dict().values(),
                                              new_reranker(str(tiny_model), 64, seed=0).model.state_dict().values(),
                                              strict=True))  # the fresh head comes from the seed


def test_a_new_reranker_loads_quietly_and_leaves_the_loggers_as_they_were(tiny_model, caplog):
    """The new head is the point: no load report, no "SentenceTransformer becomes a CrossEncoder" warning, and none of
    transformers' tensor-parallel complaints about an unsharded model (which a raised logger level would trigger)."""
    import logging

    loader = logging.getLogger("transformers.modeling_utils")
    before = (loader.level, list(loader.filters))
    with caplog.at_level(logging.WARNING):
        new_reranker(str(tiny_model), 64, seed=0, device="cpu")
    assert [r.getMessage()[:80] for r in caplog.records] == []
    assert (loader.level, list(loader.filters)) == before
