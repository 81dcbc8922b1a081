"""Stage 1: train CBOW word embeddings (gensim Word2Vec, sg=0) on MS MARCO text.

Writes {checkpoint_dir}/msmarco_word2vec.pt: the embedding matrix, word-to-index and index-to-word, with
<pad> at 0 and <unk> at 1, loadable with torch.load(..., weights_only=True). With --save-gensim-model, also
{checkpoint_dir}/msmarco_word2vec.gensim, the full gensim model that --resume-from continues.
"""

from __future__ import annotations

import argparse
import multiprocessing
from pathlib import Path

from msmarco_search.cli.arguments import (
    add_source_arguments,
    cbow_window,
    dimension,
    epoch_count,
    positive_int,
    seed_int,
    source_flags,
    source_from_args,
    thread_count,
)
from msmarco_search.core.commands import command_line, program
from msmarco_search.core.errors import PipelineError
from msmarco_search.core.report import info, next_commands, warn
from msmarco_search.core.text import STEMMERS
from msmarco_search.io.atomic import ensure_writable_dir
from msmarco_search.io.outputs import check_output, output_path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=program("cbow"), description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--checkpoint-dir", "--output-dir", dest="checkpoint_dir", default="./checkpoints",
                        help="folder for msmarco_word2vec.pt (default ./checkpoints)")
    parser.add_argument("--max-samples", type=positive_int, default=None,
                        help="read at most this many queries (rows) or, for TSVs, collection passages")
    parser.add_argument("--vector-size", type=dimension, default=300, help="embedding dimension (300)")
    parser.add_argument("--window", type=cbow_window, default=5, help="context window (5)")
    parser.add_argument("--min-count", type=positive_int, default=5, help="ignore rarer words (5)")
    parser.add_argument("--epochs", type=epoch_count, default=5, help="passes over the corpus (5)")
    parser.add_argument("--workers", type=thread_count, default=0,
                        help=f"training threads; 0 = all CPU cores ({multiprocessing.cpu_count()} here)")
    parser.add_argument("--seed", type=seed_int, default=42, help="random seed (42)")
    parser.add_argument("--resume-from", type=Path, default=None,
                        help="continue training a gensim model saved with --save-gensim-model")
    parser.add_argument("--save-gensim-model", action="store_true",
                        help="also save the full gensim model (msmarco_word2vec.gensim) to continue later")
    parser.add_argument("--stemmer", choices=STEMMERS, default="none",
                        help="stem the corpus's words (Snowball English) before training, so the vectors, and the "
                             "two-tower trained on them, are of stems; recorded in the embeddings file (none). "
                             "With --resume-from, give the stemmer the model was trained with")
    parser.add_argument("--no-word-benchmarks", action="store_true",
                        help="skip the analogy and word-similarity benchmarks printed at the end")
    add_source_arguments(parser)
    return parser.parse_args(argv)


def _check_outputs(args: argparse.Namespace, checkpoint_dir: Path, data_dir: Path) -> None:
    """Every path the run will write, checked before the work: found at the end, a problem costs the run. Each
    output file replaces only an earlier one of its kind, never an input of the run (``outputs.check_output``);
    the checkpoint folder itself is checked before it is claimed (``main``)."""
    from msmarco_search.embeddings.cbow import cbow_outputs

    ensure_writable_dir(data_dir, "data folder")
    inputs = [path for path in (args.resume_from, *(args.dataset_path or [])) if path is not None]
    for target, kind in cbow_outputs(checkpoint_dir, args.save_gensim_model).items():
        if target.exists() and not target.is_file():  # a folder there: the final rename would fail
            raise PipelineError("is in the way of the output file (it is not a file); move it or pass another -c",
                                target)
        check_output(target, kind, inputs, flag="-c/--checkpoint-dir")


def _warn_about_ignored_flags(args: argparse.Namespace, model: object) -> None:
    """A resumed model keeps its own shape and window; say so rather than silently train another shape."""
    for flag, name in (("--vector-size", "vector_size"), ("--window", "window"), ("--min-count", "min_count")):
        given, kept = getattr(args, name), getattr(model, name)
        if given != kept:
            warn(f"{flag} {given} ignored: {args.resume_from} keeps its {name.replace('_', ' ')} of {kept}")


def main(argv: list[str] | None = None) -> int:
    """Train the vectors and save them; a problem the user can fix raises ``PipelineError`` (``cli.run`` prints it)."""
    args = parse_args(argv)
    from msmarco_search.embeddings.cbow import check_resumed_stemmer, claim_output_folder
    from msmarco_search.io.gensim_safe import load_gensim_model

    checkpoint_dir = output_path(args.checkpoint_dir)  # a name of its own, through a link (an odd name: one line)
    info("Starting CBOW implementation with MS Marco dataset")
    info(f"Checkpoints will be saved to: {checkpoint_dir}")
    if checkpoint_dir.exists() and not checkpoint_dir.is_dir():
        raise PipelineError("is a file, not a folder; pass another -c/--checkpoint-dir", checkpoint_dir)
    ensure_writable_dir(checkpoint_dir, "checkpoint folder")
    # held until the files are written: a second run into this folder is refused, not silently overwritten
    with claim_output_folder(checkpoint_dir):
        resumed = None
        if args.resume_from is not None:  # before the corpus: a bad model is refused at once
            resumed = load_gensim_model(args.resume_from)
            check_resumed_stemmer(args.resume_from, args.stemmer)
            _warn_about_ignored_flags(args, resumed)
        _check_outputs(args, checkpoint_dir, Path(args.data_dir))
        return _run(args, checkpoint_dir, resumed)


def _run(args: argparse.Namespace, checkpoint_dir: Path, resumed: object | None) -> int:
    from msmarco_search.embeddings.cbow import (
        EMBEDDINGS_FILENAME,
        CbowSettings,
        embeddings_from_gensim,
        prepare_corpus,
        save_embeddings,
        save_gensim_model,
        train_cbow,
    )
    from msmarco_search.io.gensim_safe import GENSIM_FILENAME

    source = source_from_args(args)
    corpus_file, _ = prepare_corpus(source, args.data_dir, args.max_samples, args.stemmer)
    info(f"✅ Dataset loaded (cached in: {args.data_dir})")
    settings = CbowSettings(vector_size=args.vector_size, window=args.window, min_count=args.min_count,
                            epochs=args.epochs, workers=args.workers, seed=args.seed)
    if resumed is not None:  # the metadata records what was trained, not the flags the model overrode
        settings.vector_size, settings.window, settings.min_count = (resumed.vector_size, resumed.window,
                                                                     resumed.min_count)
    workers = settings.resolved_workers()
    info(f"Training CBOW (sg=0, {settings.vector_size}-d, window {settings.window}, min count "
         f"{settings.min_count}, {settings.epochs} epochs, {workers} worker{'s' * (workers != 1)})...")
    model, seconds = train_cbow(corpus_file, settings, model=resumed)
    info(f"Training completed in {seconds:.2f} seconds ({seconds / 60:.2f} minutes)")

    matrix, vocab = embeddings_from_gensim(model, args.stemmer)
    metadata = {"settings": vars(settings), "stemmer": args.stemmer, "source": source.description,
                "max_samples": args.max_samples,
                "training_seconds": seconds, "corpus_file": str(corpus_file),
                "words_in_corpus": int(model.corpus_total_words),
                "resumed_from": None if args.resume_from is None else str(args.resume_from)}
    path = save_embeddings(checkpoint_dir / EMBEDDINGS_FILENAME, matrix, vocab, metadata)
    info(f"💾 Saved embeddings to {path}")
    if args.save_gensim_model:
        gensim_path = save_gensim_model(model, checkpoint_dir / GENSIM_FILENAME, args.stemmer)
        info(f"💾 Saved the gensim model to {gensim_path}")

    info("\n=== Model Statistics ===")
    info(f"Vocabulary size: {len(vocab):,}")
    info(f"Embedding dimension: {matrix.shape[1]}")
    info(f"Total parameters: {matrix.numel():,}")
    info(f"Training time: {seconds:.2f} seconds ({seconds / 60:.2f} minutes)")
    if not args.no_word_benchmarks:
        from msmarco_search.embeddings.word_benchmarks import report_word_embedding_quality, word_embedding_quality

        report_word_embedding_quality(word_embedding_quality(matrix, vocab))
    next_commands(command_line("triplets", *source_flags(vars(args))))
    return 0
