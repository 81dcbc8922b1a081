"""What one evaluation ranks (a ``Task``: a pool, queries, qrels, maybe candidates) and the run a retriever
gives on it. Evaluation and validation during training both use it, so training never imports evaluation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from msmarco_search.evaluation.metrics import METRICS, RERANK_METRICS, Qrels
from msmarco_search.io.runs import Run
from msmarco_search.search.retrieval import PassagePool, Retriever


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



def run_of(retriever: Retriever, task: Task, depth: int) -> Run:
    """The run of ``retriever`` on ``task``: its top ``depth`` per query, or its scores of the candidates."""
    retriever.prepare(task.pool)
    qids = list(task.queries)
    texts = [task.queries[q] for q in qids]
    run: Run = {}
    if task.candidates is None:
        for qid, hits in zip(qids, retriever.search(texts, depth), strict=True):
            run[qid] = {task.pool.pid(p): s for p, s in hits}
        return run
    candidates = [np.asarray([task.pool.position[pid] for pid in task.candidates[qid]], dtype=np.int64)
                  for qid in qids]
    for qid, cands, scores in zip(qids, candidates, retriever.rerank(texts, candidates), strict=True):
        run[qid] = {task.pool.pid(int(p)): float(s) for p, s in zip(cands, scores, strict=True)}
    return run
