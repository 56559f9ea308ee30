import csv
import hashlib
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from domain_embed.config import DataConfig, OnError, PairsSourceConfig, SourceKind
from domain_embed.data.loader import load_domain_data
from domain_embed.errors import ConfigError, DataError

PAIRS = [{"query": "what is a fee", "positive": "Fees are charges.", "negative": "Rules are rules."},
         {"query": "what is a fee", "positive": "A fee is paid.", "negative": " "},  # blank: no negative
         {"query": "who keeps records", "positive": "Firms keep records.", "negative": None}]


def sha(prefix: str, text: str) -> str:
    return prefix + hashlib.sha256(text.encode()).hexdigest()[:16]


def write(path: Path, rows: list[dict]) -> Path:
    """The same rows as jsonl, csv or parquet, chosen by the suffix."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".csv":
        with path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["query", "positive", "negative"])
            writer.writeheader()
            writer.writerows(rows)
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def load(path: Path, skip: bool = False, **pairs):
    cfg = DataConfig(source=SourceKind.pairs, pairs=PairsSourceConfig(path=str(path), **pairs),
                     on_error=OnError.skip if skip else OnError.fail)
    return load_domain_data(cfg)


def all_qrels(data) -> dict:
    return {qid: rel for split in data.qrels.values() for qid, rel in split.items()}


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_every_format_gives_the_same_problem(tmp_path, suffix):
    data = load(write(tmp_path / f"pairs{suffix}", PAIRS))
    texts = ["Fees are charges.", "Rules are rules.", "A fee is paid.", "Firms keep records."]
    assert data.corpus_ids == [sha("d-", t) for t in texts]
    assert data.corpus_texts == texts
    fee, records = sha("q-", "what is a fee"), sha("q-", "who keeps records")
    assert data.queries == {fee: "what is a fee", records: "who keeps records"}
    assert all_qrels(data) == {fee: {sha("d-", texts[0]): 1, sha("d-", texts[2]): 1},
                               records: {sha("d-", texts[3]): 1}}
    assert data.source.startswith(f"pairs:{tmp_path / f'pairs{suffix}'} (4 docs; 2 queries")


def test_split_is_a_deterministic_function_of_the_query_text(tmp_path):
    rows = [{"query": f"question {i}", "positive": f"answer {i}"} for i in range(600)]
    data = load(write(tmp_path / "a.jsonl", rows), dev_fraction=0.1, test_fraction=0.2)
    sizes = {split: len(q) for split, q in data.qrels.items()}
    assert sizes.keys() == {"train", "dev", "test"}
    assert 30 <= sizes["dev"] <= 90 and 90 <= sizes["test"] <= 150
    random.Random(0).shuffle(rows)
    shuffled = load(write(tmp_path / "b.jsonl", rows), dev_fraction=0.1, test_fraction=0.2)
    assert shuffled.qrels == data.qrels
    assert list(load(tmp_path / "b.jsonl", dev_fraction=0, test_fraction=0).qrels) == ["train"]


def test_extra_corpus_adds_documents_and_keeps_their_ids(tmp_path):
    extra = tmp_path / "corpus.jsonl"
    extra.write_text(json.dumps({"_id": "x1", "title": "Fees", "text": "A fee is paid."}) + "\n"
                     + json.dumps({"_id": "x2", "text": "Unrelated distractor."}) + "\n")
    data = load(write(tmp_path / "p.jsonl", PAIRS), corpus_path=str(extra))
    assert data.corpus_ids[:2] == ["x1", "x2"]
    assert data.corpus_titles[:2] == ["Fees", ""]
    assert len(data) == 5  # the positive equal to x1's text is not added twice
    assert all_qrels(data)[sha("q-", "what is a fee")] == {sha("d-", "Fees are charges."): 1, "x1": 1}


def test_repeated_pairs_are_merged_and_counted(tmp_path):
    data = load(write(tmp_path / "p.jsonl", [*PAIRS, PAIRS[0]]))
    assert len(all_qrels(data)[sha("q-", "what is a fee")]) == 2
    assert "1 repeated pairs merged" in data.source


GOOD = 'what is a fee,Fees are charges.,Rules are rules.\n'

BAD_INPUTS = {
    # name: (file name, content, line, field, words in the message)
    "jsonl missing positive": ("p.jsonl", json.dumps(PAIRS[0]) + '\n{"query": "q"}\n', 2, "positive",
                               "missing field"),
    "jsonl bad json": ("p.jsonl", json.dumps(PAIRS[0]) + "\n\n{nope\n", 3, None, "bad JSON"),
    "jsonl negative equals positive": ("p.jsonl", '{"query": "q", "positive": "a", "negative": "a"}', 1,
                                       "negative", "same text as positive"),
    "csv empty query": ("p.csv", f"query,positive,negative\n{GOOD}  ,An answer.,\n", 3, "query",
                        "empty text"),
    "csv header lacks positive": ("p.csv", "query,answer\nq,a\n", 1, "positive", "no 'positive' column"),
    "csv too many columns": ("p.csv", f"query,positive\n{GOOD}", 2, None, "row has 3 columns"),
    "csv bad utf-8": ("p.csv", f"query,positive,negative\n{GOOD}".encode() + b"caf\xe9,x,y\n", 3, None,
                      "not valid UTF-8"),
    "csv empty file": ("p.csv", "", 1, "header", "file is empty"),
    "csv cell over the csv module's limit": ("p.csv", f"query,positive,negative\n{GOOD}q,{'x' * 200_000},\n",
                                              3, None, "bad CSV: field larger than field limit"),
    "unsupported format": ("p.txt", "query\tpositive\n", None, None, "unsupported pairs format '.txt'"),
}


@pytest.mark.parametrize("case", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_is_an_error_naming_file_line_and_field(tmp_path, case):
    name, content, line, field, words = case
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(DataError) as caught:
        load(path)
    assert (caught.value.file, caught.value.line, caught.value.field) == (str(path), line, field)
    assert words in str(caught.value)
    assert "\n" not in str(caught.value)


def test_parquet_errors_give_the_row_index(tmp_path):
    rows = [PAIRS[0], {"query": "q", "positive": None, "negative": None}]
    with pytest.raises(DataError, match="field is null") as caught:
        load(write(tmp_path / "p.parquet", rows))
    assert (caught.value.line, caught.value.field) == (1, "positive")
    with pytest.raises(DataError, match="no 'query' column") as caught:
        load(write(tmp_path / "q.parquet", [{"question": "q", "positive": "a"}]))
    assert (caught.value.line, caught.value.field) == (None, "query")


def test_skip_mode_counts_bad_rows(tmp_path):
    content = f"query,positive,negative\n{GOOD},x,\nq2,,\nq3,same,same\nq4,a4,\n"
    (tmp_path / "p.csv").write_text(content)
    data = load(tmp_path / "p.csv", skip=True)
    assert set(data.queries.values()) == {"what is a fee", "q4"}
    assert [(e.line, e.field) for e in data.skips.skipped] == [(3, "query"), (4, "positive"), (5, "negative")]


def test_missing_files_and_bad_config(tmp_path):
    with pytest.raises(DataError, match="pairs file not found") as caught:
        load(tmp_path / "none.jsonl")
    assert caught.value.file == str(tmp_path / "none.jsonl")
    pairs = write(tmp_path / "p.jsonl", PAIRS)
    with pytest.raises(DataError, match="corpus file not found"):
        load(pairs, corpus_path=str(tmp_path / "corpus.jsonl"))
    with pytest.raises(ConfigError, match="sum to less than 1"):
        load(pairs, dev_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ConfigError, match="path is not set"):
        load_domain_data(DataConfig(source=SourceKind.pairs))
