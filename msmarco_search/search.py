"""Searching a built index: the retrievers a search session uses, and how hits are shown.

The retrievers themselves are ``msmarco_search.retrieval``'s (the ones evaluation scores); the index is
``msmarco_search.index``'s. This module only picks and configures them for an index and a model.
"""

from __future__ import annotations

from dataclasses import dataclass

from .index import PassageIndex, faiss_available
from .report import warn
from .retrieval import (
    DEFAULT_FUSION_DEPTH,
    DEFAULT_REFINE,
    HybridRetriever,
    Retriever,
    TwoTowerRetriever,
    bm25_for_index,
)
from .runs import DEFAULT_FUSION_WEIGHT, DEFAULT_RRF_K

SYSTEMS = ("two-tower", "bm25", "hybrid")
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
    dense = bm25 = None
    if {"two-tower", "hybrid"} & set(systems):
        dense = TwoTowerRetriever(model, "two-tower", model_path, use_faiss=_use_faiss(index, options.search),
                                  nprobe=options.nprobe, ef_search=options.ef_search, chunk_rows=options.chunk_rows,
                                  refine=options.refine)
    if {"bm25", "hybrid"} & set(systems):
        bm25 = bm25_for_index(index, options.bm25_k1, options.bm25_b, options.bm25_stemmer)
    chosen: list[Retriever] = []
    for system in systems:
        if system == "hybrid":
            chosen.append(HybridRetriever(dense, bm25, options.fusion, options.fusion_weight, options.rrf_k,
                                          options.fusion_depth, name="hybrid"))
        else:
            chosen.append(dense if system == "two-tower" else bm25)
    for retriever in chosen:
        retriever.prepare(index)
    return chosen


def snippet(text: str, width: int) -> str:
    """The start of ``text`` on one line, cut at ``width`` characters (0: all of it)."""
    text = " ".join(text.split())
    if width and len(text) > width:
        return text[:max(width - 1, 0)].rstrip() + "…"
    return text
