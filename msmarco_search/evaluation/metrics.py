"""Scoring runs with ``ir_measures``: the measures behind each reported name, aggregate and per query.

Graded qrels are read as such: nDCG@10 uses the grades; MRR@10, Recall@k and MAP count a passage as
relevant when its grade is at least the threshold (2 for TREC DL, 1 for the binary ``is_selected``).
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from msmarco_search.core.errors import PipelineError
from msmarco_search.io.runs import Run

Qrels = dict[str, dict[str, int]]

METRICS = ("nDCG@10", "MRR@10", "R@100", "R@1000", "MAP")
RERANK_METRICS = ("MRR@10", "nDCG@10", "MAP")
DEFAULT_RUN_DEPTH = 1000  # passages kept per query in a run: R@1000 looks that deep
FIRST_STAGE = "first-stage"  # re-ranking: the row of the candidates in the order given


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


def _chosen(metrics: Sequence[str], threshold: int) -> dict[str, Any]:
    available = measures(threshold)
    unknown = [m for m in metrics if m not in available]
    if unknown:
        raise PipelineError(f"unknown metric(s) {', '.join(unknown)} (use {', '.join(available)})")
    return {name: available[name] for name in metrics}


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


def paired_tests(system: dict[str, float], baseline: dict[str, float]) -> dict[str, Any]:
    """Paired significance of ``system`` against ``baseline`` on one metric's per-query values (``{qid: value}``):
    scipy's paired t-test (``ttest_rel``) and Wilcoxon signed-rank test, two-sided, over the queries both have.

    Identical values on every query give p = 1 (scipy would return nan, or refuse the Wilcoxon test).
    """
    from scipy.stats import ttest_rel, wilcoxon

    queries = sorted(system.keys() & baseline.keys())
    a = [system[q] for q in queries]
    b = [baseline[q] for q in queries]
    result: dict[str, Any] = {"queries": len(queries), "difference": (sum(a) - sum(b)) / len(queries) if queries
                              else 0.0, "t_test_p": 1.0, "wilcoxon_p": 1.0}
    if len(queries) < 2 or all(x == y for x, y in zip(a, b, strict=True)):
        return result
    t_p = float(ttest_rel(a, b).pvalue)
    result["t_test_p"] = t_p if t_p == t_p else 1.0  # nan: the differences do not vary (a constant shift)
    result["wilcoxon_p"] = float(wilcoxon(a, b).pvalue)
    return result


def significance(per_query: dict[str, dict[str, dict[str, float]]], baseline: str,
                 metrics: Sequence[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """``{system: {metric: paired_tests(...)}}`` of every system against the ``baseline`` row."""
    if baseline not in per_query:
        return {}
    return {name: {metric: paired_tests(values[metric], per_query[baseline][metric]) for metric in metrics}
            for name, values in per_query.items() if name != baseline}


# A system named like two-tower[NAME-s42] is one seed of the setting NAME (hybrid-rrf[NAME-s42] likewise).
SEEDED_SYSTEM = re.compile(r"^(?P<system>[\w-]+)\[(?P<setting>.+?)(?:-s\d+)?\]$")


def seed_groups(metrics: Mapping[str, Mapping[str, float]]) -> dict[tuple[str, str], list[Mapping[str, float]]]:
    """``{(setting, system): [each seed's metrics]}``: systems named ``system[NAME-s<SEED>]`` are seeds of the
    setting NAME; any other system is a setting of its own (``("", name)``), with one run."""
    grouped: dict[tuple[str, str], list[Mapping[str, float]]] = {}
    for name, values in metrics.items():
        match = SEEDED_SYSTEM.match(name)
        key = (match["setting"], match["system"]) if match else ("", name)
        grouped.setdefault(key, []).append(values)
    return grouped


def seed_mean_per_query(per_query: Mapping[str, Mapping[str, Mapping[str, float]]]
                        ) -> dict[tuple[str, str], dict[str, dict[str, float]]]:
    """``{(setting, system): {metric: {qid: mean over the setting's seeds}}}``, grouped as ``seed_groups`` does:
    what settings are compared on, query by query (``paired_tests``)."""
    grouped = seed_groups(per_query)
    return {key: {metric: {query: statistics.mean(run[metric][query] for run in runs) for query in runs[0][metric]}
                  for metric in runs[0]} for key, runs in grouped.items()}


def seed_summary(metrics: Mapping[str, Mapping[str, float]], columns: Sequence[str]) -> dict[str, dict]:
    """For each setting evaluated with several seeds: the mean, min and max over its seeds of each metric.

    On 43-53 queries one training seed moves nDCG@10 by about 0.01, so settings are compared on means."""
    summary = {}
    for (setting, system), runs in seed_groups(metrics).items():
        if setting and len(runs) > 1:
            summary[f"{system}[{setting}]"] = {
                "seeds": len(runs),
                **{c: {"mean": statistics.mean(r[c] for r in runs), "min": min(r[c] for r in runs),
                       "max": max(r[c] for r in runs)} for c in columns if all(c in r for r in runs)}}
    return summary
