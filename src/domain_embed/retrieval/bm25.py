"""BM25 reference system (bm25s): the lexical baseline an embedding model has to beat on the domain."""

from __future__ import annotations

import os

# bm25s runs a JAX op when it is imported (where JAX is installed, as on many GPU images): JAX would then take 75%
# of the GPU's memory before torch encodes or trains. BM25 needs no GPU, so JAX stays on the CPU unless set.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import bm25s
import numpy as np
import Stemmer

from domain_embed.config import BM25Config
from domain_embed.errors import ConfigError


def _stemmer(language: str | None) -> Stemmer.Stemmer | None:
    if language is None:
        return None
    try:
        return Stemmer.Stemmer(language)
    except KeyError:
        raise ConfigError(f"bm25.stemmer={language!r} is not a PyStemmer language; "
                          f"choose one of {', '.join(Stemmer.algorithms())} or null") from None


class BM25Index:
    """Sparse BM25 index over `documents`; search results are positions in that list."""

    def __init__(self, documents: list[str], cfg: BM25Config | None = None, show_progress: bool = False):
        if not documents:
            raise ValueError("cannot build a BM25 index over an empty corpus")
        self.cfg = cfg if cfg is not None else BM25Config()
        self.show_progress = show_progress
        self._stemmer = _stemmer(self.cfg.stemmer)
        self.size = len(documents)
        tokens = bm25s.tokenize(documents, stopwords=self.cfg.stopwords, stemmer=self._stemmer,
                                show_progress=show_progress)
        if not tokens.vocab:
            raise ValueError("no document has an indexable word (all empty, stop words or 1-letter words)")
        self._model = bm25s.BM25(k1=self.cfg.k1, b=self.cfg.b)
        # the empty token gives queries with no known word a valid, all-zero score row
        self._model.index(tokens, create_empty_token=True, show_progress=show_progress)

    def search(self, queries: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k doc positions (int64) and scores (float32), shape (len(queries), min(k, corpus size)).

        Equal scores within the top k are ordered by doc position, so the output order is reproducible.
        A query without any indexed word gets zero scores and still k valid positions.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        k = min(k, self.size)
        if not queries:
            return np.empty((0, k), dtype=np.int64), np.empty((0, k), dtype=np.float32)
        # strings, not ids: ids from a second tokenize call would not match the index vocabulary
        tokens = bm25s.tokenize(queries, stopwords=self.cfg.stopwords, stemmer=self._stemmer,
                                return_ids=False, show_progress=self.show_progress)
        indices, scores = self._model.retrieve(tokens, k=k, show_progress=self.show_progress)
        indices = np.asarray(indices, dtype=np.int64)
        scores = np.asarray(scores, dtype=np.float32)
        order = np.lexsort((indices, -scores), axis=1)
        return np.take_along_axis(indices, order, axis=1), np.take_along_axis(scores, order, axis=1)
