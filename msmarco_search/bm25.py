"""BM25 over a passage collection with ``bm25s``, tokenised by the project's tokeniser.

The lexical baseline that evaluation compares against and that search and the hybrid use.
Defaults k1 = 0.9, b = 0.4 (Anserini's MS MARCO settings).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import PipelineError
from .text import tokenize


class BM25Index:
    def __init__(self, passage_ids: Sequence[str], texts: Sequence[str], k1: float = 0.9, b: float = 0.4):
        import bm25s

        if len(passage_ids) != len(texts):
            raise ValueError("passage_ids and texts differ in length")
        if not texts:
            raise PipelineError("cannot build BM25 over an empty collection")
        self.passage_ids = list(passage_ids)
        self.k1, self.b = k1, b
        self._retriever = bm25s.BM25(k1=k1, b=b)
        self._retriever.index([tokenize(t) for t in texts], show_progress=False)

    def __len__(self) -> int:
        return len(self.passage_ids)

    def search(self, queries: Sequence[str], k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` passage positions and scores per query, best first: two ``(len(queries), k)`` arrays."""
        k = min(k, len(self))
        # A query without tokens scores 0 everywhere: bm25s takes an empty list for it, but its own padding
        # token "" lies outside the score matrix and would raise.
        documents, scores = self._retriever.retrieve([tokenize(q) for q in queries], k=k, show_progress=False)
        return np.asarray(documents, dtype=np.int64), np.asarray(scores, dtype=np.float32)

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of ``query`` against every passage (for re-ranking candidates)."""
        tokens = tokenize(query)
        if not tokens:
            return np.zeros(len(self), dtype=np.float32)
        return np.asarray(self._retriever.get_scores(tokens), dtype=np.float32)
