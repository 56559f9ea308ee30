"""Hugging Face dataset loader. The adapters are pure functions of records (iterables of dicts), so they
are tested offline; `load_dataset` is called only by the thin `load_hub` layer.

Records have no line numbers: errors give the 0-based row index, and the file is `<dataset> [<part>]`.
"""

from __future__ import annotations

import functools
import socket
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from domain_embed.config import HubAdapter, HubSourceConfig
from domain_embed.data.domain import DomainData, Qrels, SkipLog
from domain_embed.data.validate import (
    Corpus,
    build_domain,
    check_unique,
    collect_corpus,
    collect_qrels,
    collect_queries,
    id_field,
    kind,
    map_splits,
    record_errors,
    require_queries,
    text_field,
)
from domain_embed.errors import ConfigError, DataError

Records = Iterable[Mapping[str, Any]]
_PROBE_SECONDS = 3.0


def load_hub(cfg: HubSourceConfig, skips: SkipLog) -> DomainData:
    """Loads `cfg.name` (a hub id, or a local folder in the same layout) with the configured adapter."""
    if not cfg.name:
        raise ConfigError("data.hub.name is not set (a Hugging Face dataset id such as RegNLP/ObliQA)")
    if HubAdapter(cfg.adapter) is HubAdapter.obliqa:
        questions = _load(cfg.name, cfg.revision)
        passages = _load(cfg.name, cfg.revision, data_files=cfg.passages_files, split="train")
        return adapt_obliqa(questions, passages, name=cfg.name, splits=cfg.splits,
                            document_names=cfg.document_names, skips=skips)
    corpus = _only_split(_load(cfg.name, cfg.revision, config=cfg.corpus_config), cfg.name, cfg.corpus_config)
    queries = _only_split(_load(cfg.name, cfg.revision, config=cfg.queries_config), cfg.name,
                          cfg.queries_config)
    # the revision names a commit of `cfg.name`; it means nothing in a separate qrels repo
    qrels_revision = None if cfg.qrels_name else cfg.revision
    qrels = _load(cfg.qrels_name or cfg.name, qrels_revision, config=cfg.qrels_config)
    return adapt_generic(corpus, queries, qrels, name=cfg.name, splits=cfg.splits, skips=skips)


def _fix() -> str:
    """What to do next; offering HF_HUB_OFFLINE=1 to a user who already set it would send them in a circle."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return ("set data.path=<a BEIR folder> to read local files (HF_HUB_OFFLINE=1 is set, so only the local cache "
                "is read: unset it once, with network access, to download the dataset)")
    return "set data.path=<a BEIR folder> to read local files, or HF_HUB_OFFLINE=1 to use only the local cache"


@functools.cache
def _hub_unreachable() -> str | None:
    """Why the Hub cannot be asked (None when it can, or in offline mode, where datasets answers from the cache at
    once). Asked once, in a few seconds: without it an air-gapped box spends half a minute in retries."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return None
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=_PROBE_SECONDS).close()
    except OSError as exc:
        return f"{url.hostname} cannot be reached ({exc.strerror or exc.__class__.__name__})"
    return None


def _load(name: str, revision: str | None, *, config: str | None = None, data_files: str | None = None,
          split: str | None = None) -> Any:
    """`datasets.load_dataset`, with any failure (offline, unknown id, bad files) turned into a DataError."""
    if not Path(name).exists() and (reason := _hub_unreachable()):
        raise DataError(f"cannot load hub dataset '{name}': {reason}; {_fix()}", file=name)
    import datasets  # slow to import; only hub sources pay for it

    try:
        return datasets.load_dataset(name, config, revision=revision, data_files=data_files, split=split)
    except Exception as err:  # datasets raises many unrelated types (ConnectionError, ValueError, ...)
        part = f" (config '{config}')" if config else f" (files '{data_files}')" if data_files else ""
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"cannot load hub dataset '{name}'{part}: {detail}; {_fix()}", file=name) from err


def _only_split(dataset: Mapping[str, Records], name: str, config: str) -> Records:
    """Corpus and queries configs hold one split (named `corpus` / `queries` on the hub)."""
    if len(dataset) != 1:
        raise DataError(f"config '{config}' has splits {sorted(dataset)}; expected exactly one", file=name)
    return next(iter(dataset.values()))


def adapt_generic(corpus: Records, queries: Records, qrels: Mapping[str, Records], *, name: str,
                  splits: Mapping[str, str], skips: SkipLog) -> DomainData:
    """The MTEB / BEIR-on-the-hub layout: corpus and queries with `_id` (or `id`), qrels split by split."""
    ids = ("_id", "id")
    docs = collect_corpus(enumerate(corpus), f"{name} [corpus]", skips, id_fields=ids)
    query_texts = collect_queries(enumerate(queries), f"{name} [queries]", skips, id_fields=ids)
    doc_ids = set(docs.ids)
    notes: Counter[str] = Counter()
    judged = {ours: collect_qrels(enumerate(qrels[hub]), f"{name} [qrels/{hub}]", query_texts, doc_ids, skips,
                                  notes)
              for hub, ours in map_splits(qrels, splits, f"{name} [qrels]").items()}
    return build_domain(f"hub:{name}", docs, query_texts, judged, notes, skips)


@dataclass
class _Passage:
    id: str
    document: str
    number: str  # the PassageID, e.g. "9.2.1"
    text: str  # stripped, as in the BEIR copy (the release has trailing newlines)


@dataclass
class _Passages:
    """ObliQA passages indexed by (DocumentID, PassageID), the key that questions refer to them by."""

    file: str
    items: list[_Passage] = field(default_factory=list)
    by_key: dict[tuple[str, str], list[_Passage]] = field(default_factory=dict)

    def resolve(self, ref: Any, file: str, line: int) -> _Passage:
        """The passage a question cites; the cited text breaks a tie when a key is not unique."""
        if not isinstance(ref, Mapping):
            raise DataError(f"expected passages as objects, got {kind(ref)}", file=file, line=line,
                            field="Passages")
        document = id_field(ref, "DocumentID", file, line)
        number = id_field(ref, "PassageID", file, line)
        found = self.by_key.get((document, number), [])
        where = f"DocumentID {document}, PassageID '{number}'"
        if not found:
            raise DataError(f"no passage has {where} in {self.file}", file=file, line=line, field="Passages")
        if len(found) > 1:
            cited = [p for p in found if p.text == str(ref.get("Passage") or "").strip()]
            if len(cited) != 1:
                raise DataError(f"{len(found)} passages have {where} and the cited text does not pick one",
                                file=file, line=line, field="Passages")
            found = cited
        if not found[0].text:
            raise DataError(f"the relevant passage {where} is empty", file=file, line=line, field="Passages")
        return found[0]


def _index_passages(passages: Records, file: str, skips: SkipLog) -> _Passages:
    index = _Passages(file)
    seen: dict[str, tuple[str, int]] = {}
    for row, record in enumerate(passages):
        with record_errors(skips):
            passage = _Passage(id=id_field(record, "ID", file, row),
                               document=id_field(record, "DocumentID", file, row),
                               number=id_field(record, "PassageID", file, row),
                               text=text_field(record, "Passage", file, row, optional=True).strip())
            check_unique(seen, passage.id, f"id '{passage.id}'", file, row, "ID")
            index.items.append(passage)
            index.by_key.setdefault((passage.document, passage.number), []).append(passage)
    return index


def adapt_obliqa(questions: Mapping[str, Records], passages: Records, *, name: str,
                 splits: Mapping[str, str], document_names: Mapping[str, str], skips: SkipLog) -> DomainData:
    """The ObliQA release: questions cite passages by (DocumentID, PassageID); corpus `_id` = passage `ID`.
    Empty passages no question cites are dropped and counted; a cited empty passage is an error."""
    index = _index_passages(passages, f"{name} [passages]", skips)
    queries: dict[str, str] = {}
    qrels: dict[str, Qrels] = {}
    seen: dict[str, tuple[str, int]] = {}
    for hub, ours in map_splits(questions, splits, name).items():
        file = f"{name} [{hub}]"
        split: Qrels = {}
        for row, record in enumerate(questions[hub]):
            with record_errors(skips):
                query_id = id_field(record, "QuestionID", file, row)
                text = text_field(record, "Question", file, row)
                refs = record.get("Passages")
                if not isinstance(refs, list) or not refs:
                    got = "missing field" if refs is None else f"expected a non-empty list, got {kind(refs)}"
                    raise DataError(got, file=file, line=row, field="Passages")
                relevant = [index.resolve(ref, file, row) for ref in refs]
                check_unique(seen, query_id, f"id '{query_id}'", file, row, "QuestionID")
                queries[query_id] = text
                split[query_id] = {p.id: 1 for p in relevant}
        qrels[ours] = require_queries(split, file)
    names = {str(key): title for key, title in document_names.items()}
    corpus = Corpus(index.file)
    dropped = 0
    for p in index.items:
        if p.text:
            corpus.add(p.id, f"{names.get(p.document) or f'Document {p.document}'} | {p.number}", p.text)
        else:
            dropped += 1
    notes = Counter({"empty passages dropped (no kept question cites them)": dropped})
    return build_domain(f"hub:{name} [obliqa adapter]", corpus, queries, qrels, notes, skips)
