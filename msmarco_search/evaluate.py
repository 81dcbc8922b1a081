"""Evaluation: rank passages with several systems side by side and score the runs with ``ir_measures``.

Systems: two-tower models, BM25 (``bm25s``), zero-shot CBOW (mean and IDF-weighted mean of the word vectors)
and hybrids of a two-tower model with BM25 (reciprocal rank fusion, and a linear mix of min-max normalised
scores). Each system yields a *run*, ``{query id: {passage id: score}}``, the form TREC tools read; the
metrics are computed from runs and qrels by ``ir_measures``, never by hand.

Tasks:

- ``rerank``: order each query's candidate passages (the row layout's ``passages``, or a ``top1000`` file).
  A ``random`` row (the mean over shuffled orders) shows what ordering by chance gives.
- ``full``: rank every passage of a pool (a ``collection.tsv``, or all passages of the evaluated rows pooled).

Graded qrels are read as such: nDCG@10 uses the grades; MRR@10, Recall@k and MAP count a passage as
relevant when its grade is at least the threshold (2 for TREC DL, 1 for the binary ``is_selected``).
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .errors import PipelineError
from .report import info, progress
from .search import linear_fusion, reciprocal_rank_fusion, write_trec_run
from .sources import QueryRecord
from .vocab import PAD_ID, UNK_ID, Vocabulary, inverse_document_frequency

Qrels = dict[str, dict[str, int]]
Run = dict[str, dict[str, float]]

METRICS = ("nDCG@10", "MRR@10", "R@100", "R@1000", "MAP")
RERANK_METRICS = ("MRR@10", "nDCG@10", "MAP")
HYBRID_METHODS = ("rrf", "linear")


# ------------------------------------------------------------------------------------------------ metrics


def measures(threshold: int = 2) -> dict[str, Any]:
    """The ``ir_measures`` measure behind each reported name; ``threshold`` = lowest relevant grade."""
    from ir_measures import AP, RR, R, nDCG

    return {"nDCG@10": nDCG @ 10, "MRR@10": RR(rel=threshold) @ 10, "R@100": R(rel=threshold) @ 100,
            "R@1000": R(rel=threshold) @ 1000, "MAP": AP(rel=threshold)}


def _ir_inputs(qrels: Qrels, run: Run) -> tuple[list[Any], list[Any]]:
    from ir_measures import Qrel, ScoredDoc

    qrel_list = [Qrel(qid, pid, int(grade)) for qid, judged in qrels.items() for pid, grade in judged.items()]
    docs = [ScoredDoc(qid, pid, float(score)) for qid, scored in run.items() for pid, score in scored.items()]
    return qrel_list, docs


def score_run(qrels: Qrels, run: Run, threshold: int = 2, metrics: Sequence[str] = METRICS) -> dict[str, float]:
    """Mean of each metric over the judged queries of ``run`` (``ir_measures.calc_aggregate``)."""
    import ir_measures

    chosen = _chosen(metrics, threshold)
    qrel_list, docs = _ir_inputs(qrels, run)
    if not docs:
        return {name: 0.0 for name in chosen}
    result = ir_measures.calc_aggregate(list(chosen.values()), qrel_list, docs)
    return {name: float(result.get(measure, 0.0)) for name, measure in chosen.items()}


def score_run_per_query(qrels: Qrels, run: Run, threshold: int = 2,
                        metrics: Sequence[str] = METRICS) -> dict[str, dict[str, float]]:
    """``{metric: {query id: value}}`` (``ir_measures.iter_calc``), for significance tests and error analysis."""
    import ir_measures

    chosen = _chosen(metrics, threshold)
    names = {measure: name for name, measure in chosen.items()}
    qrel_list, docs = _ir_inputs(qrels, run)
    values: dict[str, dict[str, float]] = {name: {} for name in chosen}
    for metric in ir_measures.iter_calc(list(chosen.values()), qrel_list, docs):
        values[names[metric.measure]][metric.query_id] = float(metric.value)
    return values


def _chosen(metrics: Sequence[str], threshold: int) -> dict[str, Any]:
    available = measures(threshold)
    unknown = [m for m in metrics if m not in available]
    if unknown:
        raise PipelineError(f"unknown metric(s) {', '.join(unknown)} (use {', '.join(available)})")
    return {name: available[name] for name in metrics}


# ------------------------------------------------------------------------------------------------ fusion


def _ordered(scores: Mapping[str, float]) -> list[str]:
    # ties broken by passage id, so a run ranks the same way in every tool
    return sorted(scores, key=lambda pid: (-scores[pid], pid))


def fuse_runs(first: Run, second: Run, method: str = "rrf", weight: float = 0.5, rrf_k: int = 60,
              depth: int | None = None) -> Run:
    """A hybrid run from two runs, query by query (``method`` ``rrf`` or ``linear``; see above)."""
    if method not in HYBRID_METHODS:
        raise PipelineError(f"unknown fusion method {method!r} (use {', '.join(HYBRID_METHODS)})")
    fused: Run = {}
    for qid in first.keys() | second.keys():
        a, b = first.get(qid, {}), second.get(qid, {})
        fused_list = (reciprocal_rank_fusion([a, b], k=rrf_k) if method == "rrf"
                      else linear_fusion([a, b], weights=[weight, 1.0 - weight]))
        scores = dict(fused_list)
        fused[qid] = _top(scores, depth)
    return fused


def _top(scores: Mapping[str, float], depth: int | None) -> dict[str, float]:
    ordered = _ordered(scores)
    return {pid: float(scores[pid]) for pid in (ordered if depth is None else ordered[:depth])}


# ------------------------------------------------------------------------------------------------ systems


@dataclass
class PassagePool:
    """The passages a task ranks; candidates and runs refer to them by position and id."""

    ids: list[str]
    texts: list[str]
    position: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.texts):
            raise ValueError("ids and texts differ in length")
        self.position = {pid: i for i, pid in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)


class System(ABC):
    """A ranking system over a :class:`PassagePool` (``prepare`` indexes or encodes it once)."""

    name: str

    @abstractmethod
    def prepare(self, pool: PassagePool) -> None: ...

    @abstractmethod
    def search(self, queries: Sequence[str], k: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per query: the top-``k`` pool positions and their scores, best first."""

    @abstractmethod
    def rerank(self, queries: Sequence[str], candidates: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per query: the score of each of its candidates (pool positions)."""

    def settings(self) -> dict[str, Any]:
        return {}


class BM25System(System):
    def __init__(self, k1: float = 0.9, b: float = 0.4, name: str = "bm25"):
        self.name, self.k1, self.b = name, k1, b
        self.index = None

    def prepare(self, pool: PassagePool) -> None:
        from .bm25 import BM25Index

        self.index = BM25Index(pool.ids, pool.texts, k1=self.k1, b=self.b)

    def search(self, queries: Sequence[str], k: int) -> list[tuple[np.ndarray, np.ndarray]]:
        positions, scores = self.index.search(list(queries), k)
        return list(zip(positions, scores, strict=True))

    def rerank(self, queries: Sequence[str], candidates: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [self.index.scores(q)[c] for q, c in zip(queries, candidates, strict=True)]

    def settings(self) -> dict[str, Any]:
        return {"k1": self.k1, "b": self.b}


class DenseSystem(System):
    """Any encoder of queries and passages into vectors; relevance is their dot product."""

    def __init__(self, name: str, batch_size: int = 256):
        self.name, self.batch_size = name, batch_size
        self.passages: torch.Tensor | None = None

    @abstractmethod
    def encode(self, texts: Sequence[str], side: str) -> torch.Tensor: ...

    def fit(self, pool: PassagePool) -> None:
        """Collection statistics an encoder needs before encoding (IDF); nothing by default."""

    def prepare(self, pool: PassagePool) -> None:
        self.fit(pool)
        self.passages = self.encode(pool.texts, "passage")

    def search(self, queries: Sequence[str], k: int) -> list[tuple[np.ndarray, np.ndarray]]:
        vectors = self.encode(queries, "query")
        k = min(k, len(self.passages))
        results = []
        for start in range(0, len(vectors), self.batch_size):
            scores = vectors[start:start + self.batch_size] @ self.passages.T
            top = torch.topk(scores, k, dim=1)
            results += list(zip(top.indices.numpy(), top.values.numpy(), strict=True))
        return results

    def rerank(self, queries: Sequence[str], candidates: Sequence[np.ndarray]) -> list[np.ndarray]:
        vectors = self.encode(queries, "query")
        return [(self.passages[torch.as_tensor(c, dtype=torch.long)] @ v).numpy()
                for v, c in zip(vectors, candidates, strict=True)]


class ModelSystem(DenseSystem):
    """A two-tower model in memory (validation during training uses it on the model being trained)."""

    def __init__(self, model: Any, name: str = "two-tower"):
        super().__init__(name)
        self.model = model

    def encode(self, texts: Sequence[str], side: str) -> torch.Tensor:
        return self.model.encode(list(texts), side)


class TwoTowerSystem(ModelSystem):
    """A saved two-tower model (``msmarco_search.load_model``)."""

    def __init__(self, path: str | Path, name: str = "two-tower", device: torch.device | str = "cpu"):
        from .model import load_model

        model = load_model(path, device)
        self.metadata = model.metadata
        super().__init__(model, name)
        self.path = Path(path)

    def settings(self) -> dict[str, Any]:
        return {"model": str(self.path), "model_id": self.metadata.get("model_id"),
                "config": self.metadata.get("config")}


class CbowSystem(DenseSystem):
    """Zero-shot CBOW: the (IDF-weighted) mean of a text's word vectors; unknown words are left out.

    IDF comes from the pool being ranked, BM25's form ``log(1 + (N - df + 0.5) / (df + 0.5))``, which stays
    positive, so frequent words count little instead of pulling every text toward the same direction.
    """

    def __init__(self, matrix: torch.Tensor, vocab: Vocabulary, weighting: str = "mean", name: str | None = None,
                 embeddings_path: str | Path | None = None):
        if weighting not in ("mean", "idf"):
            raise ValueError(f"weighting must be 'mean' or 'idf', not {weighting!r}")
        super().__init__(name or f"cbow-{weighting}")
        self.matrix, self.vocab, self.weighting = matrix.float(), vocab, weighting
        self.embeddings_path = embeddings_path
        self.weights = torch.ones(len(vocab))
        self.weights[[PAD_ID, UNK_ID]] = 0.0

    def fit(self, pool: PassagePool) -> None:
        if self.weighting != "idf":
            return
        self.weights = torch.from_numpy(inverse_document_frequency(self.vocab, pool.texts))
        self.weights[[PAD_ID, UNK_ID]] = 0.0

    def encode(self, texts: Sequence[str], side: str) -> torch.Tensor:
        arrays = self.vocab.encode_many(texts, desc=f"Encoding {side}s ({self.name})")
        ids = torch.from_numpy(np.asarray(arrays.ids, dtype=np.int64))
        offsets = torch.from_numpy(np.asarray(arrays.offsets[:-1], dtype=np.int64))
        summed = F.embedding_bag(ids, self.matrix, offsets, mode="sum", per_sample_weights=self.weights[ids])
        return F.normalize(summed, dim=-1)

    def settings(self) -> dict[str, Any]:
        return {"embeddings": None if self.embeddings_path is None else str(self.embeddings_path),
                "weighting": self.weighting}


class RandomSystem(System):
    """Random scores: the chance baseline of re-ranking (each seed is one shuffled order)."""

    def __init__(self, seed: int = 0, name: str = "random"):
        self.name, self.seed = name, seed
        self.size = 0

    def prepare(self, pool: PassagePool) -> None:
        self.size = len(pool)

    def search(self, queries: Sequence[str], k: int) -> list[tuple[np.ndarray, np.ndarray]]:
        rng = np.random.default_rng(self.seed)
        results = []
        for _ in queries:
            scores = rng.random(self.size).astype(np.float32)
            top = np.argsort(-scores)[:k]
            results.append((top, scores[top]))
        return results

    def rerank(self, queries: Sequence[str], candidates: Sequence[np.ndarray]) -> list[np.ndarray]:
        rng = np.random.default_rng(self.seed)
        return [rng.random(len(c)).astype(np.float32) for c in candidates]


# ------------------------------------------------------------------------------------------------ tasks


@dataclass
class Task:
    """What one evaluation ranks: a pool, queries, qrels and (for re-ranking) each query's candidates."""

    name: str
    pool: PassagePool
    queries: dict[str, str]
    qrels: Qrels
    threshold: int
    candidates: dict[str, list[str]] | None = None

    @property
    def kind(self) -> str:
        return "full" if self.candidates is None else "rerank"

    def metrics(self) -> tuple[str, ...]:
        return METRICS if self.candidates is None else RERANK_METRICS


def _run_of(system: System, task: Task, depth: int) -> Run:
    qids = list(task.queries)
    texts = [task.queries[q] for q in qids]
    run: Run = {}
    if task.candidates is None:
        for qid, (positions, scores) in zip(qids, system.search(texts, depth), strict=True):
            run[qid] = {task.pool.ids[int(p)]: float(s) for p, s in zip(positions, scores, strict=True)}
        return run
    candidates = [np.asarray([task.pool.position[pid] for pid in task.candidates[qid]], dtype=np.int64)
                  for qid in qids]
    for qid, cands, scores in zip(qids, candidates, system.rerank(texts, candidates), strict=True):
        run[qid] = {task.pool.ids[int(p)]: float(s) for p, s in zip(cands, scores, strict=True)}
    return run


@dataclass
class HybridSpec:
    method: str  # rrf | linear
    dense: str  # name of the two-tower system
    sparse: str = "bm25"
    weight: float = 0.5  # linear: weight of the dense side
    rrf_k: int = 60

    @property
    def name(self) -> str:
        suffix = self.dense[len("two-tower"):] if self.dense.startswith("two-tower") else f"[{self.dense}]"
        return f"hybrid-{self.method}{suffix}"

    def settings(self) -> dict[str, Any]:
        return {"method": self.method, "dense": self.dense, "sparse": self.sparse,
                **({"weight": self.weight} if self.method == "linear" else {"rrf_k": self.rrf_k})}


@dataclass
class TaskResult:
    task: Task
    runs: dict[str, Run]
    metrics: dict[str, dict[str, float]]
    per_query: dict[str, dict[str, dict[str, float]]]
    seconds: dict[str, float]


def evaluate_task(task: Task, systems: Sequence[System], hybrids: Sequence[HybridSpec] = (), depth: int = 1000,
                  random_seeds: int = 10, verbose: bool = True) -> TaskResult:
    """Run every system (then the hybrids) on ``task`` and score each run with ``ir_measures``."""
    import time

    runs: dict[str, Run] = {}
    seconds: dict[str, float] = {}
    for system in systems:
        started = time.perf_counter()
        if verbose:
            info(f"  {task.name}: {system.name} over {len(task.pool):,} passages, {len(task.queries):,} queries")
        system.prepare(task.pool)
        runs[system.name] = _run_of(system, task, depth)
        seconds[system.name] = time.perf_counter() - started
    for hybrid in hybrids:
        if hybrid.dense not in runs or hybrid.sparse not in runs:
            raise PipelineError(f"the hybrid {hybrid.name} needs the systems {hybrid.dense} and {hybrid.sparse}")
        started = time.perf_counter()
        runs[hybrid.name] = fuse_runs(runs[hybrid.dense], runs[hybrid.sparse], hybrid.method, hybrid.weight,
                                      hybrid.rrf_k, depth)
        seconds[hybrid.name] = time.perf_counter() - started + seconds[hybrid.dense] + seconds[hybrid.sparse]
    names = task.metrics()
    metrics = {name: score_run(task.qrels, run, task.threshold, names) for name, run in runs.items()}
    per_query = {name: score_run_per_query(task.qrels, run, task.threshold, names) for name, run in runs.items()}
    if task.candidates is not None and random_seeds > 0:
        # the chance baseline: each metric averaged over several shuffled orders of the candidates
        draws = []
        for seed in range(random_seeds):
            random_system = RandomSystem(seed)
            random_system.prepare(task.pool)
            draws.append(score_run(task.qrels, _run_of(random_system, task, depth), task.threshold, names))
        metrics["random"] = {name: float(np.mean([d[name] for d in draws])) for name in names}
    return TaskResult(task, runs, metrics, per_query, seconds)


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
    for record in records:
        if not record.positives or record.query_id in queries:
            continue  # a query without a selected passage cannot be scored
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
    if not queries:
        raise PipelineError("no query with a selected (relevant) passage was read, so nothing can be scored")
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
    from .sources import read_candidates, read_collection, read_qrels, read_queries

    qrels = read_qrels(qrels_file)
    queries = {qid: text for qid, text in read_queries(queries_file).items() if qid in qrels}
    if not queries:
        raise PipelineError(f"no query of {queries_file} has a judgment in this qrels file", qrels_file)
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
                pool.position[pid] = len(pool.ids)
                pool.ids.append(pid)
                pool.texts.append(passage)
            candidates[qid].append(pid)
        empty = [qid for qid, pids in candidates.items() if not pids]
        if len(empty) == len(candidates):
            raise PipelineError("no evaluated query has a candidate in this file", candidates_file)
        for qid in empty:
            del candidates[qid], queries[qid]
    judged = {qid: qrels[qid] for qid in queries}
    return Task("rerank" if candidates is not None else "full", pool, queries, judged, threshold, candidates)


# ------------------------------------------------------------------------------------------------ output


def write_run(run: Run, path: str | Path, tag: str) -> Path:
    """A TREC run file of ``run``: queries in natural order, best passage first (ties by passage id)."""
    results = [(qid, [(pid, run[qid][pid]) for pid in _ordered(run[qid])]) for qid in sorted(run, key=_natural)]
    return write_trec_run(path, results, tag)


def _natural(text: str) -> tuple[int, int | str]:
    return (0, int(text)) if text.isdigit() else (1, text)


def run_file_name(task: str, system: str) -> str:
    return f"run.{task}.{re.sub(r'[^A-Za-z0-9_.-]+', '_', system)}.trec"


def format_table(metrics: Mapping[str, Mapping[str, float]], columns: Sequence[str],
                 baseline: str | None = "bm25") -> str:
    """Systems as rows, metrics as columns; a signed difference to the baseline row where there is one."""
    width = max([len("system"), *map(len, metrics)])
    lines = ["system".ljust(width) + "".join(f"{c:>10}" for c in columns)]
    lines.append("-" * len(lines[0]))
    for name, values in metrics.items():
        lines.append(name.ljust(width) + "".join(f"{values.get(c, math.nan):>10.4f}" for c in columns))
    if baseline in metrics and len(metrics) > 1:
        lines.append("")
        lines.append(f"difference to {baseline}:")
        for name, values in metrics.items():
            if name != baseline:
                lines.append(name.ljust(width) + "".join(
                    f"{values.get(c, math.nan) - metrics[baseline].get(c, math.nan):>+10.4f}" for c in columns))
    return "\n".join(lines)
