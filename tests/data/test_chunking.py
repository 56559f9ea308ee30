from itertools import pairwise

import numpy as np
import pytest
from transformers import AutoTokenizer

from domain_embed.data.chunking import Windows, length_stats, make_windows, token_lengths


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return AutoTokenizer.from_pretrained(str(tiny_model))


def test_token_lengths_count_special_tokens(tokenizer):
    assert token_lengths(tokenizer, ["hello world", ""]).tolist() == [4, 2]  # [CLS] hello world [SEP]


def test_length_stats_report_what_truncation_costs():
    s = length_stats(np.array([10, 20, 30, 300]), limit=100)
    assert s["max"] == 300 and s["over_limit"] == 1 and s["share_over_limit"] == 0.25
    assert s["tokens_lost"] == 200 and s["p50"] == 25.0


def test_windows_fit_cover_everything_and_overlap(tokenizer):
    words = [f"regulation{i} applies" for i in range(200)]
    long_doc = " ".join(words)
    docs = ["a short one", long_doc, "another short"]
    lengths = token_lengths(tokenizer, docs)
    w = make_windows(tokenizer, docs, lengths, max_tokens=64, overlap=16)
    texts = w.texts(docs)
    assert w.parents.tolist().count(0) == 1 and w.parents.tolist().count(2) == 1
    long_windows = [t for t, p in zip(texts, w.parents, strict=True) if p == 1]
    assert len(long_windows) > 5
    assert max(token_lengths(tokenizer, texts)) <= 64  # nothing is truncated by the model
    # every word of the long document is in some window, and neighbours share words
    covered = set(" ".join(long_windows).split())
    assert covered == set(long_doc.split())
    for a, b in pairwise(long_windows):
        assert set(a.split()[-3:]) & set(b.split())
    # windows start and end on whole words
    assert all(t.split()[0] in long_doc.split() and t.split()[-1] in long_doc.split() for t in long_windows)


def test_windows_roundtrip_and_identity():
    w = Windows.identity(["ab", "cde"])
    assert w.texts(["ab", "cde"]) == ["ab", "cde"]
    back = Windows.from_dict(w.to_dict())
    assert back.parents.tolist() == [0, 1] and back.ends.tolist() == [2, 3]


def test_overlap_must_leave_room(tokenizer):
    with pytest.raises(ValueError, match="overlap"):
        make_windows(tokenizer, ["x " * 100], np.array([102]), max_tokens=10, overlap=8)
