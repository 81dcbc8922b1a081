"""Searching a built index: the retrievers a search session uses, a session that answers one query at a time
(the search page's), and how hits are shown.

The retrievers themselves are ``msmarco_search.retrieval``'s (the ones evaluation scores); the index is
``msmarco_search.index``'s. This module only picks and configures them for an index and a model.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from .index import PassageIndex, faiss_available
from .report import warn
from .retrieval import (
    DEFAULT_FEEDBACK_DEPTH,
    DEFAULT_FEEDBACK_WEIGHT,
    DEFAULT_FUSION_DEPTH,
    DEFAULT_REFINE,
    FeedbackRetriever,
    HybridRetriever,
    Retriever,
    TwoTowerRetriever,
    bm25_for_index,
)
from .runs import DEFAULT_FUSION_WEIGHT, DEFAULT_RRF_K
from .vocab import UNK_ID

SYSTEMS = ("two-tower", "bm25", "hybrid", "two-tower-prf", "hybrid-prf")
SEARCH_MODES = ("auto", "exact", "faiss")


@dataclass
class SearchOptions:
    search: str = "auto"  # one of SEARCH_MODES
    nprobe: int = 16
    ef_search: int = 128
    refine: int = DEFAULT_REFINE
    chunk_rows: int = 65536
    # BM25 settings; None: the saved BM25 index's own (or the defaults when the index has none)
    bm25_k1: float | None = None
    bm25_b: float | None = None
    bm25_stemmer: str | None = None
    fusion: str = "rrf"
    fusion_weight: float = DEFAULT_FUSION_WEIGHT
    rrf_k: int = DEFAULT_RRF_K
    fusion_depth: int = DEFAULT_FUSION_DEPTH
    feedback_depth: int = DEFAULT_FEEDBACK_DEPTH
    feedback_weight: float = DEFAULT_FEEDBACK_WEIGHT


def _use_faiss(index: PassageIndex, mode: str) -> bool:
    if mode != "auto":
        return mode == "faiss"
    if index.has_faiss and not faiss_available():
        warn("the index has a faiss index but faiss is not installed; searching exactly instead")
        return False
    return index.has_faiss


def make_retrievers(systems: list[str], index: PassageIndex, model, model_path, options: SearchOptions
                    ) -> list[Retriever]:
    """The retrievers for ``systems`` (names of ``SYSTEMS``) over ``index``, prepared; the hybrid shares them."""
    dense = bm25 = hybrid = None
    if set(systems) - {"bm25"}:
        dense = TwoTowerRetriever(model, "two-tower", model_path, use_faiss=_use_faiss(index, options.search),
                                  nprobe=options.nprobe, ef_search=options.ef_search, chunk_rows=options.chunk_rows,
                                  refine=options.refine)
    if {"bm25", "hybrid", "hybrid-prf"} & set(systems):
        bm25 = bm25_for_index(index, options.bm25_k1, options.bm25_b, options.bm25_stemmer)
    if {"hybrid", "hybrid-prf"} & set(systems):
        hybrid = HybridRetriever(dense, bm25, options.fusion, options.fusion_weight, options.rrf_k,
                                 options.fusion_depth, name="hybrid")
    chosen: list[Retriever] = []
    for system in systems:
        if system.endswith("-prf"):
            source = hybrid if system == "hybrid-prf" else dense
            chosen.append(FeedbackRetriever(dense, source, options.feedback_depth, options.feedback_weight, system))
        else:
            chosen.append({"two-tower": dense, "bm25": bm25, "hybrid": hybrid}[system])
    for retriever in chosen:
        retriever.prepare(index)
    return chosen


def known_words(searcher: Retriever, query: str) -> bool:
    """Whether a dense searcher's model knows any word of ``query``: a query of unknown words alone is one
    vector (the <unk> word's) for every such query, so its hits would say nothing about the query. A hybrid
    is asked about its dense half: fused with that ranking, its hits would say as little."""
    model = getattr(searcher, "model", None) or getattr(getattr(searcher, "dense", None), "model", None)
    if model is None:
        return True
    ids = model.vocab.encode(query)
    return any(token != UNK_ID for token in ids)


def snippet(text: str, width: int) -> str:
    """The start of ``text`` on one line, cut at ``width`` characters (0: all of it)."""
    text = " ".join(text.split())
    if width and len(text) > width:
        return text[:max(width - 1, 0)].rstrip() + "…"
    return text


@dataclass
class Hit:
    id: str
    score: float
    text: str


@dataclass
class SearchResult:
    query: str
    system: str
    took_ms: float
    hits: list[Hit] = field(default_factory=list)
    note: str | None = None  # why there are no hits, when the system could not rank the query at all

    def to_json(self) -> dict:
        result = {"query": self.query, "system": self.system, "took_ms": round(self.took_ms, 3),
                  "hits": [{"id": h.id, "score": h.score, "text": h.text} for h in self.hits]}
        return result | ({"note": self.note} if self.note else {})


UNKNOWN_WORDS_NOTE = "no known words in the query: the model has never seen any of them"


class SearchSession:
    """Prepared retrievers over one index, answering one query at a time from any thread.

    The retrievers are ``make_retrievers``'s, the ones ``search/search.py query`` uses, so a query gets the
    same ranking here as on the command line. The index answers from the files it opened, whatever happens to
    its folder afterwards (``index.PassageIndex``), and reads them with ``os.pread``, which needs no lock.
    Searches are serialised by a lock all the same: the retrievers (bm25s, faiss, torch) are not shown to be safe
    to run from several threads at once; the index's reads are not why.
    """

    def __init__(self, index: PassageIndex, retrievers: list[Retriever]):
        self.index = index
        self.retrievers = {retriever.name: retriever for retriever in retrievers}
        self._lock = threading.Lock()

    @property
    def systems(self) -> list[str]:
        return list(self.retrievers)

    def search(self, query: str, system: str, k: int) -> SearchResult:
        retriever = self.retrievers[system]
        with self._lock:
            started = time.perf_counter()
            if not known_words(retriever, query):
                return SearchResult(query, system, (time.perf_counter() - started) * 1000, [], UNKNOWN_WORDS_NOTE)
            hits = [Hit(self.index.pid(position), score, self.index.text(position))
                    for position, score in retriever.search([query], k)[0]]
            return SearchResult(query, system, (time.perf_counter() - started) * 1000, hits)

    def close(self) -> None:
        self.index.close()
