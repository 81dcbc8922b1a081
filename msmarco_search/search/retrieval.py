"""Retrievers: the one set of ranking systems that search, evaluation and validation all use.

A retriever is prepared once over a *collection* (the in-memory :class:`PassagePool` of evaluation and
validation, or the on-disk :class:`~msmarco_search.index.load.PassageIndex` of search), then ranks it:

- ``search(queries, k)``: per query, the top-``k`` ``(row position, score)`` hits, best first;
- ``rerank(queries, candidates)``: per query, the score of each of its candidate rows.

Equal scores are always ordered by passage id, so every path that ranks the same collection with the same
retriever writes the same run. Systems (the base, BM25 and the random baseline here; the dense ones in ``dense``,
the hybrid and feedback in ``hybrid``):

- :class:`BM25Retriever`: ``bm25s`` on the project's tokens (optionally stemmed), built over the collection or
  loaded from the BM25 index saved beside a search index;
- :class:`DenseRetriever` and its encoders (:class:`ModelRetriever` / :class:`TwoTowerRetriever` for two-tower
  models, :class:`CbowRetriever` for zero-shot word-vector means): exact inner product in chunks over a
  memory-mapped or in-memory matrix, or the index's ``faiss`` index;
- :class:`HybridRetriever`: a dense and a lexical retriever fused (``msmarco_search.search.fusion.fuse``) over the
  top ``depth`` of each (1000 by default: deep runs, as evaluated);
- :class:`FeedbackRetriever`: pseudo-relevance feedback (Rocchio) in the two-tower's vector space, from its own
  first ranking or a hybrid's;
- :class:`RandomRetriever`: the chance baseline of re-ranking.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from msmarco_search.core.report import info
from msmarco_search.index.bm25 import BM25Index, BM25Settings
from msmarco_search.index.layout import BM25_DIR
from msmarco_search.index.load import PassageIds, PassageIndex, collection_identity, saved_bm25_settings

Hits = list[tuple[int, float]]  # (row position, score), best first


class Collection(Protocol):
    """What a retriever ranks: rows with a passage id and a text."""

    def __len__(self) -> int: ...

    def pid(self, position: int) -> str: ...

    def texts(self) -> Sequence[str]: ...


@dataclass
class PassagePool:
    """An in-memory collection (evaluation, validation); candidates and runs refer to rows by position and id."""

    ids: list[str]
    texts_: list[str]
    position: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.texts_):
            raise ValueError("ids and texts differ in length")
        self.position = {pid: i for i, pid in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def pid(self, position: int) -> str:
        return self.ids[position]

    def texts(self) -> Sequence[str]:
        return self.texts_

    def add(self, pid: str, text: str) -> None:
        self.position[pid] = len(self.ids)
        self.ids.append(pid)
        self.texts_.append(text)


def ranked(collection: Collection, positions: Sequence[int], scores: Sequence[float]) -> Hits:
    """``(position, score)`` pairs best first, equal scores in passage-id order."""
    hits = [(int(p), float(s)) for p, s in zip(positions, scores, strict=True)]
    return sorted(hits, key=lambda hit: (-hit[1], collection.pid(hit[0])))


class Retriever(ABC):
    """A ranking system over a collection; :meth:`prepare` indexes or encodes it once."""

    name: str
    description: str = ""

    def __init__(self) -> None:
        self.collection: Collection | None = None

    def prepare(self, collection: Collection) -> None:
        """Index or encode ``collection`` (nothing to do when it is the one already prepared)."""
        if self.collection is not collection:
            self._prepare(collection)
            self.collection = collection

    @abstractmethod
    def _prepare(self, collection: Collection) -> None: ...

    @abstractmethod
    def search(self, queries: Sequence[str], k: int) -> list[Hits]:
        """Per query: the top-``k`` ``(position, score)`` hits, best first, ties by passage id."""

    @abstractmethod
    def rerank(self, queries: Sequence[str], candidates: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per query: the score of each of its candidates (row positions)."""

    def settings(self) -> dict[str, Any]:
        return {}


# ---------------------------------------------------------------------------------------------- BM25


class BM25Retriever(Retriever):
    """BM25 over the collection's own rows, so its hits are the same rows as the dense retriever's.

    ``saved``: a folder with a saved BM25 index (``search/search.py index`` writes one beside the dense
    index) to load instead of building; it must match ``settings`` and the collection, or it is refused.
    """

    def __init__(self, settings: BM25Settings | None = None, name: str = "bm25", saved: Path | None = None,
                 collection_file: Path | None = None):
        super().__init__()
        self.bm25_settings = settings or BM25Settings()
        self.name, self.saved, self.collection_file = name, saved, collection_file
        if saved is not None and collection_file is None:
            raise ValueError("a saved BM25 index is checked against the collection file it was built over")
        self.description = self.bm25_settings.describe()
        self.index: BM25Index | None = None

    def _prepare(self, collection: Collection) -> None:
        started = time.perf_counter()
        s = self.bm25_settings
        ids = PassageIds(collection) if isinstance(collection, PassageIndex) else collection.ids
        if self.saved is not None:
            if isinstance(collection, PassageIndex):
                # bm25s opens the saved index by name: only while the folder there is the one the search index
                # opened, before and after, are its files that index's (a rebuild puts a new folder there)
                collection.check_in_place()
                self.index = BM25Index.load(self.saved, ids, s, collection.collection_identity())
                collection.check_in_place()
            else:
                self.index = BM25Index.load(self.saved, ids, s, collection_identity(self.collection_file,
                                                                                    len(collection)))
            self.description = f"{s.describe()}, saved index {self.saved}"
            return
        self.index = BM25Index(ids, collection.texts(), s.k1, s.b, s.stemmer)
        if len(collection) > 100_000:
            info(f"Built BM25 over {len(collection):,} passages in {time.perf_counter() - started:.1f} s")

    def search(self, queries: Sequence[str], k: int) -> list[Hits]:
        positions, scores = self.index.search(list(queries), k)
        # bm25s fills the top k with zero-score rows when fewer passages match; those share no (stemmed) word
        # with the query, so they are not hits (in a fused run they would get a rank by passage id alone)
        return [ranked(self.collection, p[s > 0], s[s > 0]) for p, s in zip(positions, scores, strict=True)]

    def rerank(self, queries: Sequence[str], candidates: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [self.index.scores(q)[c] for q, c in zip(queries, candidates, strict=True)]

    def settings(self) -> dict[str, Any]:
        s = self.bm25_settings
        return {"k1": s.k1, "b": s.b, "stemmer": s.stemmer,
                **({"saved_index": str(self.saved)} if self.saved is not None else {})}


def bm25_for_index(index: PassageIndex, k1: float | None = None, b: float | None = None,
                   stemmer: str | None = None, name: str = "bm25") -> BM25Retriever:
    """BM25 over a search index: its saved BM25 index when it has one (settings not given are the saved
    index's; given ones must match it, or it is refused), else one built in memory (defaults for the rest)."""
    saved = saved_bm25_settings(index)
    base = saved or BM25Settings()
    settings = BM25Settings(base.k1 if k1 is None else k1, base.b if b is None else b,
                            base.stemmer if stemmer is None else stemmer)
    if saved is None:
        return BM25Retriever(settings, name)
    return BM25Retriever(settings, name, index.directory / BM25_DIR, index.collection)


class RandomRetriever(Retriever):
    """Random scores: the chance baseline of re-ranking (each seed is one shuffled order)."""

    def __init__(self, seed: int = 0, name: str = "random"):
        super().__init__()
        self.name, self.seed = name, seed

    def _prepare(self, collection: Collection) -> None:
        pass

    def search(self, queries: Sequence[str], k: int) -> list[Hits]:
        rng = np.random.default_rng(self.seed)
        results = []
        for _ in queries:
            scores = rng.random(len(self.collection)).astype(np.float32)
            top = np.argsort(-scores)[:k]
            results.append(ranked(self.collection, top, scores[top]))
        return results

    def rerank(self, queries: Sequence[str], candidates: Sequence[np.ndarray]) -> list[np.ndarray]:
        rng = np.random.default_rng(self.seed)
        return [rng.random(len(c)).astype(np.float32) for c in candidates]
