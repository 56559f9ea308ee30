import json
from pathlib import Path

import datasets
import pytest

from domain_embed.config import DataConfig, HubAdapter, HubSourceConfig, OnError, SourceKind
from domain_embed.data.domain import SkipLog
from domain_embed.data.hub import adapt_generic, adapt_obliqa
from domain_embed.data.loader import load_domain_data
from domain_embed.errors import ConfigError, DataError

SPLITS = HubSourceConfig().splits


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path, monkeypatch):
    """`load_dataset` caches what it reads; keep that out of the user's home."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


def read_jsonl(path: Path) -> dict[str, dict]:
    with path.open() as fh:
        return {r["_id"]: r for r in map(json.loads, fh)}


def read_tsv(path: Path) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    for line in path.read_text().splitlines()[1:]:
        qid, did, score = line.split("\t")
        qrels.setdefault(qid, {})[did] = int(score)
    return qrels


def hub_cfg(name: str, **kwargs) -> DataConfig:
    return DataConfig(source=SourceKind.hub, hub=HubSourceConfig(name=name, **kwargs))


# --- obliqa adapter on the raw release sample, checked against the project's BEIR copy ---------------

def test_obliqa_sample_matches_the_beir_copy(shared_data):
    obliqa = shared_data / "legal" / "obliqa"
    beir_corpus = read_jsonl(obliqa / "corpus.jsonl")
    beir_queries = read_jsonl(obliqa / "queries.jsonl")
    beir_test = read_tsv(obliqa / "qrels" / "test.tsv")
    passages = [p for f in sorted((obliqa / "raw_sample" / "StructuredRegulatoryDocuments").glob("*.json"))
                for p in json.loads(f.read_text())]
    # the document-name map the BEIR copy used, recovered from its titles
    names = {str(p["DocumentID"]): beir_corpus[p["ID"]]["title"].rsplit(" | ", 1)[0] for p in passages}

    data = load_domain_data(hub_cfg(str(obliqa / "raw_sample"), adapter=HubAdapter.obliqa,
                                    document_names=names))

    assert sorted(data.corpus_ids) == sorted(p["ID"] for p in passages)
    assert len(data) == 60
    for doc_id, title, text in zip(data.corpus_ids, data.corpus_titles, data.corpus_texts, strict=True):
        assert (title, text) == (beir_corpus[doc_id]["title"], beir_corpus[doc_id]["text"])
    assert list(data.qrels) == ["test"]
    assert len(data.qrels["test"]) == 21
    assert data.qrels["test"] == {qid: beir_test[qid] for qid in data.qrels["test"]}
    assert data.queries == {qid: beir_queries[qid]["text"] for qid in data.qrels["test"]}


def test_obliqa_titles_without_a_document_map(shared_data):
    data = load_domain_data(hub_cfg(str(shared_data / "legal" / "obliqa" / "raw_sample"),
                                    adapter=HubAdapter.obliqa))
    assert data.corpus_titles[data.doc_index("2230472f-a9d4-4b81-842f-964c0653f8e7")] == "Document 20 | 1.1."


def passage(pid: str, text: str, doc: int = 7, passage_id: str | None = None) -> dict:
    return {"ID": pid, "DocumentID": doc, "PassageID": passage_id or pid, "Passage": text}


def question(qid: str, *refs: tuple[int, str], text: str = "What applies?") -> dict:
    return {"QuestionID": qid, "Question": text, "Group": 1,
            "Passages": [{"DocumentID": d, "PassageID": p, "Passage": "..."} for d, p in refs]}


def obliqa(questions: dict[str, list[dict]], passages: list[dict], skip: bool = False):
    return adapt_obliqa(questions, passages, name="RegNLP/ObliQA", splits=SPLITS, document_names={"7": "GEN"},
                        skips=SkipLog(allow=skip))


PASSAGES = [passage("1.1", "Firms must keep records."), passage("1.2", ""), passage("1.3", "Fees apply."),
            passage("1.4", "  ")]


def test_obliqa_records_drop_and_count_uncited_empty_passages():
    data = obliqa({"train": [question("a", (7, "1.1"))], "test": [question("b", (7, "1.3"), (7, "1.1"))]},
                  PASSAGES)
    assert data.corpus_ids == ["1.1", "1.3"]
    assert data.corpus_titles == ["GEN | 1.1", "GEN | 1.3"]
    assert data.qrels == {"train": {"a": {"1.1": 1}}, "test": {"b": {"1.3": 1, "1.1": 1}}}
    assert "2 empty passages dropped" in data.source


QUESTION_ERRORS = {
    "cited empty passage": (question("a", (7, "1.2")), "Passages",
                            "the relevant passage DocumentID 7, PassageID '1.2' is empty"),
    "unknown passage": (question("a", (7, "9.9")), "Passages",
                        "no passage has DocumentID 7, PassageID '9.9'"),
    "no passages": ({**question("a"), "Passages": []}, "Passages", "non-empty list"),
    "blank question": (question("a", (7, "1.1"), text=" "), "Question", "empty text"),
    "missing id": ({k: v for k, v in question("a", (7, "1.1")).items() if k != "QuestionID"}, "QuestionID",
                   "missing field"),
}


@pytest.mark.parametrize("case", QUESTION_ERRORS.values(), ids=QUESTION_ERRORS.keys())
def test_obliqa_question_errors_name_split_row_and_field(case):
    bad, field, words = case
    with pytest.raises(DataError) as caught:
        obliqa({"test": [question("ok", (7, "1.1")), bad]}, PASSAGES)
    assert (caught.value.file, caught.value.line, caught.value.field) == ("RegNLP/ObliQA [test]", 1, field)
    assert words in str(caught.value)


def test_obliqa_duplicate_passage_id_names_the_first_row():
    with pytest.raises(DataError, match=r"duplicate id '1.1' \(first on line 0\)") as caught:
        obliqa({"test": [question("a", (7, "1.1"))]}, [*PASSAGES, passage("1.1", "again", passage_id="2.0")])
    assert (caught.value.file, caught.value.line, caught.value.field) == ("RegNLP/ObliQA [passages]", 4, "ID")


def test_obliqa_ambiguous_key_is_resolved_by_the_cited_text():
    twins = [passage("x", "Text A", passage_id="5"), passage("y", "Text B", passage_id="5")]
    cite = {"QuestionID": "q", "Question": "Which?", "Passages": [{"DocumentID": 7, "PassageID": "5",
                                                                  "Passage": "Text B"}]}
    assert obliqa({"test": [cite]}, twins).qrels == {"test": {"q": {"y": 1}}}
    cite["Passages"][0]["Passage"] = "Text C"
    with pytest.raises(DataError, match="2 passages have DocumentID 7, PassageID '5' and the cited"):
        obliqa({"test": [cite]}, twins)


def test_obliqa_skip_mode_counts_bad_questions():
    questions = {"test": [question("a", (7, "1.1")), question("b", (7, "1.2")), question("a", (7, "1.3"))]}
    data = obliqa(questions, PASSAGES, skip=True)
    assert data.qrels == {"test": {"a": {"1.1": 1}}}
    assert [e.field for e in data.skips.skipped] == ["Passages", "QuestionID"]


def test_obliqa_unmapped_split_is_an_error():
    with pytest.raises(DataError, match="split 'extra' is not mapped") as caught:
        obliqa({"test": [question("a", (7, "1.1"))], "extra": []}, PASSAGES)
    assert caught.value.field == "split"


# --- generic adapter ---------------------------------------------------------------------------------

CORPUS = [{"_id": 1, "title": "T", "text": "doc one"}, {"_id": 2, "title": "", "text": "doc two"}]
QUERIES = [{"_id": 10, "text": "query ten"}, {"_id": 11, "text": "query eleven"}]
QRELS = {"train": [{"query-id": 10, "corpus-id": 1, "score": 1.0}],
         "validation": [{"query-id": 11, "corpus-id": 2, "score": 1}]}


def write_hub_repo(root: Path) -> Path:
    """A local dataset repo in the MTEB layout; `load_dataset` reads it offline, like a hub download."""
    configs = {"corpus": {"corpus": CORPUS}, "queries": {"queries": QUERIES}, "default": QRELS}
    card = ["---", "configs:"]
    for config, splits in configs.items():
        card += [f"- config_name: {config}", "  data_files:"]
        for split, records in splits.items():
            datasets.Dataset.from_list(records).to_parquet(root / f"{config}-{split}.parquet")
            card += [f"  - split: {split}", f"    path: {config}-{split}.parquet"]
    (root / "README.md").write_text("\n".join([*card, "---", ""]))
    return root


def test_generic_hub_repo_loads_through_load_dataset(tmp_path):
    data = load_domain_data(hub_cfg(str(write_hub_repo(tmp_path / "repo"))))
    assert data.corpus_ids == ["1", "2"]
    assert data.corpus_titles == ["T", ""]
    assert data.queries == {"10": "query ten", "11": "query eleven"}
    assert data.qrels == {"train": {"10": {"1": 1}}, "dev": {"11": {"2": 1}}}


def test_generic_loads_each_part_at_the_configured_revision(monkeypatch):
    calls = []
    parts = {"corpus": {"corpus": CORPUS}, "queries": {"queries": QUERIES}, "default": QRELS}

    def fake_load_dataset(name, config, *, revision, data_files, split):
        calls.append((name, config, revision))
        return parts[config]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    data = load_domain_data(hub_cfg("BeIR/x", revision="abc", qrels_name="BeIR/x-qrels"))
    # a revision of the main repo is no revision of the separate qrels repo
    assert calls == [("BeIR/x", "corpus", "abc"), ("BeIR/x", "queries", "abc"),
                     ("BeIR/x-qrels", "default", None)]
    assert data.source.startswith("hub:BeIR/x (2 docs; 2 queries; train: 1 queries / 1 qrels; dev:")


def test_generic_corpus_config_must_have_one_split(monkeypatch):
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: {"corpus": CORPUS, "more": CORPUS})
    with pytest.raises(DataError, match=r"config 'corpus' has splits \['corpus', 'more'\]") as caught:
        load_domain_data(hub_cfg("BeIR/x"))
    assert caught.value.file == "BeIR/x"


def generic(qrels=None, corpus=CORPUS, queries=QUERIES, skip=False):
    return adapt_generic(corpus, queries, QRELS if qrels is None else qrels, name="org/set", splits=SPLITS,
                         skips=SkipLog(allow=skip))


GENERIC_ERRORS = {
    "unknown doc": ({"test": [{"query-id": 10, "corpus-id": 3, "score": 1}]}, "org/set [qrels/test]", 0,
                    "corpus-id"),
    "float score": ({"test": [{"query-id": 10, "corpus-id": 1, "score": 0.5}]}, "org/set [qrels/test]", 0,
                    "score"),
    "missing query id": ({"test": [{"corpus-id": 1, "score": 1}]}, "org/set [qrels/test]", 0, "query-id"),
    "empty split": ({"train": QRELS["train"], "test": []}, "org/set [qrels/test]", None, None),
    "two splits to dev": ({"dev": QRELS["train"], "validation": QRELS["validation"]}, "org/set [qrels]", None,
                          "split"),
}


@pytest.mark.parametrize("case", GENERIC_ERRORS.values(), ids=GENERIC_ERRORS.keys())
def test_generic_errors_name_part_row_and_field(case):
    qrels, file, line, field = case
    with pytest.raises(DataError) as caught:
        generic(qrels)
    assert (caught.value.file, caught.value.line, caught.value.field) == (file, line, field)


def test_generic_accepts_id_column_and_reports_duplicates():
    corpus = [{"id": "a", "text": "x"}, {"id": "b", "text": "y"}, {"id": "a", "text": "z"}]
    with pytest.raises(DataError, match=r"duplicate id 'a' \(first on line 0\)") as caught:
        generic({"test": [{"query-id": 10, "corpus-id": "a", "score": 1}]}, corpus=corpus)
    assert (caught.value.file, caught.value.line, caught.value.field) == ("org/set [corpus]", 2, "id")
    data = generic({"test": [{"query-id": 10, "corpus-id": "a", "score": 1}]}, corpus=corpus, skip=True)
    assert (data.corpus_ids, data.corpus_texts) == (["a", "b"], ["x", "y"])
    assert data.skips.summary()["skipped"] == 1


def test_unloadable_hub_dataset_names_it():
    with pytest.raises(DataError, match="cannot load hub dataset 'no-such-org/no-such-set'") as caught:
        load_domain_data(hub_cfg("no-such-org/no-such-set", adapter=HubAdapter.obliqa))
    assert caught.value.file == "no-such-org/no-such-set"
    assert "\n" not in str(caught.value)


def test_hub_source_needs_a_name():
    with pytest.raises(ConfigError, match=r"data\.hub\.name"):
        load_domain_data(DataConfig(source=SourceKind.hub, on_error=OnError.skip))


def test_an_unreachable_hub_is_one_line_with_the_fix_and_no_retries(monkeypatch):
    import socket

    import datasets
    from huggingface_hub import constants

    from domain_embed.data import hub

    def refuse(address, timeout):
        raise OSError(101, "Network is unreachable")

    def never(*args, **kwargs):
        raise AssertionError("load_dataset would spend half a minute in retries")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(datasets, "load_dataset", never)
    hub._hub_unreachable.cache_clear()
    try:
        with pytest.raises(DataError) as caught:
            load_domain_data(hub_cfg("RegNLP/ObliQA", adapter=HubAdapter.obliqa))
    finally:
        hub._hub_unreachable.cache_clear()
    message = str(caught.value)
    assert "huggingface.co cannot be reached (Network is unreachable)" in message
    assert "data.path=<a BEIR folder>" in message and "HF_HUB_OFFLINE=1" in message and "\n" not in message


def test_offline_mode_failure_also_names_the_fix(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError, match=r"data\.path=<a BEIR folder>") as caught:
        load_domain_data(hub_cfg("no-such-org/no-such-set", adapter=HubAdapter.obliqa))
    assert "HF_HUB_OFFLINE=1 is set" in str(caught.value) and ", or HF_HUB_OFFLINE=1" not in str(caught.value)
