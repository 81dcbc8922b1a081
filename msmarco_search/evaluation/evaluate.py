"""Evaluation: rank passages with several retrievers side by side and score the runs with ``ir_measures``.

The retrievers are ``msmarco_search.search``'s, the same classes search uses; fusion is
``msmarco_search.search.fusion`` and run files ``msmarco_search.io.runs``; the metrics
``msmarco_search.evaluation.metrics``. Each retriever yields a *run*, ``{query id: {passage id: score}}``, the form
TREC tools read.

Tasks:

- ``rerank``: order each query's candidate passages (the row layout's ``passages``, or a ``top1000`` file).
  A ``random`` row (the mean over shuffled orders) shows what ordering by chance gives.
- ``full``: rank every passage of a pool (a ``collection.tsv``, or all passages of the evaluated rows pooled).

Graded qrels are read as such: nDCG@10 uses the grades; MRR@10, Recall@k and MAP count a passage as
relevant when its grade is at least the threshold (2 for TREC DL, 1 for the binary ``is_selected``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from msmarco_search.core.errors import PipelineError
from msmarco_search.core.report import info, progress
from msmarco_search.core.text import tokenize
from msmarco_search.data.records import QueryRecord
from msmarco_search.evaluation.metrics import (
    DEFAULT_RUN_DEPTH,
    FIRST_STAGE,
    Qrels,
    score_run,
    score_run_per_query,
    seed_summary,
    significance,
)
from msmarco_search.evaluation.tasks import Task, run_of
from msmarco_search.io.runs import Run, check_trec_ids
from msmarco_search.search.retrieval import PassagePool, RandomRetriever, Retriever

# ------------------------------------------------------------------------------------------------ tasks


def hybrid_name(method: str, dense: str) -> str:
    """``hybrid-rrf`` for the two-tower, ``hybrid-rrf[NAME]`` for ``two-tower[NAME]``."""
    suffix = dense[len("two-tower"):] if dense.startswith("two-tower") else f"[{dense}]"
    return f"hybrid-{method}{suffix}"


@dataclass
class TaskResult:
    task: Task
    runs: dict[str, Run]
    metrics: dict[str, dict[str, float]]
    per_query: dict[str, dict[str, dict[str, float]]]
    seconds: dict[str, float]
    baseline: str | None = None
    significance: dict[str, dict[str, dict]] = field(default_factory=dict)


def _random_baseline(task: Task, seeds: int, depth: int) -> dict[str, float]:
    """Each metric averaged over several shuffled orders of the candidates."""
    names = task.metrics()
    draws = [score_run(task.qrels, run_of(RandomRetriever(seed), task, depth), task.threshold, names)
             for seed in range(seeds)]
    return {name: float(np.mean([d[name] for d in draws])) for name in names}


def first_stage_run(task: Task) -> Run:
    """The candidates as given: each query's candidates scored by their given order (first = best)."""
    return {qid: {pid: float(len(task.candidates[qid]) - rank) for rank, pid in enumerate(task.candidates[qid])}
            for qid in task.queries}


def default_baseline(task: Task) -> str:
    """What every row is tested against: the first stage when re-ranking, BM25 in full ranking."""
    return FIRST_STAGE if task.candidates is not None else "bm25"


def evaluate_task(task: Task, retrievers: Sequence[Retriever], depth: int = DEFAULT_RUN_DEPTH,
                  random_seeds: int = 10, verbose: bool = True, baseline: str | None = None) -> TaskResult:
    """Run every retriever on ``task`` (keeping ``depth`` passages per query), score each run, and test each
    against the ``baseline`` row (default :func:`default_baseline`) with paired significance tests."""
    runs: dict[str, Run] = {}
    seconds: dict[str, float] = {}
    if task.candidates is not None:
        runs[FIRST_STAGE], seconds[FIRST_STAGE] = first_stage_run(task), 0.0
    for retriever in retrievers:
        if retriever.name in runs:
            raise PipelineError(f"two systems are both named {retriever.name}")
        started = time.perf_counter()
        if verbose:
            info(f"  {task.name}: {retriever.name} over {len(task.pool):,} passages, {len(task.queries):,} queries")
        runs[retriever.name] = run_of(retriever, task, depth)
        seconds[retriever.name] = time.perf_counter() - started
    names = task.metrics()
    metrics = {name: score_run(task.qrels, run, task.threshold, names) for name, run in runs.items()}
    per_query = {name: score_run_per_query(task.qrels, run, task.threshold, names) for name, run in runs.items()}
    if task.candidates is not None and random_seeds > 0:
        metrics["random"] = _random_baseline(task, random_seeds, depth)
    baseline = baseline or default_baseline(task)
    if baseline not in runs:
        baseline = None if baseline == default_baseline(task) else baseline
        if baseline is not None:
            raise PipelineError(f"the baseline {baseline} is not one of the systems ({', '.join(runs)})")
    tests = significance(per_query, baseline, names) if baseline is not None else {}
    return TaskResult(task, runs, metrics, per_query, seconds, baseline, tests)


def rows_tasks(records: Iterable[QueryRecord], full: bool = True, rerank: bool = True) -> list[Task]:
    """Tasks from row-layout records: re-rank each query's passages, and full ranking over them all pooled.

    Relevance is binary (``is_selected``), so the threshold is 1.
    """
    ids: list[str] = []
    texts: list[str] = []
    seen: set[str] = set()
    queries: dict[str, str] = {}
    qrels: Qrels = {}
    candidates: dict[str, list[str]] = {}
    empty = 0
    for record in records:
        if not record.positives or record.query_id in queries:
            continue  # a query without a selected passage cannot be scored
        if not tokenize(record.query):  # nor one without a word: every system's hits would be arbitrary
            empty += 1
            continue
        queries[record.query_id] = record.query
        qrels[record.query_id] = {p.pid: 1 for p in record.positives}
        own: list[str] = []
        for passage in record.passages:
            if passage.pid not in seen:
                seen.add(passage.pid)
                ids.append(passage.pid)
                texts.append(passage.text)
            if passage.pid not in own:
                own.append(passage.pid)
        candidates[record.query_id] = own
    if empty:
        info(f"skipped {empty:,} empty {'query' if empty == 1 else 'queries'} (no word to search for)")
    if not queries:
        raise PipelineError("no query with a selected (relevant) passage and a word to search for was read, so "
                            "nothing can be scored")
    pool = PassagePool(ids, texts)
    tasks = []
    if rerank:
        tasks.append(Task("rerank", pool, queries, qrels, 1, candidates))
    if full:
        tasks.append(Task("full", pool, queries, qrels, 1))
    return tasks


def tsv_task(collection: Path, queries_file: Path, qrels_file: Path, candidates_file: Path | None = None,
             threshold: int = 2, max_queries: int | None = None) -> Task:
    """A task from the official files: full ranking over ``collection``, or re-ranking ``candidates_file``.

    Evaluated queries: those in the queries file with at least one judgment in the qrels.
    """
    from msmarco_search.io.msmarco_files import (
        queries_with_words,
        read_candidates,
        read_collection,
        read_qrels,
        read_queries,
    )

    qrels = read_qrels(qrels_file)
    queries = {qid: text for qid, text in read_queries(queries_file).items() if qid in qrels}
    if not queries:
        raise PipelineError(f"no query of {queries_file} has a judgment in this qrels file", qrels_file)
    queries = queries_with_words(queries, queries_file)
    if max_queries is not None:
        queries = dict(list(queries.items())[:max_queries])
    ids: list[str] = []
    texts: list[str] = []
    for pid, text in progress(read_collection(collection), desc="Reading collection", unit="passage"):
        ids.append(pid)
        texts.append(text)
    pool = PassagePool(ids, texts)
    if len(pool.position) != len(ids):
        raise PipelineError("passage ids repeat in the collection", collection)
    candidates = None
    if candidates_file is not None:
        candidates = {qid: [] for qid in queries}
        for qid, pid, _, passage in read_candidates(candidates_file):
            if qid not in candidates:
                continue
            if pid not in pool.position:  # a candidate the collection lacks: rank it from the file's text
                pool.add(pid, passage)
            candidates[qid].append(pid)
        empty = [qid for qid, pids in candidates.items() if not pids]
        if len(empty) == len(candidates):
            raise PipelineError("no evaluated query has a candidate in this file", candidates_file)
        for qid in empty:
            del candidates[qid], queries[qid]
    # before the work: the run files are written after every system has ranked every query
    check_trec_ids(pool.ids, "passage", collection if candidates_file is None else f"{collection} or {candidates_file}")
    judged = {qid: qrels[qid] for qid in queries}
    return Task("rerank" if candidates is not None else "full", pool, queries, judged, threshold, candidates)


# ------------------------------------------------------------------------------------------------ output


def format_table(metrics: Mapping[str, Mapping[str, float]], columns: Sequence[str],
                 baseline: str | None = "bm25", tests: Mapping[str, Mapping[str, Mapping]] | None = None) -> str:
    """Systems as rows, metrics as columns; then each row's signed difference to the baseline row, with the
    paired t-test's p-value when ``tests`` (``metrics.significance``) has it."""
    width = max([len("system"), *map(len, metrics)])
    lines = ["system".ljust(width) + "".join(f"{c:>10}" for c in columns)]
    lines.append("-" * len(lines[0]))
    for name, values in metrics.items():
        lines.append(name.ljust(width) + "".join(f"{values.get(c, math.nan):>10.4f}" for c in columns))
    if baseline not in metrics or len(metrics) < 2:
        return "\n".join(lines)
    tests = tests or {}
    lines += ["", f"difference to {baseline}" + (" (p: paired t-test, two-sided; Wilcoxon p in evaluation.json):"
                                                  if tests else ":")]
    for name, values in metrics.items():
        if name == baseline:
            continue
        cells = []
        for column in columns:
            cell = f"{values.get(column, math.nan) - metrics[baseline].get(column, math.nan):+.4f}"
            test = tests.get(name, {}).get(column)
            cells.append(f"{cell} p {test['t_test_p']:.3f}".rjust(18) if test else cell.rjust(18 if tests else 10))
        lines.append(name.ljust(width) + "".join(cells))
    return "\n".join(lines + format_seed_summary(seed_summary(metrics, columns), columns))


def format_seed_summary(summary: Mapping[str, Mapping], columns: Sequence[str]) -> list[str]:
    """The mean (min-max) over seeds of each setting trained with several seeds (``metrics.seed_summary``)."""
    if not summary:
        return []
    width = max(len(name) for name in summary) + 12
    lines = ["", "mean over seeds (min-max), for models named NAME-s<SEED>:"]
    for name, values in summary.items():
        cells = [f"{values[c]['mean']:.4f} ({values[c]['min']:.3f}-{values[c]['max']:.3f})".rjust(24)
                 for c in columns if c in values]
        lines.append(f"{name} x{values['seeds']}".ljust(width) + "".join(cells))
    return lines
