"""Fusion of two rankings (reciprocal rank, linear), the one home of it: search, evaluation, the hybrid retriever
and self-training all fuse through here. Every ordering breaks score ties by passage id."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any, TypeVar

from msmarco_search.core.errors import PipelineError
from msmarco_search.io.runs import Run, ordered

DEFAULT_FUSION_DEPTH = 1000


FUSIONS = ("rrf", "linear")
DEFAULT_RRF_K = 60
DEFAULT_FUSION_WEIGHT = 0.5  # the two-tower's share: equal weights

T = TypeVar("T", bound=Hashable)


def reciprocal_rank_fusion(runs: Sequence[Mapping[T, float]], k: int = DEFAULT_RRF_K,
                           weights: Sequence[float] | None = None, limit: int | None = None) -> list[tuple[T, float]]:
    """Reciprocal rank fusion (Cormack et al. 2009): ``score(d) = sum_i w_i / (k + rank_i(d))``.

    Each run maps a document id to its score (higher is better; only the order matters, ties by id).
    Returns ``(id, fused score)`` best first (ties by id), at most ``limit`` of them.
    """
    weights = _check_weights(runs, weights)
    fused: dict[T, float] = {}
    for run, weight in zip(runs, weights, strict=True):
        for rank, doc in enumerate(ordered(run), 1):
            fused[doc] = fused.get(doc, 0.0) + weight / (k + rank)
    return [(doc, fused[doc]) for doc in ordered(fused)[:limit]]


def linear_fusion(runs: Sequence[Mapping[T, float]], weights: Sequence[float] | None = None,
                  limit: int | None = None) -> list[tuple[T, float]]:
    """A weighted sum of each run's min-max-normalised scores (a document missing from a run gets 0 there).

    Normalising puts cosine scores (about -1..1) and BM25 scores (0..tens) on one 0..1 scale first.
    """
    weights = _check_weights(runs, weights)
    fused: dict[T, float] = {}
    for run, weight in zip(runs, weights, strict=True):
        if not run:
            continue
        low, high = min(run.values()), max(run.values())
        spread = high - low
        for doc, score in run.items():
            normalised = (score - low) / spread if spread > 0 else 1.0
            fused[doc] = fused.get(doc, 0.0) + weight * normalised
    return [(doc, fused[doc]) for doc in ordered(fused)[:limit]]


def _check_weights(runs: Sequence[Mapping[Any, float]], weights: Sequence[float] | None) -> Sequence[float]:
    if weights is None:
        return [1.0] * len(runs)
    if len(weights) != len(runs):
        raise ValueError(f"{len(weights)} weights for {len(runs)} runs")
    return weights


def check_fusion(method: str, weight: float) -> None:
    if method not in FUSIONS:
        raise PipelineError(f"unknown fusion {method!r} (use {', '.join(FUSIONS)})")
    if not 0.0 <= weight <= 1.0:
        raise PipelineError(f"the two-tower fusion weight must lie in [0, 1], got {weight}")


def fuse(dense: Mapping[T, float], lexical: Mapping[T, float], method: str = "rrf",
         weight: float = DEFAULT_FUSION_WEIGHT, rrf_k: int = DEFAULT_RRF_K,
         limit: int | None = None) -> list[tuple[T, float]]:
    """One query's hybrid list: ``weight`` is the dense (two-tower) share, the lexical run gets the rest.

    At the default 0.5 both methods weigh the two runs equally (RRF's scores are then half the unweighted
    sum, the same ranking).
    """
    check_fusion(method, weight)
    weights = (weight, 1.0 - weight)
    if method == "rrf":
        return reciprocal_rank_fusion((dense, lexical), k=rrf_k, weights=weights, limit=limit)
    return linear_fusion((dense, lexical), weights=weights, limit=limit)


def fuse_runs(dense: Run, lexical: Run, method: str = "rrf", weight: float = DEFAULT_FUSION_WEIGHT,
              rrf_k: int = DEFAULT_RRF_K, depth: int | None = None) -> Run:
    """:func:`fuse` query by query over two whole runs, keeping the top ``depth`` of each fused list."""
    return {qid: dict(fuse(dense.get(qid, {}), lexical.get(qid, {}), method, weight, rrf_k, depth))
            for qid in dense.keys() | lexical.keys()}
