import json
import time
from pathlib import Path

import pytest

from domain_embed.config import DataConfig, HubSourceConfig, OnError, SourceKind
from domain_embed.data.loader import load_domain_data
from domain_embed.errors import ConfigError, DataError

CORPUS = [{"_id": "d1", "title": "Rule 1", "text": "Firms must keep records."},
          {"_id": "d2", "text": "Reports are due yearly."},
          {"_id": "d3", "title": "", "text": "Fees are set annually."}]
QUERIES = [{"_id": "q1", "text": "What records must firms keep?"},
           {"_id": "q2", "text": "When are reports due?"}]
HEADER = "query-id\tcorpus-id\tscore"


def jsonl(*records: dict) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def write_beir(root: Path, corpus: str | bytes | None = None, queries: str | None = None,
               qrels: dict[str, str] | None = None) -> Path:
    """A valid small BEIR directory; any part can be replaced by bad content (None keeps the default)."""
    (root / "qrels").mkdir(parents=True)
    for name, content in (("corpus.jsonl", corpus if corpus is not None else jsonl(*CORPUS)),
                          ("queries.jsonl", queries if queries is not None else jsonl(*QUERIES))):
        (root / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    qrels = qrels if qrels is not None else {"test": f"{HEADER}\nq1\td1\t1\nq2\td2\t1\n"}
    for split, content in qrels.items():
        (root / "qrels" / f"{split}.tsv").write_text(content)
    return root


def load(path: Path, skip: bool = False):
    return load_domain_data(DataConfig(path=str(path), on_error=OnError.skip if skip else OnError.fail))


def test_loads_small_directory(tmp_path):
    # blank lines hold no judgement and are allowed
    qrels = {"train": f"{HEADER}\nq1\td1\t1\n", "test": f"{HEADER}\n\nq2\td2\t1\n\n"}
    data = load(write_beir(tmp_path, qrels=qrels))
    assert data.corpus_ids == ["d1", "d2", "d3"]
    assert data.corpus_titles == ["Rule 1", "", ""]
    assert data.queries == {q["_id"]: q["text"] for q in QUERIES}
    assert data.qrels == {"train": {"q1": {"d1": 1}}, "test": {"q2": {"d2": 1}}}
    assert data.source.startswith(f"beir:{tmp_path} (3 docs; 2 queries; train: 1 queries / 1 qrels")
    assert data.skips.skipped == []


BAD_INPUTS = {
    # name: (write_beir kwargs, file, line, field, words in the message)
    "bad json": ({"corpus": jsonl(CORPUS[0]) + '{"_id": "d2", "text": }\n'}, "corpus.jsonl", 2, None,
                 "bad JSON"),
    "not an object": ({"corpus": jsonl(CORPUS[0]) + '["d2", "text"]\n'}, "corpus.jsonl", 2, None,
                      "JSON object, got an array"),
    "missing _id": ({"corpus": jsonl(CORPUS[0], {"text": "no id"})}, "corpus.jsonl", 2, "_id",
                    "missing field"),
    "missing text": ({"queries": jsonl(QUERIES[0], {"_id": "q2"})}, "queries.jsonl", 2, "text",
                     "missing field"),
    "text not a string": ({"corpus": jsonl({"_id": "d1", "text": 5})}, "corpus.jsonl", 1, "text",
                          "expected a string"),
    "blank corpus text": ({"corpus": jsonl(*CORPUS[:2], {"_id": "d3", "text": " \t "})}, "corpus.jsonl", 3,
                          "text", "empty text"),
    "blank query text": ({"queries": jsonl({"_id": "q1", "text": "\n"}, QUERIES[1])}, "queries.jsonl", 1,
                         "text", "empty text"),
    "duplicate id": ({"corpus": jsonl(*CORPUS, {"_id": "d1", "text": "again"})}, "corpus.jsonl", 4, "_id",
                     "duplicate id 'd1' (first on line 1)"),
    "non-UTF-8 bytes": ({"corpus": jsonl(CORPUS[0]).encode() + b'{"_id": "d2", "text": "caf\xe9"}\n'},
                        "corpus.jsonl", 2, None, "not valid UTF-8 (byte 0xe9"),
    "columns": ({"qrels": {"test": f"{HEADER}\nq1\td1\t1\nq2\td2\n"}}, "test.tsv", 3, None,
                "expected 3 tab-separated columns, got 2"),
    "score": ({"qrels": {"test": f"{HEADER}\nq1\td1\t1\nq2\td2\t1.5\n"}}, "test.tsv", 3, "score",
              "integer, got '1.5'"),
    "header": ({"qrels": {"test": "qid\tdocid\tscore\nq1\td1\t1\n"}}, "test.tsv", 1, "header",
               "header must be"),
    "unknown query": ({"qrels": {"test": f"{HEADER}\nq1\td1\t1\nq9\td2\t1\n"}}, "test.tsv", 3, "query-id",
                      "unknown query id 'q9'"),
    "unknown doc": ({"qrels": {"test": f"{HEADER}\nq1\td7\t1\n"}}, "test.tsv", 2, "corpus-id",
                    "unknown corpus id 'd7'"),
    "duplicate judgement": ({"qrels": {"test": f"{HEADER}\nq1\td1\t1\nq1\td1\t2\n"}}, "test.tsv", 3,
                            "corpus-id", "first on line 2"),
    "header only": ({"qrels": {"test": f"{HEADER}\nq1\td1\t1\n", "dev": f"{HEADER}\n"}}, "dev.tsv", None,
                    None, "no queries"),
    "empty qrels file": ({"qrels": {"test": ""}}, "test.tsv", 1, "header", "file is empty"),
    "empty corpus": ({"corpus": ""}, "corpus.jsonl", None, None, "corpus is empty"),
    "empty queries": ({"queries": "\n"}, "queries.jsonl", None, None, "no valid queries"),
    "no split files": ({"qrels": {}}, "qrels", None, None, "no qrels split file"),
    "unknown split file": ({"qrels": {"test": f"{HEADER}\nq1\td1\t1\n", "validation": f"{HEADER}\n"}},
                           "validation.tsv", None, None, "unknown split file"),
}


@pytest.mark.parametrize("case", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_is_an_error_naming_file_line_and_field(tmp_path, case):
    kwargs, file, line, field, words = case
    with pytest.raises(DataError) as caught:
        load(write_beir(tmp_path, **kwargs))
    err = caught.value
    assert Path(err.file).name == file
    assert (err.line, err.field) == (line, field)
    assert words in str(err)
    assert "\n" not in str(err)


@pytest.mark.parametrize("name", ["corpus.jsonl", "queries.jsonl"])
def test_missing_file_is_named(tmp_path, name):
    write_beir(tmp_path)
    (tmp_path / name).unlink()
    with pytest.raises(DataError, match="not found") as caught:
        load(tmp_path)
    assert caught.value.file == str(tmp_path / name)


def test_missing_directory_is_named(tmp_path):
    with pytest.raises(DataError, match="BEIR directory not found") as caught:
        load(tmp_path / "nowhere")
    assert caught.value.file == str(tmp_path / "nowhere")


def test_skip_mode_counts_every_bad_record(tmp_path):
    bad = jsonl({"_id": "d1", "text": "dup"}, {"_id": "d4", "text": " "})
    corpus = (jsonl(*CORPUS) + "{oops\n" + bad).encode() + b'{"_id": "d5", "text": "\xff"}\n'
    qrels = {"test": f"{HEADER}\nq1\td1\t1\nq2\td4\t1\nq2\td2\nq2\td2\t1\n"}
    data = load(write_beir(tmp_path, corpus=corpus, qrels=qrels), skip=True)
    assert data.corpus_ids == ["d1", "d2", "d3"]
    assert data.qrels == {"test": {"q1": {"d1": 1}, "q2": {"d2": 1}}}
    summary = data.skips.summary()
    assert summary["skipped"] == 6  # bad JSON, duplicate, blank text, bad UTF-8, unknown doc d4, 2 columns
    assert sum(1 for e in data.skips.skipped if e.field == "corpus-id") == 1
    assert "6 bad records skipped" in data.source


@pytest.mark.parametrize("qrels", [{"test": f"{HEADER}\n"}, {"test": f"{HEADER}\nq1\td9\t1\n"}])
def test_skip_mode_still_fails_on_a_split_without_queries(tmp_path, qrels):
    with pytest.raises(DataError, match="no quer"):
        load(write_beir(tmp_path, qrels=qrels), skip=True)


def test_skip_mode_still_fails_on_empty_corpus(tmp_path):
    with pytest.raises(DataError, match="corpus is empty"):
        load(write_beir(tmp_path, corpus="{bad\n"), skip=True)


def test_non_positive_scores_are_counted_not_relevant(tmp_path):
    qrels = {"test": f"{HEADER}\nq1\td1\t1\nq1\td2\t0\nq2\td2\t0\nq2\td3\t-1\n"}
    data = load(write_beir(tmp_path, qrels=qrels))
    assert data.qrels == {"test": {"q1": {"d1": 1}}}
    assert "3 non-relevant judgements (score <= 0) ignored" in data.source
    assert "1 queries with no relevant document, not evaluated" in data.source


def test_split_with_only_non_relevant_judgements_fails(tmp_path):
    with pytest.raises(DataError, match="no query with a relevant document") as caught:
        load(write_beir(tmp_path, qrels={"test": f"{HEADER}\nq1\td1\t0\n"}))
    assert Path(caught.value.file).name == "test.tsv"


def test_path_overrides_source_and_beir_needs_a_path(tmp_path):
    write_beir(tmp_path)
    cfg = DataConfig(source=SourceKind.hub, hub=HubSourceConfig(name="not/used"), path=str(tmp_path))
    assert load_domain_data(cfg).source.startswith("beir:")
    with pytest.raises(ConfigError, match=r"data\.path"):
        load_domain_data(DataConfig(source=SourceKind.beir))


@pytest.mark.parametrize(
    ("domain", "docs", "queries", "splits"),
    [("legal/obliqa", 13_012, 5_574, {"train": (2_224, 2_927), "dev": (564, 750), "test": (2_786, 3_666)}),
     ("medical/medquad", 15_813, 14_345, {"train": (10_201, 11_700), "dev": (1_388, 1_555),
                                          "test": (2_756, 3_104)}),
     ("finance/financebench", 168, 150, {"train": (107, 140), "dev": (17, 19), "test": (26, 28)})],
)
def test_real_data_sets_match_their_readme(shared_data, domain, docs, queries, splits):
    start = time.perf_counter()
    data = load(shared_data / domain)
    elapsed = time.perf_counter() - start
    assert (len(data), len(data.queries)) == (docs, queries)
    counts = {s: (len(q), sum(map(len, q.values()))) for s, q in data.qrels.items()}
    assert counts == splits
    assert data.skips.skipped == []
    if domain == "legal/obliqa":
        assert elapsed < 2.0
