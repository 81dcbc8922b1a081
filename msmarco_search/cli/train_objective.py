"""The train command's objective: the loss flags, and distillation of the teacher's vectors that triplets made with
``--teacher`` carry (``losses.InBatchDistillationLoss``).

With teacher labels, the in-batch softmax gets the KL to the teacher's in-batch scores beside it (weight
``--distill-weight``); weight 0 trains exactly as the same triplets without labels would (the labels are dropped
before the first batch). A weight given for triplets without labels is an error, not a silent plain run.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from typing import Any

from msmarco_search.cli.arguments import cosine_margin, distill_weight, softmax_scale
from msmarco_search.core.commands import command
from msmarco_search.core.errors import PipelineError
from msmarco_search.core.report import info
from msmarco_search.teacher.settings import DISTILL_WEIGHT, TEACHER_SCALE

LOSSES = ("softmax", "triplet")


def add_objective_arguments(parser: argparse.ArgumentParser) -> None:
    """``--loss``, ``--scale``, ``--margin``, ``--distill-weight``, ``--teacher-scale``."""
    objective = parser.add_argument_group("objective")
    objective.add_argument("--loss", choices=LOSSES, default="softmax",
                           help="softmax: in-batch softmax with each triplet's negative (default); "
                                "triplet: the classic margin loss")
    objective.add_argument("--scale", type=softmax_scale, default=20.0, help="softmax inverse temperature (20)")
    objective.add_argument("--margin", type=cosine_margin, default=0.2, help="triplet-loss margin (0.2)")
    objective.add_argument("--distill-weight", type=distill_weight, default=None, metavar="W",
                           help="triplets made with a teacher (--teacher of the triplets command): the weight of "
                                "the KL between the teacher's and the student's in-batch softmax, beside the "
                                f"in-batch softmax (default {DISTILL_WEIGHT:g} when the triplets carry teacher "
                                "labels; 0 trains as without them)")
    objective.add_argument("--teacher-scale", type=softmax_scale, default=TEACHER_SCALE,
                           help="inverse temperature of the teacher's in-batch scores: higher is more peaked "
                                f"({TEACHER_SCALE:g})")


@dataclass
class Objective:
    """What the training minimises: the loss, and the teacher distilled (weight 0: none)."""

    loss: str
    scale: float
    margin: float
    distill_weight: float
    teacher_scale: float
    teacher: dict[str, Any] | None  # name, identity and dimension of the teacher distilled

    def record(self) -> dict[str, Any]:
        """The objective for the training log, the model's record and each training state."""
        return asdict(self)

    def describe(self) -> str:
        if self.loss != "softmax":
            return f"triplet margin loss (margin {self.margin:g})"
        text = f"in-batch softmax (scale {self.scale:g})"
        if self.teacher is None:
            return text
        return (f"{text} + {self.distill_weight:g} x KL to the teacher {self.teacher['name']} "
                f"(teacher scale {self.teacher_scale:g})")

    def prepare(self, data: Any) -> None:
        """Without distillation the batches of ``data`` (``TripletArrays``) carry no teacher vectors: the run is
        then the one the same triplets without labels give."""
        if self.teacher is None:
            data.teacher = None

    def make_loss(self) -> Any:
        from msmarco_search.training.losses import InBatchDistillationLoss, InBatchSoftmaxLoss, TripletMarginLoss

        if self.loss == "triplet":
            return TripletMarginLoss(self.margin)
        if self.teacher is not None:
            return InBatchDistillationLoss(self.scale, self.teacher_scale, self.distill_weight)
        return InBatchSoftmaxLoss(self.scale)


def choose_objective(args: argparse.Namespace, triplets: Any, resume: dict[str, Any] | None) -> Objective:
    """The objective of this run, for ``triplets`` (None: a triples TSV) and the training state it resumes (which
    must have had the same objective), printed."""
    objective = _objective(args, None if triplets is None else triplets.teacher)
    _check_resumed(resume, objective, args.resume)
    info(f"Objective: {objective.describe()}")
    return objective


def _objective(args: argparse.Namespace, labels: Any) -> Objective:
    """The objective given the triplets' teacher labels (``TeacherLabels`` or None)."""
    weight = args.distill_weight
    if weight is None:  # not given: distil what the triplets carry, into the loss that can take it
        weight = DISTILL_WEIGHT if labels is not None and args.loss == "softmax" else 0.0
    elif weight > 0 and labels is None:
        raise PipelineError(f"--distill-weight {weight:g} needs triplets with teacher labels, and these have none; "
                            f"make them with `{command('triplets')} --teacher MODEL`, or leave --distill-weight out",
                            args.triplets_file)
    elif weight > 0 and args.loss != "softmax":
        raise PipelineError(f"--distill-weight distils the teacher into the in-batch softmax, and --loss {args.loss} "
                            "has none; use --loss softmax, or --distill-weight 0")
    teacher = None
    if weight > 0:
        teacher = {"name": labels.name, "identity": labels.identity, "dim": int(labels.queries.shape[1])}
    return Objective(args.loss, args.scale, args.margin, weight, args.teacher_scale, teacher)


def _check_resumed(resume: dict[str, Any] | None, objective: Objective, state_path: Any) -> None:
    """A resumed run continues the interrupted run's objective, or not at all."""
    if resume is None or "objective" not in resume:
        return
    before = resume["objective"]
    if before != objective.record():
        changed = [key for key in objective.record() if not isinstance(before, dict)
                   or before.get(key) != objective.record()[key]]
        raise PipelineError(f"cannot resume: the objective differs from the interrupted run's ({', '.join(changed)}); "
                            "run the same command with --resume", state_path)
