"""Searching a built index: the retrievers a search session uses, a session that answers queries from any number
of threads at once (the search page's), and how hits are shown.

The retrievers themselves are ``retrieval``'s, ``dense``'s and ``hybrid``'s (the ones evaluation scores); the index is
``msmarco_search.index``'s. This module only picks and configures them for an index and a model.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field

import torch

from msmarco_search.core.report import warn
from msmarco_search.core.text import repair
from msmarco_search.data.vocab import UNK_ID
from msmarco_search.index.faiss import faiss_available
from msmarco_search.index.load import PassageIndex
from msmarco_search.search.dense import TwoTowerRetriever
from msmarco_search.search.hybrid import FeedbackRetriever, HybridRetriever
from msmarco_search.search.options import SearchOptions
from msmarco_search.search.retrieval import Retriever, bm25_for_index


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


def _model_of(searcher: Retriever):
    """The two-tower model a dense searcher (or a hybrid's or feedback's dense half) encodes with, or None."""
    return getattr(searcher, "model", None) or getattr(getattr(searcher, "dense", None), "model", None)


def known_words(searcher: Retriever, query: str) -> bool:
    """Whether a dense searcher's model knows any word of ``query``: a query of unknown words alone is one
    vector (the <unk> word's) for every such query, so its hits would say nothing about the query. A hybrid
    is asked about its dense half: fused with that ranking, its hits would say as little."""
    model = _model_of(searcher)
    if model is None:
        return True
    ids = model.vocab.encode(query)
    return any(token != UNK_ID for token in ids)


def snippet(text: str, width: int) -> str:
    """The start of ``text`` on one line, repaired as every shown passage is (``core.text.repair``: MS MARCO v1's
    mojibake undone), cut at ``width`` characters (0: all of it)."""
    text = " ".join(repair(text).split())
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
    """Prepared retrievers over one index, answering queries from any number of threads at once.

    The retrievers are ``make_retrievers``'s, the ones ``search/search.py query`` uses, so a query gets the
    same ranking here as on the command line. Nothing is held while ranking: a search keeps its state in its
    own frames, and what the threads share is read only. The index reads its files with ``os.pread`` (no shared
    file position) and maps of them; the model ranks in eval mode under ``no_grad``, which is per thread; faiss
    gets its search parameters with each search; bm25s reads its arrays; each thread stems with a stemmer of its
    own (``text.load_stemmer``: PyStemmer's may not be called from two threads at once). The index answers from
    the files it opened, whatever happens to its folder afterwards (``load.PassageIndex``).
    """

    def __init__(self, index: PassageIndex, retrievers: list[Retriever], threads: int | None = None):
        """``threads``: the threads each search ranks on (a server running N searches at once gives each its
        share of the cores); None leaves torch's and faiss's settings as they are."""
        self.index = index
        self.retrievers = {retriever.name: retriever for retriever in retrievers}
        self.threads = threads
        self._thread = threading.local()
        if threads is not None:
            torch.set_num_threads(threads)  # the process's: torch gives each new thread this count
        for retriever in retrievers:  # a model in training mode would be switched per search, under other threads
            model = _model_of(retriever)
            if model is not None:
                model.eval()

    @property
    def systems(self) -> list[str]:
        return list(self.retrievers)

    def search(self, query: str, system: str, k: int) -> SearchResult:
        """The top ``k`` hits of ``system`` for ``query``; safe to call from several threads at once."""
        retriever = self.retrievers[system]
        self._set_up_this_thread()
        started = time.perf_counter()
        if not known_words(retriever, query):
            return SearchResult(query, system, (time.perf_counter() - started) * 1000, [], UNKNOWN_WORDS_NOTE)
        # the text shown, in the JSON API as on the page and the command line: repaired (run files hold ids only)
        hits = [Hit(self.index.pid(position), score, repair(self.index.text(position)))
                for position, score in retriever.search([query], k)[0]]
        return SearchResult(query, system, (time.perf_counter() - started) * 1000, hits)

    def _set_up_this_thread(self) -> None:
        # OpenMP's thread count is a setting of each thread (faiss's bundled OpenMP starts a new thread at every
        # core), so each thread that searches sets it once; faiss is imported by then when the index uses it
        if self.threads is not None and not getattr(self._thread, "ready", False):
            faiss = sys.modules.get("faiss")
            if faiss is not None:
                faiss.omp_set_num_threads(self.threads)
            self._thread.ready = True

    def close(self) -> None:
        self.index.close()
