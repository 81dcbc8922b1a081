"""Evaluate retrieval systems side by side: two-tower model(s), BM25, zero-shot CBOW, hybrids, and feedback.

Official files (--collection --queries --qrels [--candidates]): full ranking over the collection, or
re-ranking of the candidates (top1000 layout). Otherwise the row layout (the hub's microsoft/ms_marco, or
--dataset-path): re-rank each query's passages (with the random-order baseline) and rank all passages of the
evaluated queries pooled together.

--teacher MODEL adds the teacher's row (a sentence-transformers model: the ceiling the static two-tower learns
toward, never a system that is shipped), with p-values like every other row; its vectors are cached under
--data-dir.

Metrics from ir_measures: nDCG@10 on the graded labels; MRR@10, R@100, R@1000 and MAP with relevant =
grade >= --relevance-threshold (row layout: is_selected). Prints a table, writes evaluation.json (every
number and the settings) and one TREC run file per system and task into --output-dir.
"""

from __future__ import annotations

import argparse
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from msmarco_search.cli.arguments import (
    DEVICE_HELP,
    DefaultSplit,
    add_bm25_arguments,
    add_feedback_arguments,
    add_fusion_arguments,
    add_source_arguments,
    non_negative_int,
    positive_int,
    relevance_grade,
    source_from_args,
)
from msmarco_search.cli.evaluate_systems import (
    SYSTEMS,
    build_systems,
    choose_systems,
    parse_models,
    resolve_embeddings,
    split_names,
)
from msmarco_search.core.commands import command, program
from msmarco_search.core.errors import PipelineError
from msmarco_search.core.report import info
from msmarco_search.core.resources import HIT_BYTES, check_memory
from msmarco_search.evaluation.metrics import DEFAULT_RUN_DEPTH, FIRST_STAGE, seed_summary
from msmarco_search.io.atomic import ensure_writable_dir, save_json
from msmarco_search.io.outputs import OutputKind, check_output, claim_output, output_path, release, timestamped_path
from msmarco_search.io.runs import TREC_RUN_OUTPUT, run_file_name, write_run
from msmarco_search.io.safe_load import load_json, recognise_json
from msmarco_search.teacher.settings import BATCH_SIZE

if TYPE_CHECKING:
    from msmarco_search.search.retrieval import Retriever

TASKS = ("rerank", "full")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=program("evaluate"), description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", default=[], metavar="[NAME=]PATH",
                        help="a two-tower model (.pt from training), optionally named (it shows as "
                             "two-tower[NAME]); repeat for several")
    parser.add_argument("--embeddings", type=Path, default=None,
                        help="CBOW embeddings for the zero-shot systems (default: the ones the first --model was "
                             "trained from, else checkpoints/msmarco_word2vec.pt); embeddings of another "
                             "vocabulary than the model's are refused")
    parser.add_argument("--systems", default=None,
                        help=f"comma-separated, among {', '.join(SYSTEMS)}, or 'none' (default: all that the "
                             "given files allow: two-tower and hybrid need --model, cbow the embeddings file)")
    parser.add_argument("--output-dir", type=Path, default=None,
                        help="where the JSON and run files go (default outputs/evaluation_<timestamp>)")
    parser.add_argument("--overwrite", action="store_true",
                        help="let --output-dir replace the evaluation.json and run files of an earlier evaluation")
    parser.add_argument("--word-benchmarks", action="store_true",
                        help="also score the CBOW embeddings on analogies, WordSim-353 and SimLex-999")
    official = parser.add_argument_group("official files (instead of the row layout)")
    official.add_argument("--collection", type=Path, help="collection.tsv (pid<TAB>text)")
    official.add_argument("--queries", type=Path, help="queries TSV (qid<TAB>text)")
    official.add_argument("--qrels", type=Path, help="TREC qrels (qid 0 pid grade)")
    official.add_argument("--candidates", type=Path, help="top1000-layout candidates: re-rank them instead")
    official.add_argument("--relevance-threshold", type=relevance_grade, default=2,
                          help="official files (--qrels) only: the lowest grade that MRR@10, R@100, R@1000 and MAP "
                               "count as relevant (2, the TREC DL rule; nDCG@10 uses the grades). Not "
                               "--min-relevance, which reads --dataset-path TSV sources")
    rows = parser.add_argument_group("row layout")
    rows.add_argument("--tasks", default="rerank,full", help="rerank, full or both (default rerank,full)")
    parser.add_argument("--max-queries", type=positive_int, default=None, help="evaluate at most N queries")
    tuning = parser.add_argument_group("systems")
    tuning.add_argument("--run-depth", type=positive_int, default=DEFAULT_RUN_DEPTH,
                        help=f"passages kept per query in each run ({DEFAULT_RUN_DEPTH})")
    tuning.add_argument("--index-dir", type=Path, default=None,
                        help="official files: reuse the BM25 index saved in this search index "
                             f"({command('search')} index over the same --collection, with the same BM25 flags)")
    tuning.add_argument("--baseline", default=None,
                        help=f"the row every system is tested against (paired t-test and Wilcoxon test): default "
                             f"{FIRST_STAGE} (the candidates as given) when re-ranking, bm25 in full ranking")
    tuning.add_argument("--random-seeds", type=non_negative_int, default=10,
                        help="shuffles averaged for the random re-ranking baseline (10)")
    tuning.add_argument("--device", default="auto", help=f"device for the two-tower models: {DEVICE_HELP}")
    tuning.add_argument("--teacher", default=None, metavar="MODEL",
                        help="add a 'teacher' row: a sentence-transformers model folder (read offline) or hub name, "
                             "ranking by its own vectors, cached under --data-dir (teacher_vectors_<id>.npz). A "
                             "reference, never shipped; needs the st extra")
    tuning.add_argument("--teacher-batch-size", type=positive_int, default=BATCH_SIZE,
                        help=f"texts the teacher encodes at once ({BATCH_SIZE})")
    add_bm25_arguments(parser)
    add_fusion_arguments(parser, several=True)
    add_feedback_arguments(parser)
    add_source_arguments(parser)
    _row_layout_defaults(parser)
    return parser.parse_args(argv)


def check_baseline(args: argparse.Namespace, systems: list[Retriever]) -> None:
    """``--baseline`` names one of the rows of every task: checked before the systems run, not after. The
    candidates' own row (``first-stage``) exists in re-ranking only."""
    if args.baseline is None:
        return
    names = [s.name for s in systems]
    kinds = task_kinds(args)
    if args.baseline == FIRST_STAGE and "rerank" in kinds:
        if "full" in kinds:
            raise PipelineError(f"--baseline {FIRST_STAGE} is a row of the re-ranking task only, and the full-ranking "
                                "task has none: add --tasks rerank, or choose one of the systems "
                                f"({', '.join(names)})")
        return
    if args.baseline not in names:
        rows = names + ([FIRST_STAGE] if kinds == ["rerank"] else [])
        raise PipelineError(f"--baseline {args.baseline} is not one of the systems ({', '.join(rows)})")


def task_kinds(args: argparse.Namespace) -> list[str]:
    """What the tasks of this run do: ``rerank`` and/or ``full`` (official files: re-ranking with --candidates)."""
    if any(x is not None for x in (args.collection, args.queries, args.qrels, args.candidates)):
        return ["rerank" if args.candidates is not None else "full"]
    return split_names(args.tasks, TASKS, "--tasks")


def _row_layout_defaults(parser: argparse.ArgumentParser) -> None:
    """Evaluation reads the hub's validation split, not train; and its two relevance flags say which is which."""
    for action in parser._actions:  # the shared source flags, with evaluation's own default and wording
        if action.dest == "split":
            action.default = DefaultSplit("validation")
            action.help = "split: hub/datasets split, or the <split> in queries.<split>.tsv (default validation)"
        elif action.dest == "min_relevance":
            action.help = ("--dataset-path TSV sources only: the lowest qrels grade that makes a passage one of "
                           "a query's selected (relevant) passages, as in the other stages (default 1); the "
                           "official-files task uses --relevance-threshold instead")


def make_tasks(args: argparse.Namespace):
    from msmarco_search.evaluation.evaluate import rows_tasks, tsv_task

    official = [args.collection, args.queries, args.qrels]
    if any(x is not None for x in [*official, args.candidates]):
        if any(x is None for x in official):
            raise PipelineError("the official-files task needs --collection, --queries and --qrels together")
        info(f"Task: {'re-ranking ' + str(args.candidates) if args.candidates else 'full ranking'} over "
             f"{args.collection}, queries {args.queries}, qrels {args.qrels} (relevant: grade >= "
             f"{args.relevance_threshold})")
        task = tsv_task(args.collection, args.queries, args.qrels, args.candidates, args.relevance_threshold,
                        args.max_queries)
        return [task], {"format": "official", "collection": str(args.collection), "queries": str(args.queries),
                        "qrels": str(args.qrels),
                        "candidates": None if args.candidates is None else str(args.candidates)}
    wanted = split_names(args.tasks, TASKS, "--tasks")
    source = source_from_args(args)
    tasks = rows_tasks(source.records(args.max_queries), full="full" in wanted, rerank="rerank" in wanted)
    return tasks, {"format": "rows", "source": source.description, "split": args.split}


def check_run_memory(task, systems: list[Retriever], depth: int) -> None:
    """A full ranking keeps every system's top --run-depth of every query (the runs are scored together) and
    searches all queries at once: checked against the memory available before the first system runs, since
    the depth, capped by the passages, still multiplies with the queries and the systems."""
    if task.candidates is not None:  # re-ranking scores the candidates the files hold: as large as the data
        return
    queries, kept = len(task.queries), min(depth, len(task.pool))
    needed = queries * kept * HIT_BYTES * (len(systems) + 1) + queries * min(65_536, len(task.pool)) * 4
    check_memory(needed, f"keeping the top {kept:,} passages of {queries:,} queries for {len(systems)} "
                         f"system{'s' if len(systems) > 1 else ''}", "lower --run-depth or --max-queries")


def training_overlaps(task, systems: list[Retriever]) -> dict[str, dict | None]:
    """Per two-tower system, the evaluation queries whose text it was trained on (None: not recorded)."""
    from msmarco_search.data.provenance import training_overlap
    from msmarco_search.search.dense import TwoTowerRetriever

    overlaps = {}
    for system in systems:
        if isinstance(system, TwoTowerRetriever):
            ids = training_overlap(system.metadata, task.queries)
            overlaps[system.name] = None if ids is None else {"queries": len(ids), "query_ids": ids}
    return overlaps


def warn_about_overlaps(task, overlaps: dict[str, dict | None]) -> None:
    for name, overlap in overlaps.items():
        if overlap is None:
            info(f"note: {name} does not record its training queries, so a leak cannot be ruled out")
        elif overlap["queries"]:
            info(f"⚠️  LEAK: {overlap['queries']:,} of the {len(task.queries):,} evaluation queries are in "
                 f"{name}'s training triplets: its row is not a fair score")


def _print_table(task, result, systems: list[Retriever]) -> None:
    """The task's table, its header naming what is ranked and the BM25 variant."""
    from msmarco_search.evaluation.evaluate import format_table
    from msmarco_search.search.retrieval import BM25Retriever

    if task.candidates is None:
        ranked = f"{len(task.pool):,} passages ranked per query"
    else:
        candidates = sum(len(c) for c in task.candidates.values())
        ranked = (f"re-ranking {candidates:,} candidates ({candidates / len(task.queries):,.1f} per query; "
                  f"{FIRST_STAGE}: their given order)")
    info(f"\n=== {task.name}: {len(task.queries):,} queries, {ranked} (relevant: grade >= {task.threshold}) ===")
    for system in systems:
        if isinstance(system, BM25Retriever):
            info(f"{system.name}: {system.description}")
    info(format_table(result.metrics, task.metrics(), result.baseline, result.significance))


# the fields every evaluation.json holds (``main``): --output-dir replaces only such a record
EVALUATION_OUTPUT = OutputKind("evaluation record", recognise_json("created", "arguments", "systems", "tasks"))
EVALUATION_FILE = "evaluation.json"


def evaluation_inputs(args: argparse.Namespace) -> list[Path]:
    """Every file the evaluation reads: none of them is ever an output."""
    models = parse_models(args.model)[0] if args.model else []
    return [*models, *(Path(p) for p in args.dataset_path or []),
            *(p for p in (args.embeddings, args.collection, args.queries, args.qrels, args.candidates, args.index_dir)
              if p is not None)]


def claim_output_dir(args: argparse.Namespace) -> tuple[Path, Path]:
    """The output folder and its ``evaluation.json``, claimed for this run before the work: a second evaluation
    into the folder meanwhile is refused, not silently replaced by the later one (``outputs.claim_output``).
    An earlier ``evaluation.json`` is replaced only with ``--overwrite``; any other file of that name, or a
    file named like a run file (``run.*.trec``) that is not a TREC run, is never replaced."""
    if args.output_dir is None:
        output_dir = timestamped_path("outputs", "evaluation", "")  # claimed; released when the record is
        ensure_writable_dir(output_dir)
        return output_dir, output_dir
    output_dir = output_path(args.output_dir)
    ensure_writable_dir(output_dir)  # before the work: found at the end, it would cost the whole run
    inputs = evaluation_inputs(args)
    record = claim_output(output_dir / EVALUATION_FILE, EVALUATION_OUTPUT, inputs, flag="--output-dir")
    try:
        if record.exists() and record.stat().st_size and not args.overwrite:
            raise PipelineError("already holds an evaluation.json; pass --overwrite to replace it, or choose another "
                                "--output-dir", output_dir)
        for run_file in sorted(output_dir.glob("run.*.trec")):
            check_output(run_file, TREC_RUN_OUTPUT, inputs, flag="--output-dir")
    except PipelineError:
        release(record)
        raise
    return output_dir, record


def forget_earlier_evaluation(output_dir: Path) -> None:
    """Remove an earlier ``evaluation.json`` (with ``--overwrite``) and the run files it lists, before this
    evaluation writes its own: a run killed half-way then leaves run files and no record, never the earlier
    record beside this run's files."""
    record = output_dir / EVALUATION_FILE
    if not record.is_file() or EVALUATION_OUTPUT.recognise(record) is not None:
        return
    earlier = load_json(record)
    for task in (earlier.get("tasks") or {}).values():
        files = task.get("run_files") if isinstance(task, dict) else None
        for name in (files.values() if isinstance(files, dict) else ()):
            path = output_dir / Path(str(name)).name
            if path.is_file() and TREC_RUN_OUTPUT.recognise(path) is None:
                path.unlink()
    record.unlink()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    resolve_embeddings(args)
    chosen = choose_systems(args)
    if not chosen and not args.word_benchmarks:
        raise PipelineError("nothing to do: --systems none without --word-benchmarks")
    output_dir, claimed = claim_output_dir(args)
    try:
        report = {"created": datetime.now().isoformat(timespec="seconds"),
                  "arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                  "systems": {}, "tasks": {}}
        if chosen:
            evaluate_systems(args, chosen, output_dir, report)
        if args.word_benchmarks:
            from msmarco_search.embeddings.cbow import load_embeddings
            from msmarco_search.embeddings.word_benchmarks import report_word_embedding_quality, word_embedding_quality

            matrix, vocab, _ = load_embeddings(args.embeddings)
            quality = word_embedding_quality(matrix, vocab)
            report_word_embedding_quality(quality)
            report["word_embeddings"] = {"embeddings": str(args.embeddings), **quality}
        forget_earlier_evaluation(output_dir)  # a word-benchmarks-only run writes no run file before it
        json_path = save_json(report, output_dir / EVALUATION_FILE)
    except BaseException:
        if args.output_dir is None and output_dir.is_dir() and not any(output_dir.iterdir()):
            output_dir.rmdir()  # the run's own timestamped folder, still empty: a failed run leaves nothing
        raise
    finally:
        release(claimed)
    info(f"\n💾 Saved the results to {json_path} and the run files to {output_dir}")
    return 0


def evaluate_systems(args: argparse.Namespace, chosen: list[str], output_dir: Path, report: dict) -> None:
    """Build the systems, rank every task's queries with each, write the runs and fill ``report``."""
    from msmarco_search.evaluation.evaluate import evaluate_task

    systems = build_systems(args, chosen)
    check_baseline(args, systems)
    report["systems"] = {s.name: {"kind": type(s).__name__, **s.settings()} for s in systems}
    tasks, data = make_tasks(args)
    report["data"] = data
    inputs = evaluation_inputs(args)
    for task in tasks:
        check_run_memory(task, systems, args.run_depth)
    for task in tasks:
        result = evaluate_task(task, systems, args.run_depth, args.random_seeds, baseline=args.baseline)
        forget_earlier_evaluation(output_dir)
        files = {}
        for name, run in result.runs.items():
            path = check_output(output_dir / run_file_name(task.name, name), TREC_RUN_OUTPUT, inputs,
                                flag="--output-dir")
            files[name] = str(write_run(run, path, name))
        _print_table(task, result, systems)
        overlaps = training_overlaps(task, systems)
        warn_about_overlaps(task, overlaps)
        report["tasks"][task.name] = {
            "kind": task.kind, "queries": len(task.queries), "passages": len(task.pool),
            "candidates": None if task.candidates is None else sum(map(len, task.candidates.values())),
            "relevance_threshold": task.threshold, "metrics": result.metrics,
            "per_query": result.per_query, "baseline": result.baseline, "training_overlap": overlaps,
            "significance": result.significance,
            "seeds": seed_summary(result.metrics, task.metrics()),
            "seconds": result.seconds, "run_files": files}
