"""Command-line flags shared by the scripts, so every stage spells them the same way."""

from __future__ import annotations

import argparse
import math
from typing import Any

from .report import info
from .sources import HUB_CONFIGS, Source, open_source


def add_source_arguments(parser: Any) -> None:
    """The data-source flags every stage shares."""
    group = parser.add_argument_group("data source")
    group.add_argument("--dataset-path", nargs="+", default=None, metavar="PATH",
                       help="read local data instead of the hub: row-layout .jsonl/.json/.parquet file(s) or "
                            "folder, a datasets.save_to_disk folder, or the official TSVs (a folder, or "
                            "collection/queries/qrels/top1000 files named one by one)")
    group.add_argument("--dataset-config", default="v1.1", choices=HUB_CONFIGS, help="hub config (default v1.1)")
    group.add_argument("--split", default=DefaultSplit("train"),
                       help="split: hub/datasets split, or the <split> in queries.<split>.tsv (default train; a "
                            "split given must name what is read: see the README's Data sources)")
    group.add_argument("--data-dir", default="data", help="cache folder for the hub and derived files (./data)")
    group.add_argument("--min-relevance", type=positive_int, default=1,
                       help="TSV qrels: the lowest grade that counts as relevant (default 1; at least 1, since "
                            "grade 0 and negative grades mean judged not relevant)")


class DefaultSplit(str):
    """``--split``'s default value. argparse keeps a default as it is, so this type tells a split the user left
    at its default (a folder's one file of each kind then needs no split name) from one typed, which must name
    what is read."""


def split_given(args: Any) -> bool:
    """Whether the user gave ``--split`` (see ``DefaultSplit``)."""
    return not isinstance(args.split, DefaultSplit)


def source_from_args(args: Any) -> Source:
    source = open_source(args.dataset_path, args.dataset_config, args.split, args.data_dir, args.min_relevance,
                         split_given=split_given(args))
    info(f"Data source: {source.description}")
    return source


def positive_int(text: str) -> int:
    """argparse type for counts that must be >= 1."""
    try:
        value = int(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from error
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type for counts that may be 0."""
    try:
        value = int(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from error
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type for a finite number >= 0 (BM25's k1: 0 is binary term weighting; ``nan`` scores nothing)."""
    try:
        value = float(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from error
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of at least 0, got {text}")
    return value


def positive_float(text: str) -> float:
    """argparse type for rates and scales: a finite number > 0 (``inf`` would turn the loss into NaN)."""
    try:
        value = float(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from error
    if not math.isfinite(value) or not value > 0:
        raise argparse.ArgumentTypeError(f"must be a finite number greater than 0, got {text}")
    return value


SEED_LIMIT = 2**32  # numpy's and gensim's seeds are unsigned 32-bit


def seed_int(text: str) -> int:
    """argparse type for ``--seed``: a whole number in [0, 2**32), which every random generator here accepts."""
    value = non_negative_int(text)
    if value >= SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"must be below 2**32, got {value}")
    return value
