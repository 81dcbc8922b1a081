"""Stage 1: train CBOW word embeddings (gensim Word2Vec, sg=0) on MS MARCO text.

Writes {checkpoint_dir}/msmarco_word2vec.pt: the embedding matrix, word-to-index and index-to-word, with
<pad> at 0 and <unk> at 1, loadable with torch.load(..., weights_only=True).
"""

from __future__ import annotations

import argparse
import multiprocessing
from pathlib import Path

from msmarco_search.arguments import add_source_arguments, non_negative_int, positive_int, seed_int, source_from_args
from msmarco_search.cbow import (
    EMBEDDINGS_FILENAME,
    CbowSettings,
    embeddings_from_gensim,
    prepare_corpus,
    save_embeddings,
    train_cbow,
)
from msmarco_search.errors import run_cli
from msmarco_search.fileio import atomic_write, ensure_writable_dir
from msmarco_search.report import info


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--checkpoint-dir", default="./checkpoints",
                        help="folder for msmarco_word2vec.pt (default ./checkpoints)")
    parser.add_argument("--max-samples", type=positive_int, default=None,
                        help="read at most this many queries (rows) or, for TSVs, collection passages")
    parser.add_argument("--vector-size", type=positive_int, default=300, help="embedding dimension (300)")
    parser.add_argument("--window", type=positive_int, default=5, help="context window (5)")
    parser.add_argument("--min-count", type=positive_int, default=5, help="ignore rarer words (5)")
    parser.add_argument("--epochs", type=positive_int, default=5, help="passes over the corpus (5)")
    parser.add_argument("--workers", type=non_negative_int, default=0,
                        help=f"training threads; 0 = all CPU cores ({multiprocessing.cpu_count()} here)")
    parser.add_argument("--seed", type=seed_int, default=42, help="random seed (42)")
    parser.add_argument("--resume-from", type=Path, default=None,
                        help="continue training a gensim model saved with --save-gensim-model")
    parser.add_argument("--save-gensim-model", action="store_true",
                        help="also save the full gensim model (msmarco_word2vec.gensim) to continue later")
    parser.add_argument("--no-word-benchmarks", action="store_true",
                        help="skip the analogy and word-similarity benchmarks printed at the end")
    add_source_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    checkpoint_dir = Path(args.checkpoint_dir)
    info("Starting CBOW implementation with MS Marco dataset")
    info(f"Checkpoints will be saved to: {checkpoint_dir}")
    ensure_writable_dir(checkpoint_dir, "checkpoint folder")  # before the work, not after it
    ensure_writable_dir(args.data_dir, "data folder")
    source = source_from_args(args)
    corpus_file, _ = prepare_corpus(source, args.data_dir, args.max_samples)
    info(f"✅ Dataset loaded (cached in: {args.data_dir})")
    settings = CbowSettings(vector_size=args.vector_size, window=args.window, min_count=args.min_count,
                            epochs=args.epochs, workers=args.workers, seed=args.seed)
    info(f"Training CBOW (sg=0, {settings.vector_size}-d, window {settings.window}, min count "
         f"{settings.min_count}, {settings.epochs} epochs, {settings.resolved_workers()} workers)...")
    model, seconds = train_cbow(corpus_file, settings, resume_from=args.resume_from)
    info(f"Training completed in {seconds:.2f} seconds ({seconds / 60:.2f} minutes)")

    matrix, vocab = embeddings_from_gensim(model)
    metadata = {"settings": vars(settings), "source": source.description, "max_samples": args.max_samples,
                "training_seconds": seconds, "corpus_file": str(corpus_file),
                "words_in_corpus": int(model.corpus_total_words)}
    path = save_embeddings(checkpoint_dir / EMBEDDINGS_FILENAME, matrix, vocab, metadata)
    info(f"💾 Saved embeddings to {path}")
    if args.save_gensim_model:
        gensim_path = checkpoint_dir / "msmarco_word2vec.gensim"
        atomic_write(gensim_path, lambda tmp: model.save(str(tmp), separately=[]))
        info(f"💾 Saved the gensim model to {gensim_path}")

    info("\n=== Model Statistics ===")
    info(f"Vocabulary size: {len(vocab):,}")
    info(f"Embedding dimension: {matrix.shape[1]}")
    info(f"Total parameters: {matrix.numel():,}")
    info(f"Training time: {seconds:.2f} seconds ({seconds / 60:.2f} minutes)")
    if not args.no_word_benchmarks:
        from msmarco_search.word_benchmarks import report_word_embedding_quality, word_embedding_quality

        report_word_embedding_quality(word_embedding_quality(matrix, vocab))
    return 0


if __name__ == "__main__":
    run_cli(main)
