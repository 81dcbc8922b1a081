"""Stage 3: train a two-tower retrieval model from triplets, on top of the CBOW embeddings.

Writes {output_dir}/two_tower_model_<timestamp>.pt (or exactly --output FILE: weights, config, vocabulary;
loadable with torch.load(..., weights_only=True)), ..._training_log.json and a plot of it
(..._training_log.png) beside it, then ranks a few queries' candidates as a quick similarity test. A held-out
slice of the queries is scored (MRR@10) after every epoch; the best model is the one saved.

The triplets file is a .pkl or .parquet from preprocessing/generate_triplets.py (a parquet file from elsewhere
needs only the columns anchor, positive, negative), or the official triples TSV
(query<TAB>positive<TAB>negative, e.g. triples.train.small.tsv), which is tokenised in chunks into
memory-mapped arrays (no 39M-string pickle).

While training, ..._training_state.pt holds a resumable state (every --checkpoint-every steps, at each epoch
end, and on Ctrl-C/SIGTERM); run the same command with --resume that file to continue exactly where it
stopped. Several processes: uv run torchrun --nproc-per-node N training/train_two_tower_from_triplets.py ...
(data parallel; --batch-size is per process).

Triplets made with a teacher (the triplets command's --teacher) carry its vectors: the loss is then the in-batch
softmax plus --distill-weight x the KL from the teacher's in-batch scores (0: as without a teacher).
"""

from __future__ import annotations

import argparse
import functools
import os
import shlex
import signal
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from msmarco_search.cli.arguments import (
    batch_rows,
    dimension,
    dimension_or_zero,
    epoch_count,
    fraction_below_one,
    learning_rate,
    non_negative_int,
    positive_int,
    processes,
    seed_int,
    source_flags,
    thread_count,
)
from msmarco_search.cli.output import (
    MODEL_OUTPUT,
    MODEL_PREFIX,
    MODEL_SUFFIX,
    TRAINING_STATE_OUTPUT,
    beside,
    claim_model_path,
    companions,
)
from msmarco_search.cli.train_objective import Objective, add_objective_arguments, choose_objective
from msmarco_search.core.commands import command, command_line, command_words, program, with_commands
from msmarco_search.core.device import pick_device
from msmarco_search.core.errors import PipelineError
from msmarco_search.core.report import info, next_commands, warn
from msmarco_search.data.triplets import metadata_path
from msmarco_search.io.atomic import content_sample
from msmarco_search.io.outputs import check_output, claim_output, release
from msmarco_search.io.records import load_side_record, save_side_record
from msmarco_search.training.config import TOWERS
from msmarco_search.training.plots import plot_training_log

if TYPE_CHECKING:
    import torch

    from msmarco_search.data.tokens import TrainingData, TripletsFile
    from msmarco_search.data.triplets import Triplets
    from msmarco_search.evaluation.validation import Validator
    from msmarco_search.training.distributed import DistributedContext
    from msmarco_search.training.model import TwoTowerModel
    from msmarco_search.training.state import TrainingInterrupted, TrainingLog, TrainSettings

DEFAULT_OUTPUT_DIR = Path("checkpoints")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=program("train"), description=with_commands(__doc__),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("triplets_file", type=Path,
                        help=f"triplets .pkl or .parquet from {command('triplets')}, or a triples TSV "
                             "(query<TAB>positive<TAB>negative, as triples.train.small.tsv)")
    parser.add_argument("--epochs", type=epoch_count, default=1, help="training epochs (1)")
    parser.add_argument("--batch-size", type=batch_rows, default=32, help="triplets per batch (32)")
    parser.add_argument("--learning-rate", type=learning_rate, default=1e-4,
                        help="learning rate of the dense layers (1e-4)")
    parser.add_argument("--embedding-learning-rate", type=learning_rate, default=1e-2,
                        help="learning rate of the word vectors and token weights (sparse updates; 1e-2)")
    parser.add_argument("--num-workers", type=processes(0), default=0, help="DataLoader workers (0)")
    parser.add_argument("--no-save", action="store_true", help="do not save the trained model")
    parser.add_argument("--embeddings", type=Path, default=Path("checkpoints/msmarco_word2vec.pt"),
                        help="CBOW embeddings file (checkpoints/msmarco_word2vec.pt)")
    parser.add_argument("--output-dir", type=Path, default=None,
                        help="where the model and its log go, under a timestamped name (./checkpoints)")
    parser.add_argument("--output", type=Path, default=None, metavar="FILE",
                        help="write the model to exactly this file (its log and plot beside it, "
                             "<stem>_training_log.json/.png) instead of a timestamped name in --output-dir")
    parser.add_argument("--overwrite", action="store_true",
                        help="let --output replace an existing model (and start over from a training state "
                             "left beside it); never a file that another run is writing")
    parser.add_argument("--data-dir", type=Path, default=Path("data"),
                        help="cache folder for the tokenised triplets (./data)")
    parser.add_argument("--seed", type=seed_int, default=42, help="random seed (42)")
    parser.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N, mps")
    parser.add_argument("--threads", type=thread_count, default=1,
                        help="CPU threads for PyTorch (1: fastest on a small or shared CPU, see "
                             "docs/experiments.md; 0 = PyTorch's default, all cores)")
    run = parser.add_argument_group("checkpoints and resuming")
    run.add_argument("--resume", type=Path, default=None, metavar="STATE",
                     help="continue from a ..._training_state.pt written by an interrupted run of the same command")
    run.add_argument("--checkpoint-every", type=non_negative_int, default=1000,
                     help="steps between resumable training states (1000; 0 = only at epoch ends and on a signal)")
    run.add_argument("--keep-training-state", action="store_true",
                     help="keep the training state after a successful run (it is deleted by default)")
    run.add_argument("--max-steps", type=non_negative_int, default=0,
                     help="stop after this many steps (0 = no limit; for benchmarks and smoke runs)")
    model = parser.add_argument_group("model")
    model.add_argument("--tower", choices=TOWERS, default="mean", help="mean pooling (default) or a GRU")
    model.add_argument("--freeze-embeddings", action="store_true", help="keep the CBOW vectors fixed")
    model.add_argument("--no-token-weights", action="store_true",
                       help="plain mean pooling, without a learned weight per word")
    model.add_argument("--shared-towers", action="store_true", help="one tower for queries and passages")
    model.add_argument("--init-token-weights", choices=("one", "idf"), default="one",
                       help="start the learned word weights at 1 (a plain mean) or at the IDF of the word over "
                            "the triplets' passages (the zero-shot IDF-weighted mean)")
    model.add_argument("--output-dim", type=dimension_or_zero, default=0,
                       help="size of the output vectors (0 = the embedding size)")
    model.add_argument("--gru-hidden-dim", type=dimension, default=256, help="GRU state size per direction")
    model.add_argument("--max-query-length", type=positive_int, default=32, help="tokens kept per query (32)")
    model.add_argument("--max-passage-length", type=positive_int, default=128,
                       help="tokens kept per passage (128)")
    add_objective_arguments(parser)
    parser.add_argument("--log-every", type=positive_int, default=10, help="log the loss every N steps (10)")
    validation = parser.add_argument_group("validation")
    validation.add_argument("--validation-fraction", type=fraction_below_one, default=0.05,
                            help="share of the queries held out to score MRR@10 on (0.05, at most 2000 "
                                 "queries; 0 = none)")
    validation.add_argument("--validation-queries", type=non_negative_int, default=None,
                            help="hold out exactly this many queries instead")
    validation.add_argument("--validate-every", type=non_negative_int, default=0,
                            help="also validate every N steps (0 = after each epoch only)")
    validation.add_argument("--keep-last", action="store_true",
                            help="save the last model, not the best one on the validation queries")
    return parser.parse_args(argv)


@dataclass
class Outputs:
    """Where this run writes: the model (None with --no-save), its resumable training states, its log."""

    model: Path | None
    state: Path | None
    claimed: bool  # this process holds the model path's claim marker (drop it with ``release``)

    def release(self) -> None:
        if self.claimed and self.model is not None:
            release(self.model)
            self.claimed = False


def main(argv: list[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(arguments)
    from msmarco_search.training.distributed import context_from_environment, init_distributed, shutdown_distributed

    context = context_from_environment()
    if not context.is_main:  # only the first process prints and writes files
        os.environ["MSMARCO_SEARCH_NO_PROGRESS"] = "1"
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process
    device = init_distributed(context, pick_device(args.device))
    try:
        status = train(args, arguments, context, device)
        context.barrier()  # the others wait while the first process saves: leaving early aborts gloo
        return status
    finally:
        shutdown_distributed(context)


def train(args: argparse.Namespace, arguments: list[str], context: DistributedContext, device: torch.device) -> int:
    """Load, train, save, print; the exit status (128 + the signal number when interrupted)."""
    import torch

    from msmarco_search.data.tokens import TripletsFile
    from msmarco_search.training.state import TrainingInterrupted, load_training_state
    from msmarco_search.training.trainer import train_two_tower

    if device.type == "cpu" and args.threads:
        torch.set_num_threads(args.threads)
    info(f"Using device: {device}" + (f" ({context.world_size} processes)" if context.enabled else "")
         + (f", {torch.get_num_threads()} CPU thread(s)" if device.type == "cpu" else ""))
    check_flags(args)
    # before the work: read at the end, a damaged one would cost the model
    described = triplets_metadata(args.triplets_file)
    resume = load_training_state(args.resume) if args.resume is not None else None
    outputs = plan_outputs(args, context, resume)  # before hours of training, not after them
    try:
        triplets_file = TripletsFile(args.triplets_file)
        if args.init_token_weights == "idf" and triplets_file.streamed:
            raise PipelineError("--init-token-weights idf needs a triplets .pkl (a triples TSV is not read whole)",
                                args.triplets_file)
        objective = choose_objective(args, triplets_file.triplets, resume)
        model, data = load_model_and_data(args, triplets_file, context, device, resume)
        objective.prepare(data.tokens)
        validator = make_validator(args, data, model, context, resumed=resume is not None)
        try:
            log = train_two_tower(model, data.tokens, objective.make_loss(), train_settings(args), device,
                                  state_path=outputs.state, resume=resume, context=context,
                                  state_extra=state_extra(args, model, outputs, objective),
                                  after_epoch=validator.after_epoch if validator else None,
                                  after_step=validator.after_step if validator and args.validate_every else None)
        except TrainingInterrupted as stop:
            if context.is_main:
                print(interrupted_message(stop, arguments, context.world_size), file=sys.stderr, flush=True)
            return 128 + stop.signum
        if validator is not None:
            validator.restore_best()
        info(f"Training completed in {log.training_seconds:.2f} seconds "
             f"({log.examples_seen / max(log.training_seconds, 1e-9):,.0f} triplets/s)")
        if not context.is_main:
            return 0
        save(args, outputs, model, training_record(args, model, data, log, validator, objective), data, described)
    finally:
        outputs.release()
    similarity_test(model, data.texts)
    if outputs.model is not None:
        source = source_flags((described or {}).get("arguments", {}))
        next_commands(command_line("search", "index", outputs.model, *source))
    return 0


def check_flags(args: argparse.Namespace) -> None:
    if args.output is not None and args.no_save:
        raise PipelineError("--output and --no-save contradict each other; give one of them")
    if args.output is not None and args.output_dir is not None:
        raise PipelineError("give --output FILE or --output-dir DIR, not both")


def plan_outputs(args: argparse.Namespace, context: DistributedContext, resume: dict[str, Any] | None) -> Outputs:
    """The model path (claimed by the first process) and the training-state path of this run. ``--output`` is
    never an input of the run (with --overwrite the model would replace it after the work), and replaces only an
    earlier model; an interrupted run's claim (its process gone) is taken over."""
    if args.no_save:
        return Outputs(None, None, False)
    output_dir = args.output_dir or DEFAULT_OUTPUT_DIR
    if not context.is_main:  # never written: only the first process saves
        model = args.output or output_dir / f"{MODEL_PREFIX}{MODEL_SUFFIX}"
        return Outputs(model, args.resume or beside(model, "training_state", ".pt"), False)
    inputs = [args.triplets_file, args.embeddings, args.resume]
    saved = Path(resume["model_path"]) if resume is not None and resume.get("model_path") else None
    if args.output is None and saved is not None and not saved.exists():
        model = claim_output(saved, MODEL_OUTPUT, inputs, flag="--output")  # the interrupted run's own name
    else:
        model = claim_model_path(args.output, output_dir, args.overwrite, inputs)
    outputs = Outputs(model, args.resume or beside(model, "training_state", ".pt"), True)
    try:
        for companion, kind in companions(model).items():  # the log and its plot follow the model's rule
            check_output(companion, kind, inputs, flag="--output")
        if args.resume is None:
            if args.output is not None and outputs.state.exists() and not args.overwrite:
                raise PipelineError("an interrupted run's training state is here; continue it with --resume "
                                    f"{outputs.state}, or pass --overwrite to start over", outputs.state)
            check_output(outputs.state, TRAINING_STATE_OUTPUT, inputs, flag="--output")
    except PipelineError:
        outputs.release()
        raise
    return outputs


def load_model_and_data(args: argparse.Namespace, triplets_file: TripletsFile, context: DistributedContext,
                        device: torch.device, resume: dict[str, Any] | None) -> tuple[TwoTowerModel, TrainingData]:
    from msmarco_search.embeddings.cbow import load_embeddings
    from msmarco_search.evaluation.validation import split_validation
    from msmarco_search.training.model import build_model

    if not args.embeddings.exists():
        raise PipelineError(f"CBOW embeddings not found; run {command('cbow')} first or pass --embeddings",
                            args.embeddings)
    matrix, vocab, _ = load_embeddings(args.embeddings)
    info(f"Loaded embeddings: {matrix.shape[0]:,} words x {matrix.shape[1]} dimensions")
    # the first process tokenises (and caches) the triplets; the others then read its cache
    if not context.is_main:
        context.barrier()
    hold_out = functools.partial(split_validation, fraction=args.validation_fraction, count=args.validation_queries,
                                 seed=args.seed)
    data = triplets_file.training_data(vocab, args.max_query_length, args.max_passage_length, args.data_dir,
                                       hold_out)
    if context.is_main:
        context.barrier()
    info(f"Loaded {len(data.tokens):,} triplets from {args.triplets_file}")
    model = build_model(vocab, matrix, device, context.enabled,
                        idf_passages=triplets_file.passages() if args.init_token_weights == "idf" else None,
                        tower=args.tower, output_dim=args.output_dim, gru_hidden_dim=args.gru_hidden_dim,
                        token_weights=not args.no_token_weights, freeze_embeddings=args.freeze_embeddings,
                        shared_towers=args.shared_towers, max_query_length=args.max_query_length,
                        max_passage_length=args.max_passage_length)
    if resume is not None and resume.get("model_config") not in (None, vars(model.config)):
        raise PipelineError("cannot resume: the model settings differ from the interrupted run's; run the same "
                            "command with --resume", args.resume)
    # other triplets of the same count passed every other check, and the run went on over other data
    if resume is not None and resume.get("triplets_sample") not in (None, content_sample(args.triplets_file)):
        recorded = resume.get("arguments")
        before = recorded.get("triplets_file") if isinstance(recorded, dict) else None
        raise PipelineError(f"cannot resume: this state was trained on other triplets than {args.triplets_file} "
                            f"(it was {before}); run the same command with --resume", args.resume)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    info(f"Model: {model.config.tower} towers, {trainable:,} trainable parameters")
    return model, data


def make_validator(args: argparse.Namespace, data: TrainingData, model: TwoTowerModel, context: DistributedContext,
                   resumed: bool) -> Validator | None:
    """Scores the held-out queries as training goes; the first process validates, the others train on."""
    from msmarco_search.evaluation.validation import Validator

    if data.validation is None or not context.is_main:
        if args.triplets_file.suffix.lower() == ".tsv":
            info("Validation: none for a triples TSV input")
        return None
    info(f"Validation: {len(data.validation.query_ids):,} held-out {data.validation.queries_kind} "
         f"({data.validation.label}), {len(data.tokens):,} triplets left to train on"
         + (" (the best model is tracked from the resumed step on)" if resumed else ""))
    return Validator(data.validation, model, args.validate_every, keep_best=not args.keep_last)


def train_settings(args: argparse.Namespace) -> TrainSettings:
    from msmarco_search.training.state import TrainSettings

    return TrainSettings(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
                         embedding_learning_rate=args.embedding_learning_rate, seed=args.seed,
                         num_workers=args.num_workers, log_every=args.log_every,
                         checkpoint_every=args.checkpoint_every, max_steps=args.max_steps)


def recorded_arguments(args: argparse.Namespace) -> dict[str, Any]:
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}


def state_extra(args: argparse.Namespace, model: TwoTowerModel, outputs: Outputs,
                objective: Objective) -> dict[str, Any]:
    """What each training state keeps beside the weights: a resumed run checks its settings against these."""
    return {"model_config": vars(model.config), "model_path": str(outputs.model) if outputs.model else None,
            "arguments": recorded_arguments(args), "triplets_sample": content_sample(args.triplets_file),
            "objective": objective.record()}


def training_record(args: argparse.Namespace, model: TwoTowerModel, data: TrainingData, log: TrainingLog,
                    validator: Validator | None, objective: Objective) -> dict[str, Any]:
    """The training log's content (the model file keeps it too, without the per-step entries)."""
    return {**log.as_dict(), "arguments": recorded_arguments(args), "model_config": vars(model.config),
            "objective": objective.record(),
            "num_triplets": data.total, "num_training_triplets": len(data.tokens),
            "validation": validator.report() if validator else None,
            "finished": datetime.now().isoformat(timespec="seconds")}


def trained_on(args: argparse.Namespace, data: TrainingData, metadata: dict[str, Any] | None) -> dict[str, Any]:
    """What evaluation checks its queries against: the triplets' source and every query text of the file
    (held-out ones too: they were looked at to pick the epoch)."""
    from msmarco_search.data.provenance import training_provenance

    streamed = args.triplets_file.suffix.lower() == ".tsv"
    return training_provenance(str(args.triplets_file), metadata,
                               None if streamed else data.texts.queries)


def triplets_metadata(triplets_file: Path) -> dict[str, Any] | None:
    """The metadata JSON beside the triplets (their source, for the model's record), or None. It only describes
    the triplets, so a damaged one, or one that describes other triplets (the file replaced after it), is a
    warning, not a reason to refuse the training."""
    described = metadata_path(triplets_file)
    if not described.is_file() or not triplets_file.is_file():
        return None
    metadata, why = load_side_record(described, triplets_file)
    if metadata is None:
        warn(f"{why}; the model will not record the triplets' source")
    return metadata


def save(args: argparse.Namespace, outputs: Outputs, model: TwoTowerModel, record: dict[str, Any],
         data: TrainingData, metadata: dict[str, Any] | None) -> None:
    from msmarco_search.training.model_file import save_two_tower

    if outputs.model is None:
        info("Not saving the model (--no-save)")
        return
    save_two_tower(outputs.model, model, {"training": {k: v for k, v in record.items() if k != "steps"},
                                          "embeddings_file": str(args.embeddings.resolve()),
                                          "trained_on": trained_on(args, data, metadata)})
    # the log last, naming the model it belongs to: a run killed before it leaves no log of another model
    # that a reader would take for this one's (``records.load_side_record``)
    log_path = beside(outputs.model, "training_log", ".json")
    plot_path = plot_training_log(record, log_path.with_suffix(".png"))
    save_side_record(record, log_path, outputs.model)
    outputs.release()
    info(f"💾 Saved model to {outputs.model}")
    info(f"💾 Saved training log to {log_path} (plot: {plot_path})")
    if outputs.state is not None and outputs.state.exists() and not args.keep_training_state:
        outputs.state.unlink()


def interrupted_message(stop: TrainingInterrupted, arguments: list[str], world_size: int) -> str:
    name = signal.Signals(stop.signum).name
    if stop.state_path is None:
        return f"interrupted by {name} after step {stop.step}; nothing saved"
    return (f"interrupted by {name} after step {stop.step}; to continue, run: "
            f"{resume_command(stop.state_path, arguments, world_size)}")


def resume_command(state_path: Path, arguments: list[str], world_size: int) -> str:
    """The command that continues this run: the same arguments, with ``--resume`` pointing at the state."""
    kept, skip = [], False
    for arg in arguments:
        if skip:
            skip = False
            continue
        if arg == "--resume":
            skip = True
            continue
        if not arg.startswith("--resume="):
            kept.append(arg)
    return shlex.join([*command_words("train", world_size), *kept, "--resume", str(state_path)])


def similarity_test(model: TwoTowerModel, examples: Triplets, queries: int = 3) -> None:
    """The original's quick check: a few queries, their candidate passages ranked by the model."""
    info("\n=== Quick similarity test ===")
    seen: list[int] = []
    for index, query_id in enumerate(examples.query_ids):
        if query_id not in {examples.query_ids[i] for i in seen}:
            seen.append(index)
        if len(seen) == queries:
            break
    for index in seen:
        query_id = examples.query_ids[index]
        relevant = {examples.positives[i] for i, qid in enumerate(examples.query_ids) if qid == query_id}
        # each passage once, labelled by this query's judgments: a passage of another query that this query
        # also judged relevant is "relevant", not "other query"
        labels = dict.fromkeys(sorted(relevant)[:3], "relevant")
        labels.setdefault(examples.negatives[index], "non-relevant")
        for other in range(min(len(examples), 8)):
            if examples.query_ids[other] != query_id:
                labels.setdefault(examples.positives[other], "other query")
        candidates = [(text, "relevant" if text in relevant else label) for text, label in labels.items()]
        q = model.encode([examples.queries[index]], "query")
        p = model.encode([text for text, _ in candidates], "passage")
        scores = (q @ p.T).squeeze(0)
        info(f"Query: {examples.queries[index]}")
        for rank, i in enumerate(scores.argsort(descending=True).tolist(), 1):
            text, label = candidates[i]
            info(f"  {rank}. {scores[i]:+.4f} [{label}] {text[:90]}")
