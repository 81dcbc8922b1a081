"""Stage 3: train a two-tower retrieval model from triplets, on top of the CBOW embeddings.

Writes {output_dir}/two_tower_model_<timestamp>.pt (weights, config, vocabulary; loadable with
torch.load(..., weights_only=True)), ..._training_log.json and a plot of it (..._training_log.png), then ranks
a few queries' candidates as a quick similarity test. A held-out slice of the queries is scored (MRR@10)
after every epoch; the best model is the one saved.

The triplets file is a .pkl from preprocessing/generate_triplets.py, or the official triples TSV
(query<TAB>positive<TAB>negative, e.g. triples.train.small.tsv), which is tokenised in chunks into
memory-mapped arrays (no 39M-string pickle).

While training, ..._training_state.pt holds a resumable state (every --checkpoint-every steps, at each epoch
end, and on Ctrl-C/SIGTERM); run the same command with --resume that file to continue exactly where it
stopped. Several processes: torchrun --nproc-per-node N training/train_two_tower_from_triplets.py ...
(data parallel; --batch-size is per process).
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
from datetime import datetime
from pathlib import Path

import torch

from msmarco_search.arguments import non_negative_int, positive_float, positive_int, seed_int
from msmarco_search.batches import tokenise_triplets
from msmarco_search.cbow import load_embeddings
from msmarco_search.device import pick_device
from msmarco_search.distributed import context_from_environment, init_distributed, shutdown_distributed
from msmarco_search.errors import PipelineError, run_cli
from msmarco_search.fileio import ensure_writable_dir, release, save_json, timestamped_path
from msmarco_search.losses import LOSSES, InBatchSoftmaxLoss, TripletMarginLoss
from msmarco_search.model import TOWERS, TwoTowerConfig, TwoTowerModel, save_two_tower
from msmarco_search.plots import plot_training_log
from msmarco_search.report import info
from msmarco_search.streaming import triples_tsv_arrays, triples_tsv_head
from msmarco_search.train import TrainingInterrupted, TrainSettings, load_training_state, train_two_tower
from msmarco_search.triplets import load_triplets
from msmarco_search.validation import Validator, split_validation
from msmarco_search.vocab import inverse_document_frequency


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("triplets_file", type=Path,
                        help="triplets .pkl from preprocessing/generate_triplets.py, or a triples TSV "
                             "(query<TAB>positive<TAB>negative, as triples.train.small.tsv)")
    parser.add_argument("--epochs", type=positive_int, default=1, help="training epochs (1)")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="triplets per batch (32)")
    parser.add_argument("--learning-rate", type=positive_float, default=1e-4,
                        help="learning rate of the dense layers (1e-4)")
    parser.add_argument("--embedding-learning-rate", type=positive_float, default=1e-2,
                        help="learning rate of the word vectors and token weights (sparse updates; 1e-2)")
    parser.add_argument("--num-workers", type=non_negative_int, default=0, help="DataLoader workers (0)")
    parser.add_argument("--no-save", action="store_true", help="do not save the trained model")
    parser.add_argument("--embeddings", type=Path, default=Path("checkpoints/msmarco_word2vec.pt"),
                        help="CBOW embeddings file (checkpoints/msmarco_word2vec.pt)")
    parser.add_argument("--output-dir", type=Path, default=Path("checkpoints"),
                        help="where the model and its log go (./checkpoints)")
    parser.add_argument("--data-dir", type=Path, default=Path("data"),
                        help="cache folder for the tokenised triplets (./data)")
    parser.add_argument("--seed", type=seed_int, default=42, help="random seed (42)")
    parser.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N, mps")
    parser.add_argument("--threads", type=non_negative_int, default=1,
                        help="CPU threads for PyTorch (1: fastest on a small or shared CPU, see "
                             "docs/benchmarks.md; 0 = PyTorch's default, all cores)")
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
    model.add_argument("--output-dim", type=non_negative_int, default=0,
                       help="size of the output vectors (0 = the embedding size)")
    model.add_argument("--gru-hidden-dim", type=positive_int, default=256, help="GRU state size per direction")
    model.add_argument("--max-query-length", type=positive_int, default=32, help="tokens kept per query (32)")
    model.add_argument("--max-passage-length", type=positive_int, default=128,
                       help="tokens kept per passage (128)")
    objective = parser.add_argument_group("objective")
    objective.add_argument("--loss", choices=sorted(LOSSES), default="softmax",
                           help="softmax: in-batch softmax with each triplet's negative (default); "
                                "triplet: the classic margin loss")
    objective.add_argument("--scale", type=positive_float, default=20.0, help="softmax inverse temperature (20)")
    objective.add_argument("--margin", type=positive_float, default=0.2, help="triplet-loss margin (0.2)")
    parser.add_argument("--log-every", type=positive_int, default=10, help="log the loss every N steps (10)")
    validation = parser.add_argument_group("validation")
    validation.add_argument("--validation-fraction", type=float, default=0.05,
                            help="share of the queries held out to score MRR@10 on (0.05, at most 2000 "
                                 "queries; 0 = none)")
    validation.add_argument("--validation-queries", type=non_negative_int, default=None,
                            help="hold out exactly this many queries instead")
    validation.add_argument("--validate-every", type=non_negative_int, default=0,
                            help="also validate every N steps (0 = after each epoch only)")
    validation.add_argument("--keep-last", action="store_true",
                            help="save the last model, not the best one on the validation queries")
    return parser.parse_args(argv)


def similarity_test(model: TwoTowerModel, vocab, triplets, device: torch.device, queries: int = 3) -> None:
    """The original's quick check: a few queries, their candidate passages ranked by the model."""
    info("\n=== Quick similarity test ===")
    seen: list[int] = []
    for index, query_id in enumerate(triplets.query_ids):
        if query_id not in {triplets.query_ids[i] for i in seen}:
            seen.append(index)
        if len(seen) == queries:
            break
    for index in seen:
        candidates = [(triplets.positives[index], "relevant"), (triplets.negatives[index], "non-relevant")]
        for other in range(len(triplets))[:8]:
            if triplets.query_ids[other] != triplets.query_ids[index]:
                candidates.append((triplets.positives[other], "other query"))
        q = model.encode([triplets.queries[index]], "query")
        p = model.encode([text for text, _ in candidates], "passage")
        scores = (q @ p.T).squeeze(0)
        info(f"Query: {triplets.queries[index]}")
        for rank, i in enumerate(scores.argsort(descending=True).tolist(), 1):
            text, label = candidates[i]
            info(f"  {rank}. {scores[i]:+.4f} [{label}] {text[:90]}")


def resume_command(state_path: Path, world_size: int) -> str:
    """The command that continues this run: the same arguments, with ``--resume`` pointing at the state."""
    args, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
            continue
        if arg == "--resume":
            skip = True
            continue
        if not arg.startswith("--resume="):
            args.append(arg)
    launcher = (["torchrun", "--nproc-per-node", str(world_size)] if world_size > 1 else ["uv", "run"])
    return shlex.join([*launcher, sys.argv[0], *args, "--resume", str(state_path)])


def load_data(args: argparse.Namespace, vocab, triplets):
    """Token arrays of the training triplets, a few triplets as text (for the similarity test), and the
    held-out validation set (none for a triples TSV: its lines carry no query ids to hold out by)."""
    if triplets is None:
        data = triples_tsv_arrays(args.triplets_file, vocab, args.max_query_length, args.max_passage_length,
                                  args.data_dir)
        return data, triples_tsv_head(args.triplets_file), None
    stat = args.triplets_file.stat()
    train_triplets, validation = split_validation(triplets, args.validation_fraction, args.validation_queries,
                                                  args.seed)
    held_out = f"|held-out:{validation.fingerprint()}" if validation else ""
    data = tokenise_triplets(train_triplets, vocab, args.max_query_length, args.max_passage_length,
                             cache_dir=args.data_dir, source_identity=f"{args.triplets_file.resolve()}:"
                                                                      f"{stat.st_size}:{stat.st_mtime_ns}{held_out}")
    return data, triplets, validation


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    context = context_from_environment()
    if not context.is_main:  # only the first process prints and writes files
        os.environ["MSMARCO_SEARCH_NO_PROGRESS"] = "1"
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process
    device = init_distributed(context, pick_device(args.device))
    try:
        status = train(args, context, device)
        context.barrier()  # the others wait while the first process saves: leaving early aborts gloo
        return status
    finally:
        shutdown_distributed(context)


def train(args: argparse.Namespace, context, device: torch.device) -> int:
    if device.type == "cpu" and args.threads:
        torch.set_num_threads(args.threads)
    info(f"Using device: {device}" + (f" ({context.world_size} processes)" if context.enabled else "")
         + (f", {torch.get_num_threads()} CPU thread(s)" if device.type == "cpu" else ""))
    if not args.no_save and context.is_main:
        ensure_writable_dir(args.output_dir)  # before hours of training, not after them
    resume = load_training_state(args.resume) if args.resume is not None else None
    if args.triplets_file.suffix.lower() == ".tsv":
        triplets = None  # streamed below, once the vocabulary is known
        if not args.triplets_file.is_file():
            raise PipelineError("file not found", args.triplets_file)
        if args.init_token_weights == "idf":
            raise PipelineError("--init-token-weights idf needs a triplets .pkl (a triples TSV is not read whole)",
                                args.triplets_file)
    else:
        triplets = load_triplets(args.triplets_file)
    if not args.embeddings.exists():
        raise PipelineError("CBOW embeddings not found; run text_embeddings/train_text_embeddings_cbow_msmarco.py "
                            "first or pass --embeddings", args.embeddings)
    matrix, vocab, _ = load_embeddings(args.embeddings)
    info(f"Loaded embeddings: {matrix.shape[0]:,} words x {matrix.shape[1]} dimensions")
    # the first process tokenises (and caches) the triplets; the others then read its cache
    if not context.is_main:
        context.barrier()
    data, triplets, validation = load_data(args, vocab, triplets)
    if context.is_main:
        context.barrier()
    info(f"Loaded {len(data):,} triplets from {args.triplets_file}")

    config = TwoTowerConfig(
        vocab_size=len(vocab), embedding_dim=matrix.shape[1], output_dim=args.output_dim, tower=args.tower,
        gru_hidden_dim=args.gru_hidden_dim, token_weights=not args.no_token_weights,
        freeze_embeddings=args.freeze_embeddings,
        # sparse gradients, except where the backend cannot all-reduce or run them (NCCL, MPS)
        sparse_embeddings=device.type != "mps" and not (context.enabled and device.type == "cuda"),
        shared_towers=args.shared_towers, max_query_length=args.max_query_length,
        max_passage_length=args.max_passage_length)
    if resume is not None and resume.get("model_config") not in (None, vars(config)):
        raise PipelineError("cannot resume: the model settings differ from the interrupted run's; run the same "
                            "command with --resume", args.resume)
    model = TwoTowerModel(config, vocab, matrix)
    if args.init_token_weights == "idf" and config.token_weights and config.tower == "mean":
        passages = list(dict.fromkeys(triplets.positives + triplets.negatives))
        idf = torch.from_numpy(inverse_document_frequency(vocab, passages)).clamp_min(1e-4).log()
        for tower in {id(t): t for t in (model.query_tower, model.passage_tower)}.values():
            tower.token_weight.weight.data[:, 0] = idf
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    info(f"Model: {config.tower} towers, {trainable:,} trainable parameters")
    validator = None
    if validation is not None and context.is_main:  # the first process validates; the others train on
        validator = Validator(validation, model, args.validate_every, keep_best=not args.keep_last)
        info(f"Validation: {len(validation.query_ids):,} held-out queries, {len(data):,} triplets left to train on"
             + ("" if resume is None else " (the best model is tracked from the resumed step on)"))
    elif triplets is not None and args.triplets_file.suffix.lower() == ".tsv":
        info("Validation: none for a triples TSV input")
    loss_fn = InBatchSoftmaxLoss(args.scale) if args.loss == "softmax" else TripletMarginLoss(args.margin)
    settings = TrainSettings(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
                             embedding_learning_rate=args.embedding_learning_rate, seed=args.seed,
                             num_workers=args.num_workers, log_every=args.log_every,
                             checkpoint_every=args.checkpoint_every, max_steps=args.max_steps)

    path = state_path = None
    if not args.no_save:
        if resume is not None and resume.get("model_path") and not Path(resume["model_path"]).exists():
            path = Path(resume["model_path"])
        elif context.is_main:
            path = timestamped_path(args.output_dir, "two_tower_model", ".pt")
        else:
            path = args.output_dir / "two_tower_model.pt"  # never written: only the first process saves
        state_path = args.resume if args.resume is not None else path.with_name(path.stem + "_training_state.pt")
    extra = {"model_config": vars(config), "model_path": str(path) if path else None,
             "arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    try:
        log = train_two_tower(model, data, loss_fn, settings, device, state_path=state_path, resume=resume,
                              state_extra=extra, context=context,
                              after_epoch=validator.after_epoch if validator else None,
                              after_step=validator.after_step if validator and args.validate_every else None)
    except TrainingInterrupted as stop:
        if path is not None and context.is_main:
            release(path)
        if stop.state_path is not None:
            message = (f"interrupted by {signal.Signals(stop.signum).name} after step {stop.step}; to continue, "
                       f"run: {resume_command(stop.state_path, context.world_size)}")
        else:
            message = f"interrupted by {signal.Signals(stop.signum).name} after step {stop.step}; nothing saved"
        if context.is_main:
            print(message, file=sys.stderr, flush=True)
        return 128 + stop.signum
    except BaseException:
        if path is not None and context.is_main:
            release(path)
        raise
    if validator is not None:
        validator.restore_best()
    info(f"Training completed in {log.training_seconds:.2f} seconds "
         f"({log.examples_seen / max(log.training_seconds, 1e-9):,.0f} triplets/s)")
    if not context.is_main:
        return 0

    total = len(data) if args.triplets_file.suffix.lower() == ".tsv" else len(triplets)
    record = {**log.as_dict(), "arguments": extra["arguments"], "model_config": vars(config),
              "num_triplets": total, "num_training_triplets": len(data),
              "validation": validator.report() if validator else None,
              "finished": datetime.now().isoformat(timespec="seconds")}
    if path is not None:
        try:
            save_two_tower(path, model, {"training": {k: v for k, v in record.items() if k != "steps"},
                                                "embeddings_file": str(args.embeddings)})
            log_path = path.with_name(path.stem + "_training_log.json")
            save_json(record, log_path)
            plot_path = plot_training_log(record, log_path.with_suffix(".png"))
        finally:
            release(path)
        info(f"💾 Saved model to {path}")
        info(f"💾 Saved training log to {log_path} (plot: {plot_path})")
        if state_path is not None and state_path.exists() and not args.keep_training_state:
            state_path.unlink()
    else:
        info("Not saving the model (--no-save)")
    similarity_test(model, vocab, triplets, device)
    return 0


if __name__ == "__main__":
    run_cli(main)
