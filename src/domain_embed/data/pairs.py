"""Pairs loader: (query, positive[, negative]) rows from jsonl, csv or parquet become a retrieval problem.

Ids are content hashes and splits a hash of the query text, so the same file always gives the same
problem, whatever the row order. Error lines: jsonl and csv line numbers (the csv header is line 1),
parquet 0-based row index.
"""

from __future__ import annotations

import csv
import hashlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from domain_embed.config import PairsSourceConfig
from domain_embed.data.domain import DomainData, Qrels, SkipLog
from domain_embed.data.validate import (
    Corpus,
    Row,
    build_domain,
    collect_corpus,
    read_jsonl,
    read_lines,
    record_errors,
    require_file,
    text_field,
)
from domain_embed.errors import ConfigError, DataError

COLUMNS = ("query", "positive")  # required; `negative` is optional
_SPLIT_SALT = "pairs-split-v1"


def content_id(prefix: str, text: str) -> str:
    """Stable id of a text: the same text gets the same id in every run and every file."""
    return prefix + hashlib.sha256(text.encode()).hexdigest()[:16]


def split_of(query: str, dev_fraction: float, test_fraction: float) -> str:
    """Deterministic split of a query by a salted hash of its text."""
    digest = hashlib.sha256(f"{_SPLIT_SALT}\x1f{query}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    return "test" if u < test_fraction else "dev" if u < test_fraction + dev_fraction else "train"


def load_pairs(cfg: PairsSourceConfig, skips: SkipLog) -> DomainData:
    """Corpus = distinct positives and negatives plus the optional extra corpus; qrels = the pairs."""
    if not cfg.path:
        raise ConfigError("data.pairs.path is not set (a .jsonl, .csv or .parquet file of pairs)")
    if min(cfg.dev_fraction, cfg.test_fraction) < 0 or cfg.dev_fraction + cfg.test_fraction >= 1:
        raise ConfigError(f"data.pairs.dev_fraction ({cfg.dev_fraction}) and test_fraction "
                          f"({cfg.test_fraction}) must be >= 0 and sum to less than 1")
    path = require_file(cfg.path, "pairs file")
    rows = read_pair_rows(path, skips)
    if cfg.corpus_path:
        extra = require_file(cfg.corpus_path, "corpus file")
        corpus = collect_corpus(read_jsonl(extra, skips), str(extra), skips)
    else:
        corpus = Corpus(str(path))
    doc_of_text: dict[str, str] = {}
    for doc_id, text in zip(corpus.ids, corpus.texts, strict=True):
        doc_of_text.setdefault(text, doc_id)

    def doc_id_of(text: str) -> str:
        """A pair's text reuses the id of an identical document, so the corpus holds no duplicates."""
        if text not in doc_of_text:
            doc_of_text[text] = content_id("d-", text)
            corpus.add(doc_of_text[text], "", text)
        return doc_of_text[text]

    file = str(path)
    queries: dict[str, str] = {}
    positives: dict[str, dict[str, int]] = {}
    notes: Counter[str] = Counter()
    for line, record in rows:
        with record_errors(skips):
            query = text_field(record, "query", file, line)
            positive = text_field(record, "positive", file, line)
            negative = text_field(record, "negative", file, line, optional=True)
            if negative == positive:
                raise DataError("negative is the same text as positive", file=file, line=line,
                                field="negative")
            query_id = content_id("q-", query)
            relevant = positives.setdefault(query_id, {})
            doc_id = doc_id_of(positive)
            if doc_id in relevant:
                notes["repeated pairs merged"] += 1
            relevant[doc_id] = 1
            queries[query_id] = query
            if negative.strip():  # an empty csv cell means no negative
                doc_id_of(negative)
    if not queries:
        raise DataError("no valid pairs", file=file)
    qrels: dict[str, Qrels] = {}
    for query_id, relevant in positives.items():
        split = split_of(queries[query_id], cfg.dev_fraction, cfg.test_fraction)
        qrels.setdefault(split, {})[query_id] = relevant
    return build_domain(f"pairs:{path}", corpus, queries, qrels, notes, skips)


def read_pair_rows(path: Path, skips: SkipLog) -> Iterator[Row]:
    """Records of the pairs file in the format its suffix names."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return read_jsonl(path, skips)
    if suffix == ".csv":
        return _read_csv(path, skips)
    if suffix in (".parquet", ".pq"):
        return _read_parquet(path)
    raise DataError(f"unsupported pairs format '{suffix}' (use .jsonl, .csv or .parquet)", file=str(path))


def _require_columns(columns: list[str], path: Path, line: int | None) -> None:
    for name in COLUMNS:
        if name not in columns:
            raise DataError(f"no '{name}' column (have: {', '.join(columns) or 'none'})", file=str(path),
                            line=line, field=name)


def _read_csv(path: Path, skips: SkipLog) -> Iterator[Row]:
    """Rows with the number of the line they end on (the header is line 1); the csv module's own count
    would drift when a line with bad UTF-8 is skipped."""
    current = 0

    def texts() -> Iterator[str]:
        nonlocal current
        for number, text in read_lines(path, skips):
            current = number
            yield text

    reader = csv.DictReader(texts())
    try:
        header = reader.fieldnames
        if header is None:
            raise DataError("file is empty", file=str(path), line=1, field="header")
        _require_columns(list(header), path, 1)
        for record in reader:
            if None in record:
                skips.handle(DataError(f"row has {len(header) + len(record[None])} columns, the header "
                                       f"{len(header)}", file=str(path), line=current))
                continue
            yield current, record
    except csv.Error as err:
        raise DataError(f"bad CSV: {err}", file=str(path), line=current) from err


def _read_parquet(path: Path) -> Iterator[Row]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"cannot read parquet: {err}", file=str(path)) from err
    _require_columns(table.column_names, path, None)
    return enumerate(table.to_pylist())
