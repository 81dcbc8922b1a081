"""Flags that search and evaluation share, defined once so both spell and document them the same way."""

from __future__ import annotations

from typing import Any

from ..arguments import bm25_k1, feedback_weight, fraction, positive_int
from ..bm25 import STEMMERS, BM25Settings
from ..retrieval import DEFAULT_FEEDBACK_DEPTH, DEFAULT_FEEDBACK_WEIGHT, DEFAULT_FUSION_DEPTH
from ..runs import DEFAULT_FUSION_WEIGHT, DEFAULT_RRF_K, FUSIONS

DEVICE_HELP = "auto (CUDA, then MPS, then CPU; the default), cpu, cuda, cuda:N, mps"


def add_fusion_arguments(parser: Any, several: bool) -> None:
    """``--fusion`` (one method, or with ``several`` a comma list), ``--fusion-weight``, ``--rrf-k``,
    ``--fusion-depth``: how the hybrid fuses the two-tower with BM25."""
    group = parser.add_argument_group("hybrid (two-tower + BM25)")
    if several:
        group.add_argument("--fusion", default=",".join(FUSIONS),
                           help="comma-separated fusion methods, one hybrid row each: rrf (reciprocal rank "
                                "fusion), linear (min-max-normalised scores) (default rrf,linear)")
    else:
        group.add_argument("--fusion", choices=FUSIONS, default="rrf",
                           help="rrf (reciprocal rank fusion, default) or linear (min-max-normalised scores)")
    group.add_argument("--fusion-weight", type=fraction, default=DEFAULT_FUSION_WEIGHT,
                       help="the two-tower's share, BM25 gets the rest: w/(k + rank) in rrf, w x score in linear "
                            f"({DEFAULT_FUSION_WEIGHT}: equal weights)")
    group.add_argument("--rrf-k", type=positive_int, default=DEFAULT_RRF_K,
                       help=f"rrf: the k in 1 / (k + rank) ({DEFAULT_RRF_K})")
    group.add_argument("--fusion-depth", type=positive_int, default=DEFAULT_FUSION_DEPTH,
                       help=f"candidates of each system that are fused ({DEFAULT_FUSION_DEPTH})")


def add_feedback_arguments(parser: Any) -> None:
    """``--feedback-depth``, ``--feedback-weight``: the pseudo-relevance feedback of the ``-prf`` systems."""
    group = parser.add_argument_group("feedback (the -prf systems: two-tower-prf, hybrid-prf)")
    group.add_argument("--feedback-depth", type=positive_int, default=DEFAULT_FEEDBACK_DEPTH,
                       help="first hits whose passage vectors move the query vector (Rocchio) before the "
                            f"two-tower ranks again ({DEFAULT_FEEDBACK_DEPTH})")
    group.add_argument("--feedback-weight", type=feedback_weight, default=DEFAULT_FEEDBACK_WEIGHT,
                       help="their mean's weight against the query's own vector, 1 "
                            f"({DEFAULT_FEEDBACK_WEIGHT:g})")


def add_bm25_arguments(parser: Any, saved: bool = False) -> None:
    """``--bm25-k1``, ``--bm25-b``, ``--bm25-stemmer``. With ``saved`` (search queries), unset flags mean the
    settings of the BM25 index saved with the search index; a flag that differs from it is refused."""
    d = BM25Settings()
    group = parser.add_argument_group("BM25 (bm25s on the project's tokens)")
    note = " (default: the saved BM25 index's; another value is refused, rebuild the index with it)" if saved else ""
    group.add_argument("--bm25-k1", type=bm25_k1, default=None if saved else d.k1,
                       help=f"BM25 k1{note or f' ({d.k1})'}")
    group.add_argument("--bm25-b", type=fraction, default=None if saved else d.b, help=f"BM25 b{note or f' ({d.b})'}")
    group.add_argument("--bm25-stemmer", choices=STEMMERS, default=None if saved else d.stemmer,
                       help="english: Snowball English stemming of the project's tokens (PyStemmer), the field's "
                            f"BM25 baseline; none: the unstemmed tokens{note or f' ({d.stemmer})'}")
