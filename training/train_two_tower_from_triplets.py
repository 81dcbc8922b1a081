"""Stage 3: train a two-tower retrieval model from triplets, on top of the CBOW embeddings.

Writes {output_dir}/two_tower_model_<timestamp>.pt (weights, config, vocabulary; loadable with
torch.load(..., weights_only=True)), ..._training_log.json and a plot of it (..._training_log.png), then ranks
a few queries' candidates as a quick similarity test. A held-out slice of the queries is scored (MRR@10)
after every epoch; the best model is the one saved.
"""

from __future__ import annotations

import argparse
from datetime import datetime
from pathlib import Path

import torch

from msmarco_search.arguments import non_negative_int, positive_float, positive_int, seed_int
from msmarco_search.batches import tokenise_triplets
from msmarco_search.cbow import load_embeddings
from msmarco_search.checkpoints import ensure_writable_dir, release, save_json, timestamped_path
from msmarco_search.device import pick_device
from msmarco_search.errors import PipelineError, run_cli
from msmarco_search.evaluate import inverse_document_frequency
from msmarco_search.losses import LOSSES, InBatchSoftmaxLoss, TripletMarginLoss
from msmarco_search.model import TOWERS, TwoTowerConfig, TwoTowerModel, encode_texts, save_two_tower
from msmarco_search.plots import plot_training_log
from msmarco_search.report import info
from msmarco_search.train import TrainSettings, train_two_tower
from msmarco_search.triplets import load_triplets
from msmarco_search.validation import Validator, split_validation


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("triplets_file", type=Path, help="triplets .pkl from preprocessing/generate_triplets.py")
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
        q = encode_texts(model, vocab, [triplets.queries[index]], "query", device)
        p = encode_texts(model, vocab, [text for text, _ in candidates], "passage", device)
        scores = (q @ p.T).squeeze(0)
        info(f"Query: {triplets.queries[index]}")
        for rank, i in enumerate(scores.argsort(descending=True).tolist(), 1):
            text, label = candidates[i]
            info(f"  {rank}. {scores[i]:+.4f} [{label}] {text[:90]}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = pick_device(args.device)
    info(f"Using device: {device}")
    if not args.no_save:
        ensure_writable_dir(args.output_dir)  # before hours of training, not after them
    triplets = load_triplets(args.triplets_file)
    if not args.embeddings.exists():
        raise PipelineError("CBOW embeddings not found; run text_embeddings/train_text_embeddings_cbow_msmarco.py "
                            "first or pass --embeddings", args.embeddings)
    matrix, vocab, _ = load_embeddings(args.embeddings)
    info(f"Loaded {len(triplets):,} triplets from {args.triplets_file}")
    info(f"Loaded embeddings: {matrix.shape[0]:,} words x {matrix.shape[1]} dimensions")

    config = TwoTowerConfig(
        vocab_size=len(vocab), embedding_dim=matrix.shape[1], output_dim=args.output_dim, tower=args.tower,
        gru_hidden_dim=args.gru_hidden_dim, token_weights=not args.no_token_weights,
        freeze_embeddings=args.freeze_embeddings, sparse_embeddings=device.type != "mps",
        shared_towers=args.shared_towers, max_query_length=args.max_query_length,
        max_passage_length=args.max_passage_length)
    model = TwoTowerModel(config, matrix)
    if args.init_token_weights == "idf" and config.token_weights and config.tower == "mean":
        passages = list(dict.fromkeys(triplets.positives + triplets.negatives))
        idf = torch.from_numpy(inverse_document_frequency(vocab, passages)).clamp_min(1e-4).log()
        for tower in {id(t): t for t in (model.query_tower, model.passage_tower)}.values():
            tower.token_weight.weight.data[:, 0] = idf
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    info(f"Model: {config.tower} towers, {trainable:,} trainable parameters")
    stat = args.triplets_file.stat()
    train_triplets, validation = split_validation(triplets, args.validation_fraction, args.validation_queries,
                                                  args.seed)
    held_out = f"|held-out:{validation.fingerprint()}" if validation else ""
    data = tokenise_triplets(train_triplets, vocab, args.max_query_length, args.max_passage_length,
                             cache_dir=args.data_dir, source_identity=f"{args.triplets_file.resolve()}:"
                                                                      f"{stat.st_size}:{stat.st_mtime_ns}{held_out}")
    validator = None
    if validation is not None:
        validator = Validator(validation, model, vocab, device, args.validate_every, keep_best=not args.keep_last)
        info(f"Validation: {len(validation.query_ids):,} held-out queries, {len(train_triplets):,} triplets "
             "left to train on")
    loss_fn = InBatchSoftmaxLoss(args.scale) if args.loss == "softmax" else TripletMarginLoss(args.margin)
    settings = TrainSettings(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
                             embedding_learning_rate=args.embedding_learning_rate, seed=args.seed,
                             num_workers=args.num_workers, log_every=args.log_every)
    log = train_two_tower(model, data, loss_fn, settings, device,
                          after_epoch=validator.after_epoch if validator else None,
                          after_step=validator.after_step if validator and args.validate_every else None)
    if validator is not None:
        validator.restore_best()
    info(f"Training completed in {log.training_seconds:.2f} seconds "
         f"({log.examples_seen / max(log.training_seconds, 1e-9):,.0f} triplets/s)")

    record = {**log.as_dict(), "arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "model_config": vars(config), "num_triplets": len(triplets),
              "validation": validator.report() if validator else None,
              "finished": datetime.now().isoformat(timespec="seconds")}
    if not args.no_save:
        path = timestamped_path(args.output_dir, "two_tower_model", ".pt")
        try:
            save_two_tower(path, model, vocab, {"training": {k: v for k, v in record.items() if k != "steps"},
                                                "embeddings_file": str(args.embeddings)})
            log_path = path.with_name(path.stem + "_training_log.json")
            save_json(record, log_path)
            plot_path = plot_training_log(record, log_path.with_suffix(".png"))
        finally:
            release(path)
        info(f"💾 Saved model to {path}")
        info(f"💾 Saved training log to {log_path} (plot: {plot_path})")
    else:
        info("Not saving the model (--no-save)")
    similarity_test(model, vocab, triplets, device)
    return 0


if __name__ == "__main__":
    run_cli(main)
