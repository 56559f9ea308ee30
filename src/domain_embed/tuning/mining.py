"""Hard-negative mining: candidates from the base model's ranking, purged of likely false negatives.

A hard negative that is really a positive teaches the model the wrong geometry, so every rule that
removes a candidate is explicit, configurable and counted.
"""

from __future__ import annotations

import logging
import random
import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from domain_embed.config import MiningConfig
from domain_embed.data.domain import Qrels
from domain_embed.errors import ConfigError, DataError
from domain_embed.retrieval.search import documents_by_best_window, search_documents, windows_by_doc

log = logging.getLogger(__name__)

# the order rules are applied in: a candidate is counted under the first rule that removes it
RULES = ("rank_window", "labelled_positive", "same_text", "max_score", "absolute_margin", "relative_margin",
         "rescorer")
_FILL_TRIES = 4  # random draws per missing negative before giving up
SOURCES = ("dense", "bm25")  # where candidates come from (mining.sources)


def normalise_text(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


@dataclass
class MinedQuery:
    query_id: str
    split: str
    positive_ids: list[str]
    positive_scores: list[float]
    negative_ids: list[str]  # chosen, best first (or sampled), at most num_negatives
    negative_scores: list[float]  # always the mining model's score, whatever the source
    negative_sources: list[str] = field(default_factory=list)  # which source proposed each negative ("random": fill)


@dataclass
class MiningResult:
    queries: list[MinedQuery]
    dropped: Counter = field(default_factory=Counter)  # rule -> candidates removed
    candidates: int = 0
    kept_before_sampling: int = 0
    random_fill: int = 0  # negatives drawn at random because the window had too few
    backend: str = ""
    sources: tuple[str, ...] = ("dense",)

    def scores(self) -> tuple[list[float], list[float]]:
        """Every positive's and every chosen negative's score, each negative once for its query (a query's negatives
        serve all its positives): the counts stats() reports and triplets/scores.png shows."""
        return ([s for q in self.queries for s in q.positive_scores],
                [s for q in self.queries for s in q.negative_scores])

    def stats(self) -> dict:
        pos, neg = (np.array(values, dtype=np.float64) for values in self.scores())
        summary = {"candidates": self.candidates, "dropped_by_rule": {r: self.dropped.get(r, 0) for r in RULES},
                   "kept_before_sampling": self.kept_before_sampling, "negatives_chosen": int(neg.size),
                   "negatives_random_fill": self.random_fill,
                   "negatives_by_source": {s: sum(q.negative_sources.count(s) for q in self.queries)
                                           for s in (*self.sources, "random")},
                   "queries": len(self.queries),
                   "queries_without_negative": sum(not q.negative_ids for q in self.queries),
                   "backend": self.backend}
        for name, values in (("positive_scores", pos), ("negative_scores", neg)):
            if values.size:
                summary[name] = {"mean": float(values.mean()), "p5": float(np.percentile(values, 5)),
                                 "p50": float(np.percentile(values, 50)), "p95": float(np.percentile(values, 95))}
        worst = max(RULES, key=lambda r: self.dropped.get(r, 0))
        summary["rule_removing_most"] = worst if self.dropped.get(worst, 0) else None
        return summary


def labelled_positives(all_qrels: dict[str, Qrels]) -> dict[str, set[str]]:
    """Every document labelled relevant for a query in any split: never a negative for that query."""
    out: dict[str, set[str]] = {}
    for qrels in all_qrels.values():
        for qid, rel in qrels.items():
            out.setdefault(qid, set()).update(d for d, s in rel.items() if s > 0)
    return out


def check_config(cfg: MiningConfig) -> None:
    if not 0 <= cfg.range_min < cfg.range_max:
        raise ConfigError(f"mining.range_min={cfg.range_min} must be >= 0 and < mining.range_max={cfg.range_max}")
    if cfg.sampling not in ("top", "random"):
        raise ConfigError(f"mining.sampling={cfg.sampling!r}: expected top or random")
    if cfg.num_negatives < 1:
        raise ConfigError("mining.num_negatives must be >= 1")
    if cfg.relative_margin is not None and not 0 <= cfg.relative_margin < 1:
        raise ConfigError("mining.relative_margin must be in [0, 1)")
    if not cfg.sources or len(set(cfg.sources)) < len(cfg.sources) or set(cfg.sources) - set(SOURCES):
        raise ConfigError(f"mining.sources={list(cfg.sources)}: expected distinct values among {list(SOURCES)}")
    if cfg.rounds < 1:
        raise ConfigError(f"mining.rounds must be >= 1, got {cfg.rounds}")


def mine_hard_negatives(*, query_ids: list[str], query_splits: list[str], query_emb: np.ndarray,
                        window_emb: np.ndarray, parents: np.ndarray, corpus_ids: list[str], documents: list[str],
                        mined_qrels: dict[str, Qrels], all_qrels: dict[str, Qrels], cfg: MiningConfig,
                        seed: int, rescore=None, bm25_ranked: np.ndarray | None = None) -> MiningResult:
    """Mines negatives for each query from ranks [range_min, range_max) of the mining model's ranking and, with
    `bm25` in `cfg.sources`, of `bm25_ranked` (per query row, document positions best first, -1 padded).

    Every source's candidates pass the same rules on the mining model's score, so a lexical look-alike that the
    model already scores near the positive is dropped like a dense one. The kept candidates of the sources
    alternate (dense first), so each contributes about equally.
    `rescore(query_index, doc_positions) -> np.ndarray` (optional) returns cross-encoder scores; a
    candidate scoring above `cfg.rescorer_threshold` is dropped as a likely unlabelled positive."""
    check_config(cfg)
    if "bm25" in cfg.sources and bm25_ranked is None:
        raise ConfigError("mining.sources includes bm25, but no BM25 ranking was given")
    doc_pos = {d: i for i, d in enumerate(corpus_ids)}
    labelled = labelled_positives(all_qrels)
    windows_of = windows_by_doc(parents)
    normalised = [normalise_text(t) for t in documents] if cfg.exclude_same_text else None
    hits = search_documents(query_emb, window_emb, parents, len(corpus_ids), cfg.range_max, cfg.search)
    rng = random.Random(seed)
    result = MiningResult(queries=[], backend=hits.backend, sources=tuple(cfg.sources))
    for row, (qid, split) in enumerate(zip(query_ids, query_splits, strict=True)):
        positives = [d for d, s in mined_qrels[split].get(qid, {}).items() if s > 0]
        if not positives:
            raise DataError(f"query '{qid}' has no positive in split '{split}'", field="qrels")
        missing = [d for d in positives if d not in doc_pos]
        if missing:
            raise DataError(f"positive '{missing[0]}' of query '{qid}' is not in the corpus", field="qrels")
        pos_idx = np.array([doc_pos[d] for d in positives])
        pos_scores = _doc_scores(query_emb[row], window_emb, parents, windows_of, pos_idx)
        floor = float(pos_scores.min())
        positive_texts = {normalised[i] for i in pos_idx} if normalised else set()

        def rules(rank: int, doc: int, score: float, qid=qid, floor=floor, positive_texts=positive_texts):
            return _first_rule(rank, corpus_ids[doc], score, cfg, labelled.get(qid, set()), floor,
                               normalised[doc] if normalised else "", positive_texts)

        kept_by_source, seen = [], set()
        for source in cfg.sources:
            if source == "dense":
                found = hits.indices[row] >= 0  # an IVF search may return fewer than k hits (padded with -1)
                ranked, scores = hits.indices[row][found], hits.scores[row][found]
            else:
                ranked = bm25_ranked[row][bm25_ranked[row] >= 0][:cfg.range_max]
                scores = _doc_scores(query_emb[row], window_emb, parents, windows_of, ranked)
            seen.update(ranked.tolist())
            kept = _apply_rules(row, ranked.tolist(), scores.tolist(), rules, rescore, cfg, result, count=True)
            kept_by_source.append([(d, s, source) for d, s in zip(*kept, strict=True)])
        merged = _alternate(kept_by_source)
        result.kept_before_sampling += len(merged)
        chosen = list(range(len(merged)))
        if cfg.sampling == "random" and len(chosen) > cfg.num_negatives:
            chosen = sorted(rng.sample(chosen, cfg.num_negatives))
        picked = [merged[i] for i in chosen[:cfg.num_negatives]]
        neg_idx, neg_scores, neg_sources = [p[0] for p in picked], [p[1] for p in picked], [p[2] for p in picked]
        short = cfg.num_negatives - len(neg_idx)
        if short and cfg.fill_random:
            n_draws = min(len(corpus_ids), short * _FILL_TRIES + len(seen))
            draws = [d for d in rng.sample(range(len(corpus_ids)), n_draws) if d not in seen]
            scores = _doc_scores(query_emb[row], window_emb, parents, windows_of, np.array(draws, dtype=np.int64))

            def fill_rules(_rank: int, doc: int, score: float, rules=rules):
                return rules(cfg.range_min, doc, score)  # drawn documents have no rank: only the other rules

            fill_idx, fill_scores = _apply_rules(row, draws, scores.tolist(), fill_rules, rescore, cfg, result,
                                                 count=False)
            neg_idx += fill_idx[:short]
            neg_scores += fill_scores[:short]
            neg_sources += ["random"] * len(fill_idx[:short])
            result.random_fill += len(fill_idx[:short])
        result.queries.append(MinedQuery(qid, split, positives, pos_scores.tolist(),
                                         [corpus_ids[d] for d in neg_idx], neg_scores, neg_sources))
    log.info("mining: %d queries, %d candidates, dropped %s, backend %s", len(query_ids), result.candidates,
             dict(result.dropped), hits.backend)
    return result


def _alternate(lists: list[list[tuple]]) -> list[tuple]:
    """Round-robin over the sources' kept candidates, each document once (where it first appears)."""
    out, taken = [], set()
    for i in range(max(map(len, lists), default=0)):
        for items in lists:
            if i < len(items) and items[i][0] not in taken:
                taken.add(items[i][0])
                out.append(items[i])
    return out


def _apply_rules(row: int, docs: list[int], scores: list[float], rules, rescore, cfg: MiningConfig,
                 result: MiningResult, *, count: bool) -> tuple[list[int], list[float]]:
    """Candidates that pass every rule (and the rescorer), in their given order."""
    kept_idx, kept_scores = [], []
    for rank, (doc, score) in enumerate(zip(docs, scores, strict=True)):
        rule = rules(rank, int(doc), float(score))
        if count:
            result.candidates += 1
            if rule:
                result.dropped[rule] += 1
        if not rule:
            kept_idx.append(int(doc))
            kept_scores.append(float(score))
    if rescore is not None and kept_idx:
        keep = np.asarray(rescore(row, kept_idx)) <= cfg.rescorer_threshold
        if count:
            result.dropped["rescorer"] += int((~keep).sum())
        kept_idx = [d for d, k in zip(kept_idx, keep, strict=True) if k]
        kept_scores = [s for s, k in zip(kept_scores, keep, strict=True) if k]
    return kept_idx, kept_scores


def _first_rule(rank: int, doc_id: str, score: float, cfg: MiningConfig, labelled: set[str], floor: float,
                normalised_text: str, positive_texts: set[str]) -> str | None:
    if rank < cfg.range_min:
        return "rank_window"
    if doc_id in labelled:
        return "labelled_positive"
    if cfg.exclude_same_text and normalised_text in positive_texts:
        return "same_text"
    if cfg.max_score is not None and score > cfg.max_score:
        return "max_score"
    if cfg.absolute_margin is not None and score > floor - cfg.absolute_margin:
        return "absolute_margin"
    if cfg.relative_margin is not None and score > floor * (1 - cfg.relative_margin):
        return "relative_margin"
    return None


def _doc_scores(query: np.ndarray, window_emb: np.ndarray, parents: np.ndarray, windows_of: list[np.ndarray],
                docs: np.ndarray) -> np.ndarray:
    """Scores of documents the ranking did not reach (positives, random draws), by the ranking's own rule."""
    windows = np.concatenate([np.empty(0, dtype=np.int64), *(windows_of[d] for d in docs)])
    window_scores = np.asarray(window_emb[windows], dtype=np.float32) @ np.asarray(query, dtype=np.float32)
    found, best = documents_by_best_window(window_scores, parents[windows])
    score_of = dict(zip(found.tolist(), best.tolist(), strict=True))
    return np.array([score_of[d] for d in docs.tolist()])


def best_window(query: np.ndarray, window_emb: np.ndarray, windows_of: list[np.ndarray], doc: int) -> int:
    """The window of `doc` closest to the query: the text a triplet uses for a long document."""
    w = windows_of[doc]
    return int(w[np.argmax(np.asarray(window_emb[w], dtype=np.float32) @ np.asarray(query, dtype=np.float32))])
