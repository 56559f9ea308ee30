"""Each candidate rule on a hand-made corpus where the right answer is known."""

import numpy as np
import pytest

from domain_embed.config import MiningConfig, SearchConfig
from domain_embed.errors import ConfigError, DataError
from domain_embed.tuning.mining import mine_hard_negatives, normalise_text
from domain_embed.tuning.triplets import leak_free_split, mnrl_view, to_dataset, triplet_view


def _unit(score: float) -> list[float]:
    """A 2-d unit vector whose cosine with the query [1, 0] is `score`."""
    return [score, float(np.sqrt(1 - score * score))]


# doc id -> (cosine with q1, text)
DOCS = {
    "pos": (0.90, "Capital must be held in cash."),
    "other_split_pos": (0.95, "Another labelled answer."),
    "same_text": (0.93, "  capital MUST be held in cash. "),
    "too_close": (0.88, "Near duplicate of the answer."),  # above 0.95 * 0.90 = 0.855
    "hard1": (0.85, "Capital may be held in bonds."),
    "hard2": (0.80, "Liquidity rules for banks."),
    "hard3": (0.70, "Reporting deadlines."),
    "easy": (0.10, "Office opening hours."),
}
IDS = list(DOCS)


def _mine(cfg: MiningConfig, rescore=None, qrels=None, windows_per_doc=1):
    """With several windows per document, each document's best window scores as in DOCS and comes last;
    the weaker ones (halving) come first, windows of different documents interleaved."""
    windows = [(i, s * 0.5**j) for j in reversed(range(windows_per_doc)) for i, (s, _) in enumerate(DOCS.values())]
    emb = np.array([_unit(s) for _, s in windows], dtype=np.float32)
    mined = qrels or {"train": {"q1": {"pos": 1}}}
    return mine_hard_negatives(
        query_ids=["q1"], query_splits=["train"], query_emb=np.array([[1.0, 0.0]], dtype=np.float32),
        window_emb=emb, parents=np.array([i for i, _ in windows]), corpus_ids=IDS,
        documents=[t for _, t in DOCS.values()],
        mined_qrels=mined, all_qrels={**mined, "test": {"q1": {"other_split_pos": 1}}}, cfg=cfg, seed=0,
        rescore=rescore)


def _cfg(**kw):
    return MiningConfig(search=SearchConfig(backend="faiss", device="cpu"), **kw)


def test_default_rules_keep_only_true_hard_negatives():
    res = _mine(_cfg(num_negatives=3))
    q = res.queries[0]
    assert q.negative_ids == ["hard1", "hard2", "hard3"]
    assert q.positive_scores == pytest.approx([0.90], abs=1e-6)
    assert res.dropped["labelled_positive"] == 2  # pos itself and the test-split positive
    assert res.dropped["same_text"] == 1 and res.dropped["relative_margin"] == 1
    assert res.candidates == len(IDS) and res.kept_before_sampling == 4
    assert res.stats()["rule_removing_most"] == "labelled_positive"


def test_chunked_documents_score_their_best_window_when_ranked_as_positives_and_as_random_fill():
    res = _mine(_cfg(num_negatives=3), windows_per_doc=3)  # same outcome as one window per document
    q = res.queries[0]
    assert q.negative_ids == ["hard1", "hard2", "hard3"]
    assert q.negative_scores == pytest.approx([0.85, 0.80, 0.70], abs=1e-6)
    assert q.positive_scores == pytest.approx([0.90], abs=1e-6)
    res = _mine(_cfg(range_max=5, num_negatives=3), windows_per_doc=3)  # only hard1 passes in ranks 0-4
    q = res.queries[0]
    assert res.random_fill == 2 and len(q.negative_ids) == 3
    assert dict(zip(q.negative_ids, q.negative_scores, strict=True)) == pytest.approx(
        {d: DOCS[d][0] for d in q.negative_ids}, abs=1e-6)


def test_rank_window_skips_the_top_ranks():
    # ranks: other_split_pos, same_text, pos, too_close, hard1, hard2, hard3, easy
    res = _mine(_cfg(range_min=5, range_max=7, num_negatives=5, relative_margin=None, fill_random=False))
    assert res.queries[0].negative_ids == ["hard2", "hard3"]
    assert res.dropped["rank_window"] == 5 and res.candidates == 7


def test_random_fill_tops_up_with_documents_that_pass_the_rules():
    res = _mine(_cfg(range_max=5, num_negatives=3))  # window: hard1 only passes
    q = res.queries[0]
    assert q.negative_ids[0] == "hard1" and set(q.negative_ids[1:]) <= {"hard2", "hard3", "easy"}
    assert len(q.negative_ids) == 3 and res.random_fill == 2
    assert res.stats()["negatives_random_fill"] == 2


def test_absolute_margin_and_max_score():
    res = _mine(_cfg(relative_margin=None, absolute_margin=0.08, num_negatives=5))
    assert res.queries[0].negative_ids == ["hard2", "hard3", "easy"]  # below 0.90 - 0.08
    res = _mine(_cfg(relative_margin=None, max_score=0.75, num_negatives=5, exclude_same_text=False))
    assert res.queries[0].negative_ids == ["hard3", "easy"]
    assert res.dropped["max_score"] == 4  # same_text, too_close, hard1, hard2


def test_same_text_rule_can_be_switched_off():
    res = _mine(_cfg(relative_margin=None, exclude_same_text=False, num_negatives=1))
    assert res.queries[0].negative_ids == ["same_text"]
    assert normalise_text("  A  b\nC ") == "a b c"


def test_random_sampling_stays_in_the_window_and_is_seeded():
    a = _mine(_cfg(sampling="random", num_negatives=2, relative_margin=None, exclude_same_text=False))
    b = _mine(_cfg(sampling="random", num_negatives=2, relative_margin=None, exclude_same_text=False))
    assert a.queries[0].negative_ids == b.queries[0].negative_ids
    assert set(a.queries[0].negative_ids) <= {"same_text", "too_close", "hard1", "hard2", "hard3", "easy"}


def test_rescorer_drops_what_the_cross_encoder_calls_relevant():
    def rescore(row, docs):
        return np.array([5.0 if IDS[d] == "hard1" else -5.0 for d in docs])

    res = _mine(_cfg(num_negatives=3), rescore=rescore)
    assert res.queries[0].negative_ids == ["hard2", "hard3", "easy"]
    assert res.dropped["rescorer"] == 1


def test_bad_inputs_name_the_query():
    with pytest.raises(DataError, match="q1"):
        _mine(_cfg(), qrels={"train": {"q1": {"pos": 0}}})
    with pytest.raises(DataError, match="not in the corpus"):
        _mine(_cfg(), qrels={"train": {"q1": {"ghost": 1}}})
    with pytest.raises(ConfigError):
        _mine(_cfg(range_min=10, range_max=5))
    with pytest.raises(ConfigError):
        _mine(_cfg(sampling="best"))


def _row(q, p, split, negs=("n1", "n2")):
    return {"query_id": q, "query": f"text {q}", "positive_id": p, "positive": f"doc {p}", "positive_score": 0.9,
            "negative_ids": list(negs), "negatives": [f"doc {n}" for n in negs], "negative_scores": [0.5] * len(negs),
            "split": split}


def test_split_has_no_query_or_positive_on_both_sides():
    rows = [_row("a", "d1", "train"), _row("b", "d2", "train"), _row("c", "d3", "dev"), _row("d", "d1", "dev")]
    train, dev, stats = leak_free_split(rows, "dev", 0.1, 0)
    assert [r["query_id"] for r in train] == ["a", "b"]
    assert [r["query_id"] for r in dev] == ["c"] and stats["dev_rows_dropped_for_leakage"] == 1


def test_hashed_split_keeps_linked_queries_together():
    rows = [_row(f"q{i}", f"d{i // 3}", "train") for i in range(300)]  # groups of 3 queries share a doc
    train, dev, stats = leak_free_split(rows, "dev", 0.3, seed=1)
    assert stats["dev_source"] == "hashed groups" and 40 < len(dev) < 140
    assert not {r["positive_id"] for r in train} & {r["positive_id"] for r in dev}
    assert not {r["query_id"] for r in train} & {r["query_id"] for r in dev}
    assert stats["dev_rows_dropped_for_leakage"] == 0


def test_loss_shapes():
    ds = to_dataset([_row("a", "d1", "train"), _row("b", "d2", "train", negs=("n1",))])
    mnrl = mnrl_view(ds, 2)
    assert mnrl.column_names == ["anchor", "positive", "negative_1", "negative_2"] and len(mnrl) == 1
    trip = triplet_view(ds)
    assert trip.column_names == ["anchor", "positive", "negative"] and len(trip) == 3


def _mine_bm25(cfg: MiningConfig, bm25_order: list[str]):
    windows = [(i, s) for i, (s, _) in enumerate(DOCS.values())]
    mined = {"train": {"q1": {"pos": 1}}}
    return mine_hard_negatives(
        query_ids=["q1"], query_splits=["train"], query_emb=np.array([[1.0, 0.0]], dtype=np.float32),
        window_emb=np.array([_unit(s) for _, s in windows], dtype=np.float32),
        parents=np.array([i for i, _ in windows]), corpus_ids=IDS, documents=[t for _, t in DOCS.values()],
        mined_qrels=mined, all_qrels={**mined, "test": {"q1": {"other_split_pos": 1}}}, cfg=cfg, seed=0,
        bm25_ranked=np.array([[IDS.index(d) for d in bm25_order] + [-1]]))


def test_bm25_candidates_pass_the_same_rules_on_the_dense_score_and_alternate_with_dense_ones():
    # BM25 ranks the positive, a labelled positive of another split, the same text and a near duplicate first:
    # the rules drop all four, by the dense model's scores; "easy" only BM25 proposed
    order = ["pos", "other_split_pos", "same_text", "too_close", "easy", "hard3"]
    res = _mine_bm25(_cfg(num_negatives=4, sources=["dense", "bm25"]), order)
    q = res.queries[0]
    assert q.negative_ids == ["hard1", "easy", "hard2", "hard3"]  # round robin; dense's own hard3 comes later: a repeat
    assert q.negative_sources == ["dense", "bm25", "dense", "bm25"]
    assert q.negative_scores == pytest.approx([0.85, 0.10, 0.80, 0.70], abs=1e-6)
    stats = res.stats()
    assert stats["negatives_by_source"] == {"dense": 2, "bm25": 2, "random": 0}
    assert stats["dropped_by_rule"]["labelled_positive"] == 4  # two from each source
    assert stats["dropped_by_rule"]["same_text"] == 2 and stats["dropped_by_rule"]["relative_margin"] == 2


def test_bm25_alone_never_uses_the_dense_ranking():
    res = _mine_bm25(_cfg(num_negatives=2, sources=["bm25"], fill_random=False), ["pos", "easy", "hard3"])
    assert res.queries[0].negative_ids == ["easy", "hard3"]
    assert res.queries[0].negative_sources == ["bm25", "bm25"]


@pytest.mark.parametrize("sources", [[], ["dense", "dense"], ["dense", "splade"]])
def test_unknown_or_repeated_sources_are_refused(sources):
    with pytest.raises(ConfigError, match=r"mining\.sources"):
        _mine(_cfg(sources=sources))


def test_bm25_source_needs_a_bm25_ranking():
    with pytest.raises(ConfigError, match="no BM25 ranking"):
        _mine(_cfg(sources=["dense", "bm25"]))
