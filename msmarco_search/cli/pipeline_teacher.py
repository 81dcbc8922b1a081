"""The main job's teacher: a sentence-transformers model whose vectors label the recipe's triplets (every judged
pair and pseudo-query, their passages whole), distilled into the two-tower beside its in-batch softmax, and shown
as a reference row of the evaluation. The model that is indexed and searched stays static.

The settings are ``teacher.settings``'s (one place). A teacher that cannot be had here (no such folder, no
network for a hub name, sentence-transformers not installed) is not an error: the job says so in one line and
trains the recipe without one. A folder that is there but refused (not a sentence-transformers model, pickled
weights, its own code) is an error, before any work.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from msmarco_search.core.errors import PipelineError
from msmarco_search.core.report import warn
from msmarco_search.teacher.settings import DISTILL_WEIGHT, HUB_TEACHER, NO_TEACHER, TEACHER_SCALE


def add_teacher_arguments(parser: argparse.ArgumentParser) -> None:
    """``--teacher`` (off by default) and ``--teacher-queries``."""
    # Off by default: the recipe on the scoreboard is the one measured without a teacher, and a cold teacher cache
    # costs more than the whole job on 2 cores (docs/results.md).
    parser.add_argument("--teacher", default=NO_TEACHER, metavar="MODEL",
                        help="a teacher distilled into the two-tower: a sentence-transformers model folder (read "
                             "offline) or a hub name (such as " + HUB_TEACHER + "; the st extra). Its "
                             f"vectors label the triplets (cached under --data-dir), the training adds their "
                             f"in-batch KL (weight {DISTILL_WEIGHT:g}, teacher scale {TEACHER_SCALE:g}), and the "
                             "evaluation shows it as a reference row. Default 'none': the recipe without one; a "
                             "teacher that cannot be had here falls back to that, saying so in one line")
    parser.add_argument("--teacher-queries", nargs="+", type=Path, default=[], metavar="FILE",
                        help="queries TSVs without judgments (e.g. the MS MARCO train queries) that the teacher "
                             "labels over the training pool, added to the triplets (none by default); never "
                             "the evaluation queries (refused)")


def teacher_in_use(args: argparse.Namespace) -> str | None:
    """``--teacher`` when it can be had here (its folder checked, a hub name's snapshot fetched), else None after
    one line saying why; a refused folder raises ``PipelineError``."""
    if args.teacher.strip().lower() == NO_TEACHER:
        if args.teacher_queries:
            raise PipelineError("--teacher-queries needs a teacher, and --teacher is none")
        return None
    from msmarco_search.teacher.model import TeacherUnavailable, teacher_folder

    try:
        teacher_folder(args.teacher)
    except TeacherUnavailable as error:
        unused = " (nor its --teacher-queries)" if args.teacher_queries else ""
        warn(f"no teacher ({error}); training today's recipe without one{unused}")
        return None
    return args.teacher


def triplets_flags(args: argparse.Namespace, teacher: str | None) -> list[object]:
    """The flags of the stage that writes the final triplets: the teacher labels them."""
    if teacher is None:
        return []
    queries = ["--teacher-queries", *args.teacher_queries] if args.teacher_queries else []
    return ["--teacher", teacher, *queries, "--device", args.device]


def train_flags(teacher: str | None) -> list[object]:
    """The training stages' distillation flags."""
    return [] if teacher is None else ["--distill-weight", DISTILL_WEIGHT, "--teacher-scale", TEACHER_SCALE]


def evaluate_flags(teacher: str | None) -> list[object]:
    """The evaluation's teacher row (its vectors from the cache under --data-dir that the triplets stage filled)."""
    return [] if teacher is None else ["--teacher", teacher]
