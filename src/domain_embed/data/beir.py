"""BEIR directory loader: `corpus.jsonl`, `queries.jsonl` and `qrels/{train,dev,test}.tsv`.

Parsed line by line with plain json and str.split, which loads ObliQA (13k docs) in a fraction of a second.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from domain_embed.data.domain import DomainData, SkipLog
from domain_embed.data.validate import (
    QRELS_COLUMNS,
    SPLITS,
    Row,
    build_domain,
    collect_corpus,
    collect_qrels,
    collect_queries,
    read_jsonl,
    read_lines,
    require_file,
)
from domain_embed.errors import DataError

_SPLIT_FILES = ", ".join(f"{split}.tsv" for split in SPLITS)


def load_beir(path: str | Path, skips: SkipLog) -> DomainData:
    """A BEIR directory with at least one of the three split files."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError("BEIR directory not found", file=str(root))
    # every file is checked before the large ones are parsed, so a missing one fails at once
    corpus_file = require_file(root / "corpus.jsonl", "corpus file")
    queries_file = require_file(root / "queries.jsonl", "queries file")
    split_files = qrels_files(root / "qrels")
    corpus = collect_corpus(read_jsonl(corpus_file, skips), str(corpus_file), skips)
    queries = collect_queries(read_jsonl(queries_file, skips), str(queries_file), skips)
    docs = set(corpus.ids)
    notes: Counter[str] = Counter()
    qrels = {split: collect_qrels(read_qrels_tsv(file, skips), str(file), queries, docs, skips, notes)
             for split, file in split_files.items()}
    return build_domain(f"beir:{root}", corpus, queries, qrels, notes, skips)


def qrels_files(folder: Path) -> dict[str, Path]:
    """The split files present; any other .tsv is an error, since a misnamed split would go unused."""
    if not folder.is_dir():
        raise DataError("qrels folder not found", file=str(folder))
    files: dict[str, Path] = {}
    for file in sorted(folder.glob("*.tsv")):
        if file.stem not in SPLITS:
            raise DataError(f"unknown split file (expected {_SPLIT_FILES})", file=str(file))
        files[file.stem] = file
    if not files:
        raise DataError(f"no qrels split file ({_SPLIT_FILES})", file=str(folder))
    return files


def read_qrels_tsv(path: Path, skips: SkipLog) -> Iterator[Row]:
    """Judgement rows of a qrels TSV, after checking its header (a wrong header is a file-level error)."""
    lines = read_lines(path, skips)
    first = next(lines, None)
    expected = "\t".join(QRELS_COLUMNS)
    if first is None:
        raise DataError(f"file is empty; expected the header {expected!r}", file=str(path), line=1,
                        field="header")
    header = first[1].rstrip("\r\n")
    if header != expected:
        raise DataError(f"header must be {expected!r}, got {header[:80]!r}", file=str(path), line=first[0],
                        field="header")
    for number, text in lines:
        text = text.rstrip("\r\n")
        if not text.strip():
            continue
        columns = text.split("\t")
        if len(columns) != len(QRELS_COLUMNS):
            skips.handle(DataError(f"expected {len(QRELS_COLUMNS)} tab-separated columns, got {len(columns)}",
                                   file=str(path), line=number))
            continue
        yield number, dict(zip(QRELS_COLUMNS, columns, strict=True))
