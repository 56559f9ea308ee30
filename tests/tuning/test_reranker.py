"""The reranker's training lists, its losses and its CrossEncoderTrainer run on the tiny model."""

import numpy as np
import pytest

from domain_embed.errors import ConfigError
from domain_embed.stage_configs import RerankConfig, RerankLoss
from domain_embed.tuning.reranker import (
    DEV_METRIC,
    dev_lists,
    eval_steps,
    new_reranker,
    pairs,
    sample_queries,
    train_reranker,
    training_lists,
)

IDS = [f"d{i}" for i in range(12)]
QIDS = [f"q{i}" for i in range(12)]
QUERIES = [f"what does topic{i} require" for i in range(12)]
POSITIVES = {f"q{i}": {f"d{i}"} for i in range(12)} | {"q0": {"d0", "d5"}}  # the train qrels
LABELLED = POSITIVES | {"q0": {"d0", "d5", "d1"}}  # q0's d1: labelled relevant in the test split only


def _text(row: int, doc: int) -> str:
    return f"topic{doc}: the firm shall notify"


def _ranked(depth: int = 6) -> np.ndarray:
    """The first stage's lists: query i ranks d(i+1), ..., its positive d(i) at rank 2 (a look-alike above it)."""
    rows = [[(i + j) % 12 for j in (1, 2, 0, 3, 4, 5, 6, 7)][:depth] for i in range(12)]
    rows[3][4:] = [-1] * (depth - 4)  # a short list
    return np.array(rows)


def test_training_lists_come_from_the_first_stage_and_hold_no_labelled_positive_as_a_negative():
    ranked = _ranked()
    lists, stats = training_lists(QIDS, QUERIES, ranked, IDS, POSITIVES, LABELLED, 3, _text, seed=0)
    for row in lists:
        q = row["query_id"]
        listed = {IDS[d] for d in ranked[QIDS.index(q)] if d >= 0}
        negatives = {d for d, y in zip(row["doc_ids"], row["labels"], strict=True) if y == 0.0}
        assert negatives <= listed  # drawn from the first stage's own list, no margin rule
        assert not negatives & LABELLED[q]  # never a labelled positive, whatever split labels it
        assert {d for d, y in zip(row["doc_ids"], row["labels"], strict=True) if y == 1.0} == POSITIVES[q]
        assert len(negatives) == 3 or q == "q3"
        assert row["docs"] == [_text(0, IDS.index(d)) for d in row["doc_ids"]]
    q1 = next(r for r in lists if r["query_id"] == "q1")
    # the look-alike ranked above the positive stays in play: with 5 candidates for 3 negatives, seeds differ
    seen = set()
    for seed in range(8):
        again, _ = training_lists(QIDS, QUERIES, ranked, IDS, POSITIVES, LABELLED, 3, _text, seed=seed)
        seen |= set(next(r for r in again if r["query_id"] == "q1")["doc_ids"])
    assert "d2" in seen and "d3" in seen and set(q1["doc_ids"]) <= seen
    # q0's list held d1 (labelled in test) and d2 above its positive d0: d1 is taken out, counted
    q0 = next(r for r in lists if r["query_id"] == "q0")
    assert "d1" not in q0["doc_ids"] and stats["labelled_in_lists"] >= 2  # q0's d1 and d0, q11's d0 ...
    assert stats["queries"] == 12 and stats["positives"] == 13
    assert stats["pairs"] == sum(len(r["labels"]) for r in lists)
    flat = pairs(lists)
    assert len(flat) == stats["pairs"] and set(flat.column_names) == {"query", "document", "label"}
    with pytest.raises(ConfigError, match=r"rerank\.num_negatives"):
        training_lists(QIDS, QUERIES, ranked, IDS, POSITIVES, LABELLED, 0, _text)


def test_queries_are_sampled_by_seed():
    assert sample_queries(QIDS, 4, 0) == sample_queries(QIDS, 4, 0) and len(sample_queries(QIDS, 4, 0)) == 4
    assert sample_queries(QIDS, None, 0) == list(range(12)) == sample_queries(QIDS, 50, 0)


def test_dev_lists_keep_the_first_stage_order_and_every_positive():
    ranked = _ranked(3)
    samples = dev_lists(QUERIES[:2], ranked[:2], [[0, 5], []], _text)
    assert len(samples) == 1  # a query without a positive is not evaluated
    assert samples[0]["documents"] == [_text(0, d) for d in (1, 2, 0)]
    assert samples[0]["positive"] == [_text(0, 0), _text(0, 5)]  # d5 absent from the list: it counts as missed


def test_at_least_the_asked_number_of_evaluations_whatever_the_length():
    for rows, batch in ((10, 4), (1000, 16), (3, 8)):
        cfg = RerankConfig(train_batch_size=batch, evaluations=4)
        steps = eval_steps(cfg, rows)
        total = -(-rows // batch)
        assert total // steps >= min(4, total)
    with pytest.raises(ConfigError, match=r"rerank\.evaluations"):
        eval_steps(RerankConfig(evaluations=0), 10)


def _easy(row: int, doc: int) -> str:
    """Texts a tiny random model can learn to order: every positive says the same thing."""
    return "the firm shall notify the regulator" if IDS[doc] in POSITIVES[QIDS[row]] else f"unrelated note {doc}"


def _mean_loss(model, lists, kind: RerankLoss) -> float:
    """The loss over every training list at once, in eval mode (no dropout): the figure training must lower."""
    import torch

    from domain_embed.tuning.reranker import _loss

    loss, rows = _loss(model, lists, kind)
    model.eval()
    with torch.no_grad():
        if kind == RerankLoss.bce:
            return float(loss([rows["query"], rows["document"]], torch.tensor(rows["label"])))
        return float(loss([rows["query"], rows["docs"]], [torch.tensor(y) for y in rows["labels"]]))


@pytest.mark.parametrize("loss", [RerankLoss.lambdaloss, RerankLoss.listnet, RerankLoss.bce])
def test_each_loss_trains_the_tiny_model_and_its_loss_falls(tiny_model, tmp_path, loss):
    """Without a dev set (which would load an earlier best checkpoint back), so the last weights are the trained."""
    lists, _ = training_lists(QIDS, QUERIES, _ranked(), IDS, POSITIVES, LABELLED, 4, _easy, seed=0)
    cfg = RerankConfig(train_batch_size=4, epochs=4, learning_rate=2e-3, warmup=0.0, loss=loss)
    model = new_reranker(str(tiny_model), 64, seed=0, device="cpu")
    before = _mean_loss(model, lists, loss)
    train_reranker(model, lists, [], cfg, tmp_path / "work", seed=0, device="cpu")
    after = _mean_loss(model, lists, loss)
    # ListNet's target is a softmax of the 0/1 labels (0.41 for 1 positive among 5), so its floor is ~1.5 of ~1.6
    assert after < (before if loss == RerankLoss.listnet else 0.8 * before)  # it learns


def test_trainer_keeps_the_best_checkpoint_and_resumes(tiny_model, tmp_path):
    lists, _ = training_lists(QIDS, QUERIES, _ranked(), IDS, POSITIVES, LABELLED, 2, _text, seed=0)
    dev = dev_lists(QUERIES[:4], _ranked()[:4], [[i] for i in range(4)], _text)
    cfg = RerankConfig(train_batch_size=4, epochs=2, evaluations=3, learning_rate=1e-3, keep_checkpoints=True)
    first = new_reranker(str(tiny_model), 64, seed=0, device="cpu")
    result = train_reranker(first, lists, dev, cfg, tmp_path / "work", seed=0, device="cpu")
    evals = [h[DEV_METRIC] for h in result.log_history if DEV_METRIC in h]
    assert len(evals) >= 3 and result.best_dev_ndcg10 == max(evals) and result.global_step == 6
    assert result.best_checkpoint and result.resumed_from is None and result.eval_steps == 2
    with pytest.raises(ConfigError, match=r"set rerank\.resume=true"):  # never starts over on old checkpoints
        train_reranker(new_reranker(str(tiny_model), 64, seed=0, device="cpu"), lists, dev, cfg, tmp_path / "work",
                       seed=0, device="cpu")
    again = new_reranker(str(tiny_model), 64, seed=0, device="cpu")
    assert all((a == b).all() for a, b in zip(again.model.state_dict().values(),
                                              new_reranker(str(tiny_model), 64, seed=0).model.state_dict().values(),
                                              strict=True))  # the fresh head comes from the seed


def test_a_pretrained_cross_encoder_starts_with_its_own_head_then_trains_and_scores(tiny_cross_encoder, tmp_path):
    from sentence_transformers import CrossEncoder

    given = CrossEncoder(str(tiny_cross_encoder), device="cpu")
    start = new_reranker(str(tiny_cross_encoder), 64, seed=123, device="cpu")  # another seed: the head is loaded
    assert all((a == b).all() for a, b in zip(start.model.state_dict().values(), given.model.state_dict().values(),
                                              strict=True))
    lists, _ = training_lists(QIDS, QUERIES, _ranked(), IDS, POSITIVES, LABELLED, 3, _text, seed=0)
    cfg = RerankConfig(train_batch_size=4, epochs=1, evaluations=2, learning_rate=1e-3)
    result = train_reranker(start, lists, [], cfg, tmp_path / "work", seed=0, device="cpu")
    assert result.global_step == 3
    after = start.predict([(QUERIES[0], _text(0, 0))])
    assert after.shape == (1,) and after[0] != pytest.approx(given.predict([(QUERIES[0], _text(0, 0))])[0])


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
