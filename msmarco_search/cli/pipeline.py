"""The main job: the measured recipe end to end, from raw text to a scoreboard and a searchable index.

    msmarco-pipeline [SAMPLE_SIZE] [--dataset-path PATH... --split S] [--evaluate-on FILES...] [...]

(or ``python -m msmarco_search pipeline ...``; in a clone, ``scripts/run_pipeline.sh ...``). Each stage runs as its
own command and passes the next one the exact file it wrote (``--output``), never a search for the newest file.
A stage runs as ``python -m msmarco_search COMMAND ...`` with this interpreter, never through a path in the
repository, so the job runs wherever the package is installed, from any folder. Each stage is printed before it
runs as the command the user types to rerun it by hand, in the form the job was started in (``core.commands``):
``msmarco-train ...`` under ``msmarco-pipeline`` (the console commands are then on the PATH), ``python -m
msmarco_search train ...`` under ``python -m msmarco_search pipeline`` and ``scripts/run_pipeline.sh``; so is the
search command suggested at the end:

1. the CBOW corpus: every text of the training source (queries and passages), the passages of the evaluation
   collection (bare text, no label) and any ``--extra-text`` files, minus any line that equals an evaluation
   query: the evaluation queries are never trained on;
2. CBOW word vectors (300-d, a 20-word window, 40 epochs);
3. triplets: the training source's judged pairs (grade >= 2, hard negatives where the source has candidates),
   plus, for local passage collections, 8 inverse-cloze pseudo-queries per passage of the training and the
   evaluation collections (no labels), less any triplet whose query is an evaluation query;
4. with ``--label-queries`` (self-training): a first two-tower model (the first seed's) trained on those
   triplets, which, fused with BM25, labels the queries over the same passages (``labels/mining.py``: kept where the
   model and BM25 both rank the hybrid's first passage in their top 3); those pairs join the triplets;
5. the two-tower model, once per seed (shared towers, IDF-initialised word weights, in-batch softmax, 1 epoch),
   and the average of their weights;
6. the dense and BM25 index of the evaluation collection, and the evaluation against BM25.

With a teacher (``--teacher``, off by default; ``pipeline_teacher``), the stage that writes the final triplets has
the teacher encode their queries and passages, the training distils its in-batch scores beside the in-batch
softmax, and the evaluation adds the teacher as a reference row; the model shipped stays static.

The settings are those chosen on TREC DL 2021 (``benchmarks/quality_dl19.sh select``); the benchmark's recipe
run calls this same workflow.

Every stage is deterministic, so the same command on the same machine gives the same model and the same
scores: CBOW trains on one thread (gensim's threads finish their batches in whatever order the scheduler
picks, which moved DL 2019 nDCG@10 by up to 0.02 from run to run) and each two-tower on one thread. What one
core cannot share runs side by side instead (``--jobs``): CBOW beside the triplets, which do not need it, and
the seeds beside each other.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from msmarco_search.cli import pipeline_teacher
from msmarco_search.cli.arguments import (
    add_source_arguments,
    available_cores,
    batch_rows,
    cbow_window,
    dimension,
    epoch_count,
    ict_per_passage,
    job_count,
    positive_int,
    seed_int,
    source_from_args,
    split_given,
    thread_count,
)
from msmarco_search.core.commands import DEMO_QUERY, command_line, program
from msmarco_search.core.errors import PipelineError
from msmarco_search.core.report import IN_PIPELINE, info, next_commands, warn
from msmarco_search.core.text import TOKENIZER_VERSION
from msmarco_search.data.records import Source
from msmarco_search.data.tsv import TsvFiles, TsvSource, tsv_files_from
from msmarco_search.io.atomic import atomic_write, cache_key, ensure_writable_dir, file_identity
from msmarco_search.io.msmarco_files import read_collection, read_queries
from msmarco_search.io.outputs import release, timestamped_path
from msmarco_search.io.records import cached_record, save_cache_record

# The recipe's two-tower settings (chosen on DL 2021; see docs/experiments.md). --epochs, --batch-size and
# --seed come from the workflow's own flags.
RECIPE = ["--shared-towers", "--init-token-weights", "idf", "--loss", "softmax", "--scale", "20",
          "--learning-rate", "1e-4", "--embedding-learning-rate", "1e-2"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=program("pipeline"), description=__doc__.split("\n\n")[0],
        epilog="Without --dataset-path it trains on MS MARCO v1.1 train from the hub and evaluates on its "
               "validation split. Every stage's output goes where the seed's scripts put it: --output-dir "
               "(checkpoints/) for vectors and models, --data-dir (data/) for triplets and caches.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sample_size", nargs="?", type=positive_int, default=50000,
                        help="training queries read from the source (default 50000); with a local collection, "
                             "also the most passages per collection cut into pseudo-queries")
    add_source_arguments(parser)
    parser.set_defaults(min_relevance=2)  # the recipe's judged pairs: grade >= 2 ("highly relevant"), as TREC DL
    parser.add_argument("--evaluate-on", nargs="+", type=Path, metavar="PATH",
                        help="the official files to evaluate on: a folder or collection/queries/qrels files "
                             "(e.g. ../shared/data/msmarco-trec-dl-2019); its passages also feed CBOW and the "
                             "pseudo-queries, its queries and judgments never do")
    parser.add_argument("--evaluate-split", default=None,
                        help="which queries.<split>/qrels.<split> of --evaluate-on (default: its one file of each "
                             "kind; docs/data.md has the rule)")
    parser.add_argument("--extra-text", nargs="+", type=Path, default=[], metavar="FILE",
                        help="more text for CBOW only: TSVs of id<TAB>text (collections, query files)")
    parser.add_argument("-o", "--output-dir", type=Path, default=Path("checkpoints"),
                        help="word vectors, models and index (default ./checkpoints)")
    parser.add_argument("--seeds", default="42,1,2",
                        help="one model per seed, then their average (default 42,1,2; one seed: no average)")
    # 8 pseudo-queries per passage seen once against 4 seen twice (the same steps and time) on the DL 2021 split,
    # 3 seeds: two-tower nDCG@10 +0.036 (p 0.073), R@100 +0.013, hybrids +0.005/+0.009 (docs/experiments.md)
    parser.add_argument("--epochs", type=epoch_count, default=1, help="two-tower epochs (1)")
    # 1,024 against 256 on the DL 2021 split, 3 seeds: two-tower nDCG@10 +0.015, hybrid +0.009, R@100 equal
    # (p 0.39 and 0.36 on 26 queries: not significant, but every seed mean moved up; docs/experiments.md)
    parser.add_argument("--batch-size", type=batch_rows, default=1024, help="two-tower batch (1024)")
    # 40 against 20 on the DL 2021 split, two CBOW draws x 3 seeds: two-tower +0.011, two-tower-prf +0.016 (p 0.35
    # and 0.32: both draws and both systems moved up; docs/experiments.md), for about 2 more minutes of CBOW
    parser.add_argument("--cbow-epochs", type=epoch_count, default=40, help="CBOW epochs (40)")
    parser.add_argument("--cbow-window", type=cbow_window, default=20, help="CBOW window (20)")
    parser.add_argument("--vector-size", type=dimension, default=300, help="CBOW dimensions (300)")
    parser.add_argument("--min-count", type=positive_int, default=3, help="CBOW: rarer words are dropped (3)")
    parser.add_argument("--ict-per-passage", type=ict_per_passage, default=8,
                        help="inverse-cloze pseudo-queries per passage (8; local collections only)")
    parser.add_argument("--label-queries", nargs="+", type=Path, default=[], metavar="FILE",
                        help="self-training: queries TSVs without judgments (e.g. the MS MARCO train queries) "
                             "that a first model (the first seed's) and BM25 label over the passages; the "
                             "labelled pairs they agree on join the triplets of the final models (not in the "
                             "recipe: on DL 2021 it cost the two-tower 0.036 nDCG@10; docs/experiments.md)")
    parser.add_argument("--cbow-workers", type=thread_count, default=1,
                        help="CBOW threads (1: the same vectors every run; 0: one per core, faster, but the vectors "
                             "and every score after them change from run to run)")
    parser.add_argument("--jobs", type=job_count, default=available_cores(),
                        help="stages run side by side: CBOW beside the triplets, and the seeds (default: the "
                             f"cores, {available_cores()} here)")
    parser.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, mps")
    pipeline_teacher.add_teacher_arguments(parser)
    args = parser.parse_args(argv)
    try:
        args.seed_list = [seed_int(seed) for seed in args.seeds.split(",")]
    except argparse.ArgumentTypeError as error:
        parser.error(f"argument --seeds: {error}")
    return args


@dataclass
class Stage:
    """One command of the workflow: what it does (printed as its heading), the command and its arguments."""

    name: str
    command: str  # one of the package's commands (``cli.COMMANDS``)
    arguments: list[object]

    def argv(self) -> list[str]:
        """The stage's process: this interpreter running the package's command, wherever the package lies."""
        return [sys.executable, "-m", "msmarco_search", self.command, *map(str, self.arguments)]

    def shown(self) -> str:
        """The stage as the user types it, in the form the job was started in (the module's rule)."""
        return command_line(self.command, *self.arguments)

    def failure(self, status: int) -> str:
        """The job's one-line error when this stage exits with ``status`` (its own message is printed above)."""
        return f"stage '{self.name}' failed (exit status {status}); its message is above"


def stage_environment(**settings: str) -> dict[str, str]:
    """A stage's environment: this process's, with ``settings``, marked as run by the job (``IN_PIPELINE``): the
    job runs each next stage itself, so a stage prints no ``Next:`` line of its own."""
    return {**os.environ, IN_PIPELINE: "1", **settings}


class Workflow:
    """Runs the stages as commands, prints each command and its time, and keeps the files they wrote."""

    def __init__(self, args: argparse.Namespace, source: Source):
        self.args, self.source = args, source
        self.teacher: str | None = None  # the teacher the stages use (``pipeline_teacher.teacher_in_use``)
        self.stamp = datetime.now().strftime("%Y%m%d_%H%M%S")
        self.data_dir, self.output_dir = Path(args.data_dir), Path(args.output_dir)
        self.timings: list[tuple[str, float]] = []
        self._printing = threading.Lock()
        self._failure: str | None = None  # side by side: the first stage's failure, which stops the others
        self._running: set[subprocess.Popen] = set()

    def run(self, stage: Stage) -> None:
        info(f"\n== {stage.name}\n$ {stage.shown()}")
        started = time.perf_counter()
        status = subprocess.run(stage.argv(), check=False, env=stage_environment()).returncode
        self.timings.append((stage.name, time.perf_counter() - started))
        if status != 0:
            raise PipelineError(stage.failure(status))

    def run_side_by_side(self, lanes: list[list[Stage]]) -> None:
        """Each lane's stages one after another, up to ``--jobs`` lanes at once (one lane: as ``run``).

        Side by side, a stage's heading ends with its lane's number (``[2]``), each of its output lines starts
        with it, as they come, and progress bars are off (two bars on one terminal overwrite each other). The
        first stage to fail stops the others (a job that has failed should not make its user wait for CBOW).
        """
        lanes = [lane for lane in lanes if lane]
        if self.args.jobs == 1 or len(lanes) == 1:
            for stage in (stage for lane in lanes for stage in lane):
                self.run(stage)
            return
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=self.args.jobs) as pool:
            list(pool.map(self._run_lane, lanes, range(1, len(lanes) + 1)))
        self.timings.append((f"the {len(lanes)} lanes above, side by side (wall time)", time.perf_counter() - started))
        if self._failure:
            raise PipelineError(self._failure)

    def _run_lane(self, lane: list[Stage], number: int) -> None:
        """Run one lane's stages until one fails or another lane's has; the first failure is kept in
        ``_failure`` and stops the processes still running (``_running``: both only under ``_printing``)."""
        environment = stage_environment(MSMARCO_SEARCH_NO_PROGRESS="1", PYTHONUNBUFFERED="1")
        for stage in lane:
            with self._printing:
                if self._failure:
                    return
                info(f"\n== {stage.name} [{number}]\n$ {stage.shown()}")
                started = time.perf_counter()
                process = subprocess.Popen(stage.argv(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                           text=True, env=environment)
                self._running.add(process)
            with process:
                for line in process.stdout:
                    with self._printing:
                        info(f"[{number}] {line.rstrip()}")
            with self._printing:
                self._running.discard(process)
                self.timings.append((f"  [{number}] {stage.name}", time.perf_counter() - started))
                if process.returncode != 0 and not self._failure:
                    self._failure = f"{stage.failure(process.returncode)}, after [{number}]"
                    for other in self._running:
                        other.terminate()

    def source_flags(self) -> list[str]:
        args = self.args
        flags = ["--data-dir", args.data_dir, "--dataset-config", args.dataset_config]
        if split_given(args):  # a default split stays a default in the stages (a folder's files then need none)
            flags += ["--split", args.split]
        if args.dataset_path:
            flags = ["--dataset-path", *args.dataset_path, *flags]
        return flags


def evaluation_files(args: argparse.Namespace) -> TsvFiles | None:
    if not args.evaluate_on:
        return None
    files = tsv_files_from(list(args.evaluate_on), args.evaluate_split, flag="--evaluate-split")
    if files.collection is None or files.queries is None or files.qrels is None:
        raise PipelineError("--evaluate-on needs a collection, a queries file and a qrels file",
                            args.evaluate_on[0])
    return files


def corpus_lines(source: Source, evaluation: TsvFiles | None, extra: Iterable[Path]) -> Iterator[str]:
    """The CBOW corpus texts, without any text that is one of the evaluation queries.

    A text is one of them when its tokens are (``provenance.query_fingerprint``, as the leak check compares):
    "What is X?" in a query file must not slip through as "what is x".
    """
    from msmarco_search.data.provenance import query_fingerprint

    held_out: set[int] = set()
    texts: list[Iterable[str]] = [source.corpus_texts()]
    if evaluation is not None:
        held_out = {query_fingerprint(q) for q in read_queries(evaluation.queries).values()}
        texts.append(text for _, text in read_collection(evaluation.collection))
    texts += [(text for _, text in read_collection(path)) for path in extra]
    for group in texts:
        for text in group:
            line = " ".join(text.split())
            if line and query_fingerprint(line) not in held_out:
                yield line


def write_corpus(workflow: Workflow, evaluation: TsvFiles | None) -> Path:
    args = workflow.args
    evaluated = TsvSource(evaluation).identity() if evaluation else ""
    key = cache_key("pipeline-corpus-v2", TOKENIZER_VERSION, workflow.source.identity(), evaluated,
                    *(file_identity(path) for path in args.extra_text))
    path = workflow.data_dir / f"pipeline_corpus_{key}" / "collection.tsv"
    if cached_record(path) is not None:
        info(f"\n== corpus: reusing {path}")
        return path
    if path.exists():
        warn(f"{path}: cached corpus does not match its record (damaged, or from an older version); rebuilding it")
    lines = 0

    def write(tmp: Path) -> None:
        nonlocal lines
        with open(tmp, "w", encoding="utf-8") as handle:
            for lines, line in enumerate(corpus_lines(workflow.source, evaluation, args.extra_text), start=1):
                handle.write(f"t{lines - 1}\t{line}\n")

    atomic_write(path, write)
    save_cache_record(path, texts=lines, tokenizer=TOKENIZER_VERSION)
    info(f"\n== corpus: wrote {path}")
    return path


def local_collection(source: Source) -> Path | None:
    return source.files.collection if isinstance(source, TsvSource) else None


def triplet_stages(workflow: Workflow, evaluation: TsvFiles | None) -> tuple[list[Stage], Path]:
    """The stages that write the triplets (they need no word vectors, so they run beside CBOW), and the file
    the last one writes."""
    args, data = workflow.args, workflow.data_dir
    judged = data / f"msmarco_triplets_judged_{workflow.stamp}.pkl"
    negatives = "hard" if workflow.source.has_candidates else "mixed"
    # the evaluation queries are dropped from every triplet: passages quote some of them (DL 2019 has 3 such
    # queries in its pool), and an inverse-cloze pseudo-query cut from one would train on the evaluation query
    held_out = ["--exclude-queries", evaluation.queries] if evaluation is not None else []
    stages = [Stage("triplets: judged pairs", "triplets",
                    [*workflow.source_flags(), "--max-samples", args.sample_size, "--min-relevance", args.min_relevance,
                     "--negatives", negatives, *held_out, "--output", judged])]
    collections = [c for c in (local_collection(workflow.source), evaluation and evaluation.collection) if c]
    if not collections:
        stages[-1].arguments += pipeline_teacher.triplets_flags(args, workflow.teacher)
        return stages, judged
    both = data / f"msmarco_triplets_recipe_{workflow.stamp}.pkl"
    stages.append(Stage("triplets: inverse-cloze pseudo-queries plus the judged pairs", "triplets",
                        ["--mode", "ict", "--dataset-path", *collections, "--max-samples", args.sample_size,
                         "--ict-per-passage", args.ict_per_passage, "--include", judged, *held_out, "--data-dir", data,
                         "--output", both, *pipeline_teacher.triplets_flags(args, workflow.teacher)]))
    return stages, both


def train_stage(workflow: Workflow, name: str, triplets: Path, embeddings: Path, seed: int, model: Path) -> Stage:
    args = workflow.args
    return Stage(name, "train", [triplets, "--embeddings", embeddings, "--epochs", args.epochs, "--batch-size",
                                      args.batch_size, *RECIPE, "--seed", seed, "--device", args.device,
                                      "--data-dir", args.data_dir, "--output", model,
                                      *pipeline_teacher.train_flags(workflow.teacher)])


def self_training_triplets(workflow: Workflow, triplets: Path, embeddings: Path,
                           evaluation: TsvFiles | None) -> Path:
    """The triplets plus --label-queries labelled over the pools by a first model (the first seed's) and BM25."""
    args, data = workflow.args, workflow.data_dir
    collections = [c for c in (local_collection(workflow.source), evaluation and evaluation.collection) if c]
    if not args.label_queries or not collections:
        return triplets
    labeller = workflow.output_dir / f"two_tower_model_{workflow.stamp}_labeller.pt"
    workflow.run(train_stage(workflow, f"two-tower that labels the --label-queries, seed {args.seed_list[0]}",
                             triplets, embeddings, args.seed_list[0], labeller))
    labelled = data / f"msmarco_triplets_selftrain_{workflow.stamp}.pkl"
    held_out = ["--exclude-queries", evaluation.queries] if evaluation is not None else []
    workflow.run(Stage("triplets: the --label-queries labelled by that model and BM25, plus the triplets above",
                       "triplets", ["--mode", "pseudo-labels", "--dataset-path", *collections, "--queries",
                                         *args.label_queries, "--label-model", labeller, "--include", triplets,
                                         *held_out, "--device", args.device, "--data-dir", data, "--output", labelled,
                                         *pipeline_teacher.triplets_flags(args, workflow.teacher)]))
    return labelled


def train_models(workflow: Workflow, triplets: Path, embeddings: Path) -> Path:
    args = workflow.args
    final = workflow.output_dir / f"two_tower_model_{workflow.stamp}.pt"
    seeds = args.seed_list
    models = [final if len(seeds) == 1 else final.with_name(f"{final.stem}_seed{seed}.pt") for seed in seeds]
    # each seed trains on one thread, so the seeds share the cores side by side (the same weights either way)
    workflow.run_side_by_side([[train_stage(workflow, f"two-tower, seed {seed}", triplets, embeddings, seed, model)]
                               for seed, model in zip(seeds, models, strict=True)])
    if len(models) > 1:
        workflow.run(Stage(f"the average of the {len(models)} seeds' weights", "average",
                           [*models, "--output", final]))
    return final


def evaluate(workflow: Workflow, model: Path, embeddings: Path, evaluation: TsvFiles | None) -> None:
    args = workflow.args
    report = model.with_name(f"{model.stem}_evaluation")
    common = ["--model", f"recipe={model}", "--embeddings", embeddings, "--device", args.device,
              "--output-dir", report, "--data-dir", args.data_dir, *pipeline_teacher.evaluate_flags(workflow.teacher)]
    if evaluation is not None:
        workflow.run(Stage("index the evaluation collection", "search",
                           ["index", model, "--dataset-path", evaluation.collection, "--device", args.device]))
        workflow.run(Stage("evaluate against BM25", "evaluate",
                           [*common, "--collection", evaluation.collection, "--queries", evaluation.queries,
                            "--qrels", evaluation.qrels]))
        next_commands(command_line("search", "query", model, "--system", "all", DEMO_QUERY))
    elif not args.dataset_path:
        workflow.run(Stage("evaluate on MS MARCO validation", "evaluate",
                           [*common, "--split", "validation", "--dataset-config", args.dataset_config]))
    else:
        info("\nNo evaluation: give --evaluate-on with the official files of queries the model never saw.")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    for flag, paths in (("--extra-text", args.extra_text), ("--label-queries", args.label_queries),
                        ("--teacher-queries", args.teacher_queries)):
        for path in paths:
            if not path.is_file():
                raise PipelineError(f"{flag} file not found", path)
    source = source_from_args(args)
    evaluation = evaluation_files(args)
    ensure_writable_dir(args.output_dir)
    ensure_writable_dir(args.data_dir, "data folder")
    workflow = Workflow(args, source)
    workflow.teacher = pipeline_teacher.teacher_in_use(args)
    # every file of this run is named with its stamp: claimed for the run's life, so that a second job started
    # in the same second takes another stamp instead of writing (and replacing) this one's files
    claimed = timestamped_path(args.output_dir, "pipeline", "")
    workflow.stamp = claimed.name.removeprefix("pipeline_")
    try:
        model = run_stages(workflow, evaluation)
    finally:
        release(claimed)
    info("\n== time per stage")
    for stage, seconds in workflow.timings:
        info(f"  {seconds:7.1f} s  {stage}")
    info(f"  {time.perf_counter() - started:7.1f} s  in all; the model: {model}")
    return 0


def run_stages(workflow: Workflow, evaluation: TsvFiles | None) -> Path:
    """Every stage in turn (CBOW beside the triplets); the final model."""
    args = workflow.args
    if args.dataset_path:
        corpus = ["--dataset-path", write_corpus(workflow, evaluation), "--data-dir", args.data_dir]
    else:  # the hub's queries and passages, as stage 1 reads them
        corpus = [*workflow.source_flags(), "--max-samples", args.sample_size]
    cbow = Stage("CBOW word vectors", "cbow",
                 [*corpus, "-c", args.output_dir, "--vector-size", args.vector_size, "--window", args.cbow_window,
                  "--min-count", args.min_count, "--epochs", args.cbow_epochs, "--workers", args.cbow_workers,
                  "--no-word-benchmarks"])
    embeddings = workflow.output_dir / "msmarco_word2vec.pt"
    making_triplets, triplets = triplet_stages(workflow, evaluation)
    workflow.run_side_by_side([[cbow], making_triplets])
    triplets = self_training_triplets(workflow, triplets, embeddings, evaluation)
    model = train_models(workflow, triplets, embeddings)
    evaluate(workflow, model, embeddings, evaluation)
    return model
