"""The data contract every stage consumes: a corpus, queries and qrels by split."""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from dataclasses import dataclass, field

from domain_embed.errors import DataError

Qrels = dict[str, dict[str, int]]  # query id -> {doc id: relevance}


def nested_sample(ids: list[str], n: int | None, seed: int) -> list[str]:
    """The first `n` ids of a seeded permutation of `ids` (all of them when `n` is None): with one seed, a smaller
    sample is always inside a larger one (`random.sample` gives no such promise across sizes)."""
    order = sorted(ids)
    random.Random(seed).shuffle(order)
    return order if n is None else order[:n]


@dataclass
class SkipLog:
    """Records skipped bad records (only when config allows skipping): nothing is dropped silently."""

    allow: bool = False
    skipped: list[DataError] = field(default_factory=list)

    def handle(self, error: DataError) -> None:
        if not self.allow:
            raise error
        self.skipped.append(error)

    def summary(self) -> dict:
        by_reason = Counter(f"{e.file}: {e.reason}" for e in self.skipped)
        return {"skipped": len(self.skipped), "by_reason": dict(by_reason),
                "examples": [str(e) for e in self.skipped[:10]]}


@dataclass
class DomainData:
    corpus_ids: list[str]
    corpus_titles: list[str]
    corpus_texts: list[str]
    queries: dict[str, str]
    qrels: dict[str, Qrels]  # split name -> qrels
    source: str
    skips: SkipLog = field(default_factory=SkipLog)

    def __post_init__(self) -> None:
        self._index = {doc_id: i for i, doc_id in enumerate(self.corpus_ids)}

    def __len__(self) -> int:
        return len(self.corpus_ids)

    def doc_index(self, doc_id: str) -> int:
        return self._index[doc_id]

    def has_doc(self, doc_id: str) -> bool:
        return doc_id in self._index

    def documents(self, use_title: bool = True) -> list[str]:
        """Text that is encoded and indexed for each document (BEIR convention: title, space, text)."""
        if not use_title:
            return list(self.corpus_texts)
        return [f"{t} {x}".strip() if t else x for t, x in zip(self.corpus_titles, self.corpus_texts, strict=True)]

    def split(self, name: str) -> tuple[list[str], list[str], Qrels]:
        """Query ids, query texts and qrels of one split; queries without qrels are not evaluated."""
        if name not in self.qrels:
            raise DataError(f"split '{name}' not found (have: {sorted(self.qrels)})", field="split")
        qrels = self.qrels[name]
        qids = sorted(qrels)
        return qids, [self.queries[q] for q in qids], qrels

    def split_overlap(self) -> dict[str, int]:
        """Queries judged in two splits: a leak that inflates any tuned-vs-base comparison."""
        names = sorted(self.qrels)
        return {f"{a}&{b}": n for i, a in enumerate(names) for b in names[i + 1:]
                if (n := len(self.qrels[a].keys() & self.qrels[b].keys()))}

    def fingerprint(self) -> str:
        """Content hash of everything that determines results; keys caches and manifests."""
        h = hashlib.sha256()
        docs = zip(self.corpus_ids, self.corpus_titles, self.corpus_texts, strict=True)
        for parts in (docs, sorted(self.queries.items())):
            for row in parts:
                h.update("\x1f".join(row).encode())
                h.update(b"\x1e")
        for split in sorted(self.qrels):
            for qid in sorted(self.qrels[split]):
                for did, score in sorted(self.qrels[split][qid].items()):
                    h.update(f"{split}\x1f{qid}\x1f{did}\x1f{score}\x1e".encode())
        return h.hexdigest()

    def corpus_fingerprint(self, use_title: bool = True) -> str:
        h = hashlib.sha256()
        for doc_id, text in zip(self.corpus_ids, self.documents(use_title), strict=True):
            h.update(f"{doc_id}\x1f{text}\x1e".encode())
        return h.hexdigest()

    def sliced(self, max_queries: int | None, max_corpus: int | None, seed: int) -> DomainData:
        """A smaller but still meaningful problem: keep sampled queries per split, all their
        positives, and fill the corpus with random distractors up to `max_corpus`."""
        if max_queries is None and max_corpus is None:
            return self
        rng = random.Random(seed)
        qrels: dict[str, Qrels] = {}
        for split, split_qrels in self.qrels.items():
            qids = sorted(split_qrels)
            if max_queries is not None and len(qids) > max_queries:
                qids = sorted(rng.sample(qids, max_queries))
            qrels[split] = {q: split_qrels[q] for q in qids}
        needed = {d for sq in qrels.values() for rel in sq.values() for d in rel}
        keep = set(needed)
        if max_corpus is None:
            keep = set(self.corpus_ids)
        else:
            others = [d for d in self.corpus_ids if d not in needed]
            room = max(0, max_corpus - len(keep))
            keep.update(rng.sample(others, min(room, len(others))))
        idx = [i for i, d in enumerate(self.corpus_ids) if d in keep]
        used_q = {q for sq in qrels.values() for q in sq}
        return DomainData(
            corpus_ids=[self.corpus_ids[i] for i in idx],
            corpus_titles=[self.corpus_titles[i] for i in idx],
            corpus_texts=[self.corpus_texts[i] for i in idx],
            queries={q: t for q, t in self.queries.items() if q in used_q},
            qrels=qrels,
            source=f"{self.source} (slice: max_queries={max_queries}, max_corpus={max_corpus}, seed={seed})",
            skips=self.skips,
        )
