"""Stage 2: generate (query, relevant passage, non-relevant passage) triplets from MS MARCO.

Writes {output_dir}/msmarco_triplets_<N>k_<timestamp>.pkl (plain lists of strings, loaded by the project
with an unpickler that refuses every global) and ..._metadata.json (source, split, counts, strategy, seed,
arguments, time).
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime
from pathlib import Path

from msmarco_search.arguments import add_source_arguments, positive_int, seed_int, source_from_args
from msmarco_search.checkpoints import ensure_writable_dir, release, save_json, timestamped_path
from msmarco_search.errors import PipelineError, run_cli
from msmarco_search.report import info
from msmarco_search.triplets import (
    NEGATIVE_STRATEGIES,
    generate_triplets,
    metadata_path,
    save_triplets,
    triplets_prefix,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-samples", type=positive_int, default=50000,
                        help="number of queries to read (default 50000)")
    parser.add_argument("--negatives", choices=NEGATIVE_STRATEGIES, default="hard",
                        help="hard: unselected passages of the same query; random: passages of other queries; "
                             "mixed: either, at even odds (default hard)")
    parser.add_argument("--seed", type=seed_int, default=42, help="random seed (42)")
    parser.add_argument("--output-dir", default=None, help="where to write the triplets (default: --data-dir)")
    add_source_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    output_dir = Path(args.output_dir or args.data_dir)
    ensure_writable_dir(output_dir)  # before the work, not after it
    source = source_from_args(args)
    triplets, stats = generate_triplets(source.records(args.max_samples), negatives=args.negatives,
                                        seed=args.seed, has_candidates=source.has_candidates,
                                        total=args.max_samples)
    if len(triplets) == 0:
        hint = ("; check --split, --min-relevance and that the qrels name the queries" if stats.queries_read == 0
                else "")
        raise PipelineError(f"no triplets could be made from {source.description}: {stats.queries_read} queries "
                            f"read, {stats.queries_without_selected} without a selected passage, "
                            f"{stats.queries_without_negative} without a usable negative{hint}")
    sample_size = min(args.max_samples, stats.queries_read)
    path = timestamped_path(output_dir, triplets_prefix(sample_size), ".pkl")
    try:
        metadata = {
            "source": source.description, "source_identity": source.identity(), "split": args.split,
            "dataset_config": args.dataset_config if not args.dataset_path else None,
            "negative_strategy": args.negatives, "seed": args.seed, "max_samples": args.max_samples,
            "num_triplets": len(triplets), "num_queries": len(set(triplets.query_ids)),
            **vars(stats), "arguments": vars(args), "created": datetime.now().isoformat(timespec="seconds"),
            "seconds": round(time.perf_counter() - started, 3),
        }
        save_triplets(triplets, path, metadata)
        save_json(metadata, metadata_path(path))
    finally:
        release(path)
    info(f"✅ {len(triplets):,} triplets from {stats.queries_read:,} queries "
         f"({stats.queries_without_selected:,} skipped without a selected passage; "
         f"{stats.hard_negatives:,} hard and {stats.random_negatives:,} random negatives)")
    info(f"💾 Saved triplets to {path}")
    info(f"💾 Saved metadata to {metadata_path(path)}")
    return 0


if __name__ == "__main__":
    run_cli(main)
