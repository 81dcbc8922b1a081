"""Command-line flags shared by the scripts, so every stage spells them the same way."""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable, Mapping
from typing import Any

from msmarco_search.core.errors import short
from msmarco_search.core.report import info
from msmarco_search.core.text import STEMMERS
from msmarco_search.data.hub import HUB_CONFIGS
from msmarco_search.data.records import Source
from msmarco_search.data.sources import open_source
from msmarco_search.index.bm25 import BM25Settings
from msmarco_search.search.fusion import DEFAULT_FUSION_DEPTH, DEFAULT_FUSION_WEIGHT, DEFAULT_RRF_K, FUSIONS
from msmarco_search.search.options import DEFAULT_FEEDBACK_DEPTH, DEFAULT_FEEDBACK_WEIGHT


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
                            "split given must name what is read: the rule is in docs/data.md)")
    group.add_argument("--data-dir", default="data", help="cache folder for the hub and derived files (./data)")
    group.add_argument("--min-relevance", type=relevance_grade, default=1,
                       help="TSV qrels: the lowest grade that counts as relevant (default 1; at least 1, since "
                            "grade 0 and negative grades mean judged not relevant)")


def source_flags(values: Mapping[str, Any]) -> list[str]:
    """The data-source flags that name the source of ``values`` (parsed arguments, or those a stage recorded in its
    metadata) again, for the next command: the local files, and the hub config and cache folder where not the
    defaults."""
    flags = ["--dataset-path", *map(str, values["dataset_path"])] if values.get("dataset_path") else []
    if values.get("dataset_config", "v1.1") != "v1.1":
        flags += ["--dataset-config", str(values["dataset_config"])]
    if str(values.get("data_dir", "data")) != "data":
        flags += ["--data-dir", str(values["data_dir"])]
    return flags


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


# ------------------------------------------------------------------------------------------ bounded numbers
#
# Every numeric flag takes one of the types below, so each range is stated once, with the reason for its
# limit, and argparse refuses a value outside it (``error: argument --x: ...``, exit 2) before any work.

INT_LIMIT = 2**31 - 1
"""The largest count, depth or size any flag takes: faiss, gensim and torch keep them in C ints (a larger one is
an OverflowError deep inside them), and no collection, run or training here comes near it."""


def whole_number(low: int, high: int = INT_LIMIT, why: str = "the largest count faiss, gensim and torch take"
                 ) -> Callable[[str], int]:
    """argparse type: a whole number in ``[low, high]``; ``why`` (shown in the error) is where ``high`` comes
    from."""

    def parse(text: str) -> int:
        shown = short(text, 40)
        try:
            value = int(text)
        except ValueError as error:
            digits = text.strip().lstrip("+-").replace("_", "")
            if not digits.isdigit():
                raise argparse.ArgumentTypeError(f"{shown!r} is not a whole number") from error
            # Python refuses int strings of more than 4,300 digits: such a number is far out of range
            value = -math.inf if text.strip().startswith("-") else math.inf
        if value < low:
            raise argparse.ArgumentTypeError("must be a positive number, got " + shown if low == 1 else
                                             "must not be negative, got " + shown if low == 0 else
                                             f"must be at least {low:,}, got {shown}")
        if value > high:
            raise argparse.ArgumentTypeError(f"must be at most {high:,} ({why}), got {shown}")
        return int(value)

    parse.__name__ = "whole number"
    return parse


def real_number(low: float, high: float, why: str, *, low_open: bool = False, high_open: bool = False
                ) -> Callable[[str], float]:
    """argparse type: a finite number in ``[low, high]`` (``low_open``/``high_open``: without that end);
    ``why`` is where ``high`` comes from. ``inf`` and ``nan`` are refused: they turn losses and scores into
    NaN."""

    def parse(text: str) -> float:
        shown = short(text, 40)
        try:
            value = float(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"{shown!r} is not a number") from error
        share = (low, high) == (0, 1)
        if not math.isfinite(value) or value < low or (low_open and value == low):
            if share:
                raise argparse.ArgumentTypeError(f"must lie between 0 and 1, got {shown}")
            raise argparse.ArgumentTypeError(f"must be a finite number {'greater than' if low_open else 'of at least'}"
                                             f" {_plain(low)}, got {shown}")
        if value > high or (high_open and value == high):
            if share:
                raise argparse.ArgumentTypeError(f"must lie between 0 and 1{', below 1' if high_open else ''}, "
                                                 f"got {shown}")
            raise argparse.ArgumentTypeError(f"must be {'below' if high_open else 'at most'} {_plain(high)} ({why}), "
                                             f"got {shown}")
        return value

    parse.__name__ = "number"
    return parse


def _plain(value: float) -> str:
    """A bound as people write it: ``1,000,000``, ``0.2``."""
    return f"{int(value):,}" if value == int(value) and abs(value) < 1e15 else f"{value:g}"


def available_cores() -> int:
    """The cores this process may run on (its affinity where the system says, else all of them)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


positive_int = whole_number(1)  # counts that must be >= 1
non_negative_int = whole_number(0)  # counts that may be 0
SEED_LIMIT = 2**32  # numpy's and gensim's seeds are unsigned 32-bit
seed_int = whole_number(0, SEED_LIMIT - 1, "numpy's and gensim's seeds are unsigned 32-bit")
# the largest qrels grade: pytrec_eval keeps grades in a C int (sources.read_qrels refuses larger ones)
relevance_grade = whole_number(1, INT_LIMIT, "the largest qrels grade")
# sizes of vectors and layers: a 10,000 x 10,000 layer is 400 MB, and the vectors in use are 32- to 1,024-d
dimension = whole_number(1, 10_000, "vectors are 32- to 1,024-d")
dimension_or_zero = whole_number(0, 10_000, "vectors are 32- to 1,024-d")
cbow_window = whole_number(1, 10_000, "gensim trains on texts of at most 10,000 words")
epoch_count = whole_number(1, 10_000, "1 to 50 passes are used")
thread_count = whole_number(0, 1024, "one thread per core")
# the training batch (the in-batch softmax scores batch x batch pairs: 16 GiB of float32 at 65,536) and the
# batches search encodes at once (65,536 passages of 128 tokens x 300-d are 10 GB of float32)
batch_rows = whole_number(1, 65_536, "a batch is held in memory at once")
# pseudo-queries cut from one passage, each with its own copy of the rest of the passage: a passage has a few
# sentences and spans, so a hundred draws already repeat them
ict_per_passage = whole_number(1, 100, "a passage has only so many sentences and spans; more draws repeat them")
# faiss's HNSW keeps 2 x M links a passage at its lowest level: 2 KiB at 256 (18 GB for MS MARCO's 8.8M)
hnsw_links = whole_number(1, 256, "faiss keeps 2 x M links a passage: 18 GB for 8.8M passages at 256")
# stages the main job runs side by side: each is a process, but there are only so many stages (the seeds, CBOW)
job_count = whole_number(1, 1024, "one stage per core is the most that helps")


def processes(low: int) -> Callable[[str], int]:
    """argparse type for DataLoader workers: at most one per core, since each is a copy of this program
    (100,000 of them fork until the machine stops)."""
    return whole_number(low, available_cores(), f"one process per core, {available_cores()} here")


fraction = real_number(0, 1, "a share")  # shares and probabilities
fraction_below_one = real_number(0, 1, "a share", high_open=True)
non_negative_float = real_number(0, math.inf, "")  # any finite number >= 0
positive_float = real_number(0, math.inf, "", low_open=True)  # any finite number > 0
learning_rate = real_number(0, 10, "rates in use are 1e-5 to 0.1; far above, Adam's float32 step overflows",
                            low_open=True)
# the softmax's logits are scale x cosine: 10 to 100 are used (20 by default)
softmax_scale = real_number(0, 1000, "logits are scale x cosine; 10 to 100 are used", low_open=True)
cosine_margin = real_number(0, 2, "cosines differ by at most 2, so a larger margin is never met", low_open=True)
teacher_margin = real_number(0, 2, "cosines differ by at most 2, so a larger margin is never met")
cosine_score = real_number(-1, 1, "the teacher's scores are cosines")
# the KL's share beside the in-batch softmax: 0.5 to 2 are measured; far above, the hard labels no longer count
distill_weight = real_number(0, 1000, "0.5 to 2 are used; far above, the hard labels no longer count")
# BM25 k1: 0.5 to 2 in use; by 1,000 term frequency no longer saturates
bm25_k1 = real_number(0, 1000, "0.5 to 2 are used; by 1,000 term frequency no longer saturates")
# the Rocchio weight of the feedback vectors against the query's own (unit) vector: past 10**6 the query weighs
# less than a millionth of the moved vector (and nothing in float32 from about 10**7), and near 10**19 the
# moved vector's norm overflows float32, which makes every score 0
feedback_weight = real_number(0, 1e6, "beyond it the query's own vector is lost in float32, and every score "
                                      "becomes 0 when the vector overflows")


DEVICE_HELP = "auto (CUDA, then MPS, then CPU; the default), cpu, cuda, cuda:N, mps"


def add_fusion_arguments(parser: Any, several: bool) -> None:
    """``--fusion`` (one method, or with ``several`` a comma list), ``--fusion-weight``, ``--rrf-k``,
    ``--fusion-depth``: how the hybrid fuses the two-tower with BM25."""
    group = parser.add_argument_group("hybrid (two-tower + BM25)")
    if several:
        group.add_argument("--fusion", default=",".join(FUSIONS),
                           help="comma-separated fusion methods, one hybrid row each: rrf (reciprocal rank "
                                "fusion), linear (min-max-normalised scores) (default rrf,linear)")
    else:
        group.add_argument("--fusion", choices=FUSIONS, default="rrf",
                           help="rrf (reciprocal rank fusion, default) or linear (min-max-normalised scores)")
    group.add_argument("--fusion-weight", type=fraction, default=DEFAULT_FUSION_WEIGHT,
                       help="the two-tower's share, BM25 gets the rest: w/(k + rank) in rrf, w x score in linear "
                            f"({DEFAULT_FUSION_WEIGHT}: equal weights)")
    group.add_argument("--rrf-k", type=positive_int, default=DEFAULT_RRF_K,
                       help=f"rrf: the k in 1 / (k + rank) ({DEFAULT_RRF_K})")
    group.add_argument("--fusion-depth", type=positive_int, default=DEFAULT_FUSION_DEPTH,
                       help=f"candidates of each system that are fused ({DEFAULT_FUSION_DEPTH})")


def add_feedback_arguments(parser: Any) -> None:
    """``--feedback-depth``, ``--feedback-weight``: the pseudo-relevance feedback of the ``-prf`` systems."""
    group = parser.add_argument_group("feedback (the -prf systems: two-tower-prf, hybrid-prf)")
    group.add_argument("--feedback-depth", type=positive_int, default=DEFAULT_FEEDBACK_DEPTH,
                       help="first hits whose passage vectors move the query vector (Rocchio) before the "
                            f"two-tower ranks again ({DEFAULT_FEEDBACK_DEPTH})")
    group.add_argument("--feedback-weight", type=feedback_weight, default=DEFAULT_FEEDBACK_WEIGHT,
                       help="their mean's weight against the query's own vector, 1 "
                            f"({DEFAULT_FEEDBACK_WEIGHT:g})")


def add_bm25_arguments(parser: Any, saved: bool = False) -> None:
    """``--bm25-k1``, ``--bm25-b``, ``--bm25-stemmer``. With ``saved`` (search queries), unset flags mean the
    settings of the BM25 index saved with the search index; a flag that differs from it is refused."""
    d = BM25Settings()
    group = parser.add_argument_group("BM25 (bm25s on the project's tokens)")
    note = " (default: the saved BM25 index's; another value is refused, rebuild the index with it)" if saved else ""
    group.add_argument("--bm25-k1", type=bm25_k1, default=None if saved else d.k1,
                       help=f"BM25 k1{note or f' ({d.k1})'}")
    group.add_argument("--bm25-b", type=fraction, default=None if saved else d.b, help=f"BM25 b{note or f' ({d.b})'}")
    group.add_argument("--bm25-stemmer", choices=STEMMERS, default=None if saved else d.stemmer,
                       help="english: Snowball English stemming of the project's tokens (PyStemmer), the field's "
                            f"BM25 baseline; none: the unstemmed tokens{note or f' ({d.stemmer})'}")
