"""Runs: ``{query id: {passage id: score}}``, their fusion (reciprocal rank, linear) and TREC run files.

The one home of each: search, evaluation and the hybrid retriever all fuse and write runs through here.
Every ordering breaks score ties by passage id, so a run ranks the same way in every tool and every path.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from .errors import PipelineError, first_line
from .fileio import OutputKind, atomic_write

Run = dict[str, dict[str, float]]
FUSIONS = ("rrf", "linear")
DEFAULT_RRF_K = 60
DEFAULT_FUSION_WEIGHT = 0.5  # the two-tower's share: equal weights

T = TypeVar("T", bound=Hashable)


def ordered(scores: Mapping[T, float]) -> list[T]:
    """The ids of ``scores`` best first; equal scores in id order (deterministic across tools)."""
    return sorted(scores, key=lambda doc: (-scores[doc], doc))


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


# ---------------------------------------------------------------------------------------------- TREC files


def write_trec_run(path: str | Path, results: Sequence[tuple[str, Sequence[tuple[str, float]]]],
                   tag: str) -> Path:
    """A TREC run file, ``qid Q0 docid rank score tag`` per line, in the order given (best first per query).

    Scores are written in full (``repr``), so tools that re-sort by score see the same ties as we did.
    """
    tag = "_".join(tag.split()) or "run"
    check_trec_ids((qid for qid, _ in results), "query")
    check_trec_ids((docid for _, hits in results for docid, _ in hits), "passage")

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            for qid, hits in results:
                for rank, (docid, score) in enumerate(hits, 1):
                    handle.write(f"{qid} Q0 {docid} {rank} {float(score)!r} {tag}\n")

    return atomic_write(path, write)


def recognise_trec_run(path: Path) -> str | None:
    """``fileio.OutputKind`` recogniser of a TREC run: its first line is ``qid Q0 docid rank score tag``."""
    with open(path, "rb") as handle:
        head = handle.read(1 << 16)
    first = next((line for line in head.splitlines() if line.strip()), b"")
    columns = first.split()
    if len(columns) == 6 and columns[1] == b"Q0":
        return None
    return "its first line is not 'qid Q0 docid rank score tag'"


TREC_RUN_OUTPUT = OutputKind("TREC run", recognise_trec_run)


def check_trec_ids(ids: Iterable[str], what: str, path: str | Path | None = None) -> None:
    """Refuse an id a TREC run cannot carry: its columns are split at whitespace, so the id ``1 2`` would make
    a line of seven columns that trec_eval and ir_measures misread (it was written so, silently)."""
    for value in ids:
        if not value or len(value.split()) != 1 or value.strip() != value:
            raise PipelineError(f"{what} id {value!r} is empty or holds whitespace, which a TREC run file (columns "
                                "split at whitespace) cannot carry; give ids without spaces", path)


def write_run(run: Run, path: str | Path, tag: str) -> Path:
    """A TREC run file of ``run``: queries in natural order, best passage first (ties by passage id)."""
    results = [(qid, [(pid, run[qid][pid]) for pid in ordered(run[qid])]) for qid in sorted(run, key=natural)]
    return write_trec_run(path, results, tag)


def read_run(path: str | Path) -> Run:
    """A TREC run file as a run (``ir_measures`` reads it); an unreadable file is a one-line error."""
    import ir_measures

    path = Path(path)
    if not path.is_file():
        raise PipelineError("run file not found", path)
    run: Run = {}
    try:
        for doc in ir_measures.read_trec_run(str(path)):
            run.setdefault(doc.query_id, {})[doc.doc_id] = float(doc.score)
    except (ValueError, IndexError, TypeError) as error:
        raise PipelineError(f"not a TREC run file ({first_line(error)})", path) from error
    return run


def natural(text: str) -> tuple[int, int, str]:
    """Sort key: numeric ids by value, then the others as text. The value is compared as digits (length, then
    text), never converted: Python's int() refuses ids of more than 4,300 digits."""
    if text.isascii() and text.isdigit():
        digits = text.lstrip("0")
        return (0, len(digits), digits + "\0" + text)
    return (1, 0, text)


def run_file_name(task: str, system: str) -> str:
    return f"run.{task}.{re.sub(r'[^A-Za-z0-9_.-]+', '_', system)}.trec"
