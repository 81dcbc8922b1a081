"""The teacher recipe's settings, in one place: the defaults of the triplets, train and evaluate commands' teacher
flags and of the main job. Plain values only, so that ``--help`` imports nothing heavy.

They are the settings chosen on the DL 2021 split (3 seeds; docs/experiments.md): the recipe's triplets plus the
unjudged train queries the teacher labels, the student's in-batch softmax matched to the teacher's with KL beside
it; a better setting changes here alone.
"""

from __future__ import annotations

# the main job's teacher: a 6-layer bi-encoder (384-d), by hub name; a folder of the same model works offline
HUB_TEACHER = "sentence-transformers/all-MiniLM-L6-v2"
NO_TEACHER = "none"  # the main job's --teacher value that turns the teacher off

# distillation (``losses.InBatchDistillationLoss``): the KL's share beside the in-batch softmax, and the inverse
# temperature of the teacher's in-batch scores (its cosines spread less than the student's)
DISTILL_WEIGHT = 1.0
TEACHER_SCALE = 40.0

# labelling unjudged real queries (``mining.teacher_label_triplets``): the teacher's first passage is the positive
# when it scores at least MIN_SCORE; the negative comes from its ranks NEGATIVE_RANKS, scoring at most the first's
# score minus MARGIN (a strong teacher's near-top passages are often relevant too)
MIN_SCORE = 0.5
NEGATIVE_RANKS = (10, 50)
MARGIN = 0.1

# texts the teacher encodes at once (similar lengths: they are sorted longest first)
BATCH_SIZE = 64
