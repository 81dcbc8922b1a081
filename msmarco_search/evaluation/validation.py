"""Validation during two-tower training: a held-out slice of the triplets' queries, scored as training goes.

The held-out queries' triplets leave the training set. Their positives and negatives form a small pool;
each held-out query ranks the whole pool with the model being trained, and MRR@10 (``ir_measures``, relevant
= the query's positives) is logged after every epoch and, if asked, every N steps. The best state seen is
kept in memory and put back into the model at the end, so the saved model is the best one, not the last.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

import torch

from msmarco_search.core.errors import PipelineError
from msmarco_search.core.report import info
from msmarco_search.data.records import text_id
from msmarco_search.data.triplets import Triplets
from msmarco_search.evaluation.metrics import score_run
from msmarco_search.evaluation.tasks import Task, run_of
from msmarco_search.search.dense import ModelRetriever
from msmarco_search.search.retrieval import PassagePool

DEFAULT_MAX_QUERIES = 2000


PSEUDO_QUERY_PREFIX = "ict:"  # the query ids inverse_cloze_triplets gives (a triplets file of --mode ict)


@dataclass
class ValidationSet:
    query_ids: list[str]
    task: Task
    kind: str = "judged"  # of the held-out queries: "judged", "pseudo" (inverse-cloze) or "mixed"

    def fingerprint(self) -> str:
        return text_id("\n".join(sorted(self.query_ids)))

    @property
    def label(self) -> str:
        """What the validation score measures, for the log and the plot."""
        return {"judged": "MRR@10", "pseudo": "pseudo-query MRR@10"}.get(self.kind,
                                                                         "MRR@10 (judged and pseudo-queries)")

    @property
    def queries_kind(self) -> str:
        return {"judged": "judged queries", "pseudo": "inverse-cloze pseudo-queries"}.get(
            self.kind, "queries (judged and inverse-cloze pseudo-queries)")


def split_validation(triplets: Triplets, fraction: float = 0.0, count: int | None = None, seed: int = 42,
                     max_queries: int = DEFAULT_MAX_QUERIES) -> tuple[Triplets, ValidationSet | None]:
    """Hold out ``count`` queries (or ``fraction`` of them, at most ``max_queries``) with all their triplets.

    Judged queries are held out when the triplets have enough of them: a file of inverse-cloze triplets
    (``--mode ict``, query ids ``ict:...``) with judged pairs added (``--include``) is validated on judged
    queries, and only a file without enough of them on pseudo-queries (``ValidationSet.kind``, labelled so).
    Returns the training triplets and the validation set (``None`` when nothing is held out).
    """
    if not 0.0 <= fraction < 1.0:
        raise PipelineError(f"--validation-fraction must lie in [0, 1), got {fraction}")
    distinct = list(dict.fromkeys(triplets.query_ids))
    wanted = count if count is not None else min(round(fraction * len(distinct)), max_queries)
    if wanted == 0:
        return triplets, None
    if wanted >= len(distinct):
        raise PipelineError(f"cannot hold out {wanted} validation queries: the triplets have only "
                            f"{len(distinct)} distinct queries and training needs at least one")
    pseudo = [qid for qid in distinct if qid.startswith(PSEUDO_QUERY_PREFIX)]
    judged = [qid for qid in distinct if not qid.startswith(PSEUDO_QUERY_PREFIX)]
    # judged queries measure what the model is for; pseudo-queries only stand in when there are too few
    candidates = judged if len(judged) >= wanted else pseudo if len(pseudo) >= wanted else distinct
    held = set(random.Random(seed).sample(candidates, wanted))
    held_pseudo = sum(qid.startswith(PSEUDO_QUERY_PREFIX) for qid in held)
    kind = "judged" if held_pseudo == 0 else "pseudo" if held_pseudo == len(held) else "mixed"
    train = triplets.subset(i for i, qid in enumerate(triplets.query_ids) if qid not in held)
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    pool: dict[str, str] = {}  # passages keyed by their text: an ICT positive shares its id with the full text
    for i, qid in enumerate(triplets.query_ids):
        if qid not in held:
            continue
        queries[qid] = triplets.queries[i]
        positive, negative = text_id(triplets.positives[i]), text_id(triplets.negatives[i])
        pool[positive] = triplets.positives[i]
        pool[negative] = triplets.negatives[i]
        qrels.setdefault(qid, {})[positive] = 1
    task = Task("validation", PassagePool(list(pool), list(pool.values())), queries, qrels, threshold=1)
    return train, ValidationSet(sorted(held), task, kind)


class Validator:
    """``after_epoch``/``after_step`` hooks for ``train_two_tower`` that score the model on a validation set."""

    metric = "MRR@10"

    def __init__(self, validation: ValidationSet, model: Any, every_steps: int = 0, keep_best: bool = True):
        self.validation, self.model = validation, model
        self.every_steps, self.keep_best = every_steps, keep_best
        self.entries: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self._best_state: dict[str, torch.Tensor] | None = None

    def evaluate(self, epoch: int, step: int, end_of_epoch: bool) -> float:
        started = time.perf_counter()
        system = ModelRetriever(self.model, "validation")  # new each time: the model changed
        task = self.validation.task
        value = score_run(task.qrels, run_of(system, task, 10), task.threshold, [self.metric])[self.metric]
        entry = {"epoch": epoch, "step": step, "end_of_epoch": end_of_epoch, self.metric: value,
                 "seconds": time.perf_counter() - started}
        self.entries.append(entry)
        if self.best is None or value > self.best[self.metric]:
            self.best = dict(entry)
            if self.keep_best:
                self._best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        return value

    def after_step(self, step: int, log: Any) -> None:
        if self.every_steps and step % self.every_steps == 0:
            self.evaluate(len(log.epochs) + 1, step, end_of_epoch=False)

    def after_epoch(self, epoch: int, log: Any) -> None:
        step = int(log.steps[-1]["step"]) if log.steps else 0
        value = self.evaluate(epoch, step, end_of_epoch=True)
        info(f"Validation after epoch {epoch}: {self.validation.label} {value:.4f} on "
             f"{len(self.validation.query_ids):,} held-out {self.validation.queries_kind} "
             f"({len(self.validation.task.pool):,} passages)")

    def restore_best(self) -> None:
        """Put the best state seen back into the model (when it is not the last one)."""
        if self._best_state is None or self.best is None:
            return
        if self.entries and self.entries[-1] is not None and self.entries[-1][self.metric] < self.best[self.metric]:
            info(f"Keeping the best model: {self.metric} {self.best[self.metric]:.4f} at epoch "
                 f"{self.best['epoch']}, step {self.best['step']} (last: {self.entries[-1][self.metric]:.4f})")
            self.model.load_state_dict(self._best_state)

    def report(self) -> dict[str, Any]:
        return {"metric": self.metric, "label": self.validation.label, "queries_kind": self.validation.queries_kind,
                "queries": len(self.validation.query_ids),
                "passages": len(self.validation.task.pool), "every_steps": self.every_steps,
                "keep_best": self.keep_best, "entries": self.entries, "best": self.best}
