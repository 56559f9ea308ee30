"""Checks shared by every loader. Each problem becomes a one-line DataError naming file, line and field,
or a counted skip when `data.on_error=skip`, so bad input is never dropped silently.

Records come as `(line, dict)` rows: the line is 1-based for text files and the 0-based row index for
tables (parquet, Hugging Face datasets), so a user can find the record either way.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Container, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from domain_embed.data.domain import DomainData, Qrels, SkipLog
from domain_embed.errors import DataError

Row = tuple[int, dict[str, Any]]
SPLITS = ("train", "dev", "test")
QRELS_COLUMNS = ("query-id", "corpus-id", "score")

_JSON_KINDS = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number",
               bool: "a boolean", type(None): "null"}


def kind(value: Any) -> str:
    """How a value reads in an error message (JSON terms, since most inputs are JSON)."""
    return _JSON_KINDS.get(type(value), type(value).__name__)


def require_file(path: str | Path, what: str) -> Path:
    """Fail before any parsing, naming the path, so a typo in a config is obvious."""
    resolved = Path(path).expanduser()
    if not resolved.is_file():
        raise DataError(f"{what} not found", file=str(resolved))
    return resolved


@contextmanager
def record_errors(skips: SkipLog) -> Iterator[None]:
    """Wraps the handling of one record: its DataError is raised, or counted when skipping is allowed."""
    try:
        yield
    except DataError as err:
        skips.handle(err)


def read_lines(path: Path, skips: SkipLog) -> Iterator[tuple[int, str]]:
    """Numbered lines decoded one by one, so bad UTF-8 is reported with its line number."""
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, 1):
            try:
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as err:
                problem = f"not valid UTF-8 (byte 0x{raw[err.start]:02x} at column {err.start + 1})"
                skips.handle(DataError(problem, file=str(path), line=number))
                continue
            yield number, text


def read_jsonl(path: Path, skips: SkipLog) -> Iterator[Row]:
    """JSON objects of a JSONL file with their line numbers (blank lines hold no record)."""
    for number, text in read_lines(path, skips):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as err:
            skips.handle(DataError(f"bad JSON: {err.msg} (column {err.colno})", file=str(path), line=number))
            continue
        if not isinstance(record, dict):
            problem = f"expected a JSON object, got {kind(record)}"
            skips.handle(DataError(problem, file=str(path), line=number))
            continue
        yield number, record


def pick_field(record: Mapping[str, Any], names: tuple[str, ...]) -> str:
    """The first of several accepted column names that the record has (e.g. `_id` or `id`)."""
    return next((name for name in names if name in record), names[0])


def text_field(record: Mapping[str, Any], name: str, file: str, line: int, *, optional: bool = False) -> str:
    """A string field; required ones must hold more than whitespace, optional ones may be absent or null."""
    value = record.get(name)
    if value is None:
        if optional:
            return ""
        raise DataError("missing field" if name not in record else "field is null", file=file, line=line,
                        field=name)
    if not isinstance(value, str):
        raise DataError(f"expected a string, got {kind(value)}", file=file, line=line, field=name)
    if not optional and not value.strip():
        raise DataError("empty text", file=file, line=line, field=name)
    return value


def id_field(record: Mapping[str, Any], name: str, file: str, line: int) -> str:
    """An id as a string; integer ids (common on the hub) are accepted and converted."""
    value = record.get(name)
    if value is None:
        raise DataError("missing field" if name not in record else "field is null", file=file, line=line,
                        field=name)
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise DataError(f"expected a string id, got {kind(value)}", file=file, line=line, field=name)
    value = str(value)
    if not value.strip():
        raise DataError("empty id", file=file, line=line, field=name)
    return value


def score_field(record: Mapping[str, Any], file: str, line: int) -> int:
    """An integer relevance score; text from TSV and integral floats from parquet are accepted."""
    value = record.get("score")
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    elif isinstance(value, int) and not isinstance(value, bool):
        return value
    elif isinstance(value, float) and value.is_integer():
        return int(value)
    problem = "missing field" if value is None else f"score must be an integer, got {value!r}"
    raise DataError(problem, file=file, line=line, field="score")


def check_unique(seen: dict[str, tuple[str, int]], key: str, what: str, file: str, line: int,
                 field_name: str) -> None:
    """Register `key`; a second occurrence is an error that says where the first one was."""
    first = seen.setdefault(key, (file, line))
    if first != (file, line):
        where = f"line {first[1]}" if first[0] == file else f"{first[0]}:{first[1]}"
        raise DataError(f"duplicate {what} (first on {where})", file=file, line=line, field=field_name)


@dataclass
class Corpus:
    file: str  # where the documents came from, for file-level errors
    ids: list[str] = field(default_factory=list)
    titles: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)

    def add(self, doc_id: str, title: str, text: str) -> None:
        self.ids.append(doc_id)
        self.titles.append(title)
        self.texts.append(text)

    def require_documents(self) -> None:
        if not self.ids:
            raise DataError("corpus is empty (no valid documents)", file=self.file)


def collect_corpus(rows: Iterable[Row], file: str, skips: SkipLog,
                   id_fields: tuple[str, ...] = ("_id",)) -> Corpus:
    """Documents in the BEIR corpus layout (`_id`, optional `title`, `text`)."""
    corpus, seen = Corpus(file), {}
    for line, record in rows:
        with record_errors(skips):
            name = pick_field(record, id_fields)
            doc_id = id_field(record, name, file, line)
            text = text_field(record, "text", file, line)
            title = text_field(record, "title", file, line, optional=True)
            check_unique(seen, doc_id, f"id '{doc_id}'", file, line, name)
            corpus.add(doc_id, title, text)
    corpus.require_documents()
    return corpus


def collect_queries(rows: Iterable[Row], file: str, skips: SkipLog,
                    id_fields: tuple[str, ...] = ("_id",)) -> dict[str, str]:
    """Queries in the BEIR layout (`_id`, `text`)."""
    queries: dict[str, str] = {}
    seen: dict[str, tuple[str, int]] = {}
    for line, record in rows:
        with record_errors(skips):
            name = pick_field(record, id_fields)
            query_id = id_field(record, name, file, line)
            text = text_field(record, "text", file, line)
            check_unique(seen, query_id, f"id '{query_id}'", file, line, name)
            queries[query_id] = text
    if not queries:
        raise DataError("no valid queries", file=file)
    return queries


def collect_qrels(rows: Iterable[Row], file: str, queries: Container[str], docs: Container[str],
                  skips: SkipLog, notes: Counter[str]) -> Qrels:
    """Judgements of one split (`query-id`, `corpus-id`, `score`). Only score > 0 counts as relevant;
    the rest, and queries left without any relevant document, are counted in `notes`."""
    judged: dict[str, dict[str, int]] = {}
    seen: dict[str, tuple[str, int]] = {}
    rows_read = 0
    for line, record in rows:
        rows_read += 1
        with record_errors(skips):
            query_id = id_field(record, "query-id", file, line)
            doc_id = id_field(record, "corpus-id", file, line)
            score = score_field(record, file, line)
            if query_id not in queries:
                raise DataError(f"unknown query id '{query_id}'", file=file, line=line, field="query-id")
            if doc_id not in docs:
                raise DataError(f"unknown corpus id '{doc_id}'", file=file, line=line, field="corpus-id")
            check_unique(seen, f"{query_id}\t{doc_id}", "judgement of this query and document", file, line,
                         "corpus-id")
            judged.setdefault(query_id, {})[doc_id] = score
    if not rows_read:
        raise DataError("split has no queries (no judgements)", file=file)
    qrels = {qid: {did: s for did, s in rel.items() if s > 0} for qid, rel in judged.items()}
    notes["non-relevant judgements (score <= 0) ignored"] += sum(
        len(judged[qid]) - len(rel) for qid, rel in qrels.items())
    notes["queries with no relevant document, not evaluated"] += sum(1 for rel in qrels.values() if not rel)
    return require_queries({qid: rel for qid, rel in qrels.items() if rel}, file)


def require_queries(qrels: Qrels, file: str) -> Qrels:
    """A split must have something to evaluate; an empty one is a file-level error, never skipped."""
    if not qrels:
        raise DataError("split has no query with a relevant document (score > 0)", file=file)
    return qrels


def map_splits(hub_splits: Iterable[str], mapping: Mapping[str, str], file: str) -> dict[str, str]:
    """Hub split name -> ours; an unmapped split or two splits mapped to one name is an error, not a guess."""
    ours: dict[str, str] = {}
    for hub in hub_splits:
        target = mapping.get(hub)
        if target not in SPLITS:
            raise DataError(f"split '{hub}' is not mapped to {'/'.join(SPLITS)} (see data.hub.splits)",
                            file=file, field="split")
        if target in ours.values():
            raise DataError(f"two splits map to '{target}' (see data.hub.splits)", file=file, field="split")
        ours[hub] = target
    return ours


def build_domain(label: str, corpus: Corpus, queries: dict[str, str], qrels: dict[str, Qrels],
                 notes: Counter[str], skips: SkipLog) -> DomainData:
    """The contract, with a source line that states every count, including what was ignored or skipped."""
    corpus.require_documents()
    ordered = {split: qrels[split] for split in SPLITS if split in qrels}
    parts = [f"{len(corpus.ids)} docs", f"{len(queries)} queries"]
    parts += [f"{split}: {len(judged)} queries / {sum(map(len, judged.values()))} qrels"
              for split, judged in ordered.items()]
    parts += [f"{count} {what}" for what, count in notes.items() if count]
    if skips.skipped:
        parts.append(f"{len(skips.skipped)} bad records skipped")
    return DomainData(corpus_ids=corpus.ids, corpus_titles=corpus.titles, corpus_texts=corpus.texts,
                      queries=queries, qrels=ordered, source=f"{label} ({'; '.join(parts)})", skips=skips)
