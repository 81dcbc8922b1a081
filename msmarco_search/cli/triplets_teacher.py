"""The triplets command's teacher (``--teacher``): its flags, its vectors of every triplet's query and passages
(``TeacherLabels``, stored in the triplets pickle for distillation) and the unjudged real queries it labels over
the training pool (``--teacher-queries``).

The teacher is loaded, its cache read and the queries files checked before any triplet is made: a refused
folder, a cache of another teacher or an evaluation query among the files costs seconds, not the work.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from msmarco_search.cli.arguments import cosine_score, positive_int, teacher_margin
from msmarco_search.core.errors import PipelineError, short
from msmarco_search.core.report import info
from msmarco_search.data.triplets import Triplets
from msmarco_search.io.msmarco_files import queries_with_words, read_queries
from msmarco_search.teacher.settings import BATCH_SIZE, MARGIN, MIN_SCORE, NEGATIVE_RANKS


def add_teacher_arguments(parser: argparse.ArgumentParser) -> None:
    """``--teacher`` and its settings."""
    group = parser.add_argument_group("teacher (labels for distillation)")
    group.add_argument("--teacher", default=None, metavar="MODEL",
                       help="a sentence-transformers model folder (read offline; safetensors weights and "
                            "sentence-transformers' own modules only) or a hub name: it encodes every triplet's "
                            "query and passages, and the triplets file carries its vectors (a .pkl only). The "
                            "vectors are cached under --data-dir (teacher_vectors_<id>.npz): a second run "
                            "encodes only new texts. Needs the st extra")
    group.add_argument("--teacher-queries", type=Path, nargs="+", default=[], metavar="FILE",
                       help="queries TSVs (qid<TAB>text) without judgments, e.g. the MS MARCO train queries: "
                            "each is labelled over the training pool by the teacher's ranking and added. A file "
                            "holding any query of --exclude-queries (the evaluation queries) is refused")
    group.add_argument("--teacher-min-score", type=cosine_score, default=MIN_SCORE,
                       help="label a query only when the teacher's first passage scores at least this cosine "
                            f"({MIN_SCORE}): most real queries have no answer in a pool made for others")
    group.add_argument("--teacher-negative-ranks", type=positive_int, nargs=2, default=list(NEGATIVE_RANKS),
                       metavar=("FIRST", "LAST"),
                       help="the teacher's ranks a labelled query's negative is drawn from "
                            f"({NEGATIVE_RANKS[0]} {NEGATIVE_RANKS[1]})")
    group.add_argument("--teacher-margin", type=teacher_margin, default=MARGIN,
                       help="a negative scores at most the first passage's score minus this "
                            f"({MARGIN}): the teacher's near-top passages are often relevant too")
    group.add_argument("--teacher-batch-size", type=positive_int, default=BATCH_SIZE,
                       help=f"texts the teacher encodes at once ({BATCH_SIZE})")


def check_teacher_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Flag combinations, refused by argparse before anything is read."""
    if args.teacher is None and args.teacher_queries:
        parser.error("--teacher-queries needs --teacher (the model that labels them)")
    first, last = args.teacher_negative_ranks
    if not 2 <= first <= last:
        parser.error("--teacher-negative-ranks: need 2 <= FIRST <= LAST (rank 1 is the positive)")


@dataclass
class TeacherStage:
    """The loaded teacher with its cache, and the checked ``--teacher-queries`` to label."""

    args: argparse.Namespace
    cache: Any  # a ``teacher.cache.TeacherCache``
    queries: list[tuple[str, str]]
    report: dict[str, Any] = field(default_factory=dict)  # for the metadata

    def add_labelled_queries(self, triplets: Triplets, pool: Any) -> None:
        """Add the ``--teacher-queries`` labelled over ``pool`` (a ``PassagePool``) to ``triplets``."""
        if not self.queries:
            return
        from msmarco_search.labels.mining import teacher_label_triplets
        from msmarco_search.search.dense import TeacherRetriever

        args = self.args
        first, last = args.teacher_negative_ranks
        if first > len(pool):
            raise PipelineError(f"--teacher-negative-ranks {first} {last}: the training pool has only {len(pool):,} "
                                "passages to rank")
        info(f"The teacher labels {len(self.queries):,} queries of {', '.join(map(str, args.teacher_queries))} over "
             f"{len(pool):,} passages")
        # every query at once: the cache file is written once, not once for every batch of ranked queries
        self.cache.vectors([text for _, text in self.queries], desc="Teacher: queries")
        labelled, stats = teacher_label_triplets(self.queries, pool, TeacherRetriever(self.cache),
                                                 min_score=args.teacher_min_score, negative_ranks=(first, last),
                                                 margin=args.teacher_margin, seed=args.seed)
        info(f"✅ {stats.labelled:,} teacher-labelled triplets from {stats.queries_read:,} queries "
             f"({stats.queries_below_min_score:,} whose best passage scores below {args.teacher_min_score}, "
             f"{stats.queries_without_negative:,} without a negative)")
        triplets.extend(labelled)
        self.report["teacher_queries"] = {"files": [str(p) for p in args.teacher_queries], **vars(stats),
                                          "min_score": args.teacher_min_score, "negative_ranks": [first, last],
                                          "margin": args.teacher_margin}

    def label(self, triplets: Triplets, passages: Mapping[str, str]) -> dict[str, Any]:
        """Give ``triplets`` the teacher's vectors of their texts (passages whole, from ``passages`` by id where
        there); the metadata's ``teacher`` entry."""
        from msmarco_search.labels.teacher_labels import label_triplets

        labels = label_triplets(triplets, passages, self.cache)
        triplets.teacher = labels
        teacher = self.cache.teacher
        info(f"🎓 The teacher's vectors of {len(labels.queries):,} queries and {len(labels.passages):,} passages: "
             f"{self.cache.encoded:,} texts encoded now, the rest from {self.cache.path}")
        return {"name": teacher.name, "identity": teacher.identity, "dim": teacher.dim,
                "cache": str(self.cache.path), "queries": len(labels.queries), "passages": len(labels.passages),
                "texts_encoded": self.cache.encoded, **self.report}


def open_teacher(args: argparse.Namespace, held_out: list[str]) -> TeacherStage | None:
    """The teacher of ``--teacher`` (None without it), its cache checked, and the ``--teacher-queries`` read."""
    if args.teacher is None:
        return None
    if args.format == "parquet":
        raise PipelineError("teacher labels are kept in the pickle format only; write a .pkl (--format pkl), or "
                            "leave --teacher out", args.output or "--format parquet")
    queries = _queries(args.teacher_queries, held_out, args.exclude_queries)  # before the model: seconds, not minutes
    from msmarco_search.core.device import pick_device
    from msmarco_search.teacher.cache import open_teacher_cache

    cache = open_teacher_cache(args.teacher, args.data_dir, str(pick_device(args.device)), args.teacher_batch_size)
    return TeacherStage(args, cache, queries)


def _queries(paths: list[Path], held_out: list[str], held_out_files: list[Path]) -> list[tuple[str, str]]:
    """``(qid, text)`` of every file, each text once; a file holding an evaluation query is refused."""
    from msmarco_search.data.provenance import query_fingerprint

    excluded = {query_fingerprint(text) for text in held_out}
    queries: list[tuple[str, str]] = []
    seen: set[int] = set()
    for path in paths:
        read = queries_with_words(read_queries(path), path)
        leaked = [text for text in read.values() if query_fingerprint(text) in excluded]
        if leaked:
            raise PipelineError(f"{len(leaked):,} of its queries are evaluation queries (of "
                                f"{', '.join(map(str, held_out_files))}), e.g. {short(leaked[0], 60)!r}; the teacher "
                                "never labels an evaluation query: remove them from the file", path)
        for qid, text in read.items():
            fingerprint = query_fingerprint(text)
            if fingerprint not in seen:  # a query repeated across files is labelled once
                seen.add(fingerprint)
                queries.append((qid, text))
    return queries
