"""Training objectives for the two towers. Inputs are L2-normalised vectors, so dot products are cosines."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class InBatchSoftmaxLoss(nn.Module):
    """In-batch negatives: softmax cross-entropy of each query over every passage of the batch.

    For queries ``q_i``, their positives ``p_i`` and optional explicit (e.g. hard) negatives ``n_i``,
    ``i = 1..B``, all L2-normalised, and the scale ``s``::

        loss = -1/B * sum_i log( exp(s * q_i·p_i) / (sum_j exp(s * q_i·p_j) + sum_j exp(s * q_i·n_j)) )

    that is, cross-entropy over the similarity matrix ``s * Q [P; N]^T`` with the label of row ``i`` at
    column ``i``. Every other query's positive, and every negative, is a negative for ``q_i``: a batch of B
    triplets gives each query 2B - 1 negatives (B - 1 without explicit ones) for the cost of 3B encodings.
    ``s`` is an inverse temperature: cosines lie in [-1, 1], and unscaled (s = 1) the softmax is too flat to
    learn from; 20 is sentence-transformers' default and works here.

    When to use it: retrieval trained on (query, relevant passage) pairs, with or without mined negatives
    (the default objective here). Larger batches give more, and harder, negatives, so they usually help. It
    assumes the other passages of a batch are not relevant to a query; with many duplicate queries or
    passages in a batch that is false and the loss penalises correct matches. Under data parallelism pass
    the passages (and negatives) gathered from all processes, and this process's ``label_offset`` (its
    rank x its batch size), so each query's positive is found among them.

    References: Henderson et al. 2017, "Efficient Natural Language Response Suggestion for Smart Reply"
    (arXiv:1705.00652); Karpukhin et al. 2020, "Dense Passage Retrieval for Open-Domain Question Answering"
    (DPR); the same loss as sentence-transformers' ``MultipleNegativesRankingLoss``.
    """

    def __init__(self, scale: float = 20.0):
        super().__init__()
        self.scale = scale

    def forward(self, queries: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor | None = None,
                label_offset: int = 0) -> torch.Tensor:
        candidates = positives if negatives is None else torch.cat([positives, negatives])
        logits = self.scale * queries @ candidates.T
        labels = torch.arange(len(queries), device=queries.device) + label_offset
        return F.cross_entropy(logits.float(), labels)


class TripletMarginLoss(nn.Module):
    """The classic triplet loss on cosine similarity: ``mean(max(0, margin - q·p + q·n))``.

    Each query sees only its own negative, so it learns far less per batch than ``InBatchSoftmaxLoss``;
    kept as the original pipeline's objective and as a baseline. Reference: Schroff et al. 2015 (FaceNet).
    """

    def __init__(self, margin: float = 0.2):
        super().__init__()
        self.margin = margin

    def forward(self, queries: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor | None = None,
                label_offset: int = 0) -> torch.Tensor:
        if negatives is None:
            raise ValueError("the triplet margin loss needs a negative for every query")
        positive_scores = (queries * positives[label_offset:label_offset + len(queries)]).sum(-1)
        negative_scores = (queries * negatives[label_offset:label_offset + len(queries)]).sum(-1)
        return F.relu(self.margin - positive_scores + negative_scores).float().mean()



class InBatchDistillationLoss(InBatchSoftmaxLoss):
    """The in-batch softmax, plus a teacher's in-batch scores distilled into the student's.

    For the batch's queries ``q_i`` and candidates ``c_j`` (positives, then negatives), the student's logits are
    ``s_ij = scale * q_i·c_j`` and the teacher's ``t_ij = teacher_scale * Q_i·C_j``, where ``Q``, ``C`` are the
    teacher's vectors of the same texts (cached, so the teacher's matrix costs one product a step)::

        loss = CE(s, diagonal) + weight * 1/B * sum_i KL( softmax(t_i) || softmax(s_i) )

    The hard label says only which candidate is the positive; the teacher's row says how related every other
    passage of the batch is, on every triplet, pseudo-queries included: near-duplicates of the positive are not
    pushed away as hard as unrelated passages. ``teacher_scale`` sets how peaked the teacher's distribution is
    (an inverse temperature; its cosines spread less than the student's), ``weight`` the KL's share.

    When to use it: a stronger bi-encoder or cross-encoder scored the training texts (``generate_triplets.py
    --teacher``), and the student must stay a cheap model. Under data parallelism the teacher's candidates are
    gathered like the student's.

    References: Hofstätter et al. 2021, "Efficiently Teaching an Effective Dense Retriever with Balanced Topic
    Aware Sampling" (TAS-B); Lin et al. 2021, "In-Batch Negatives for Knowledge Distillation with
    Tightly-Coupled Teachers for Dense Retrieval"; Hinton et al. 2015, "Distilling the Knowledge in a Neural
    Network".

    Example::

        loss = InBatchDistillationLoss(scale=20, teacher_scale=20, weight=1.0)
        value = loss(q, p, n, label_offset=0, teacher=(teacher_q, teacher_p, teacher_n))
    """

    def __init__(self, scale: float = 20.0, teacher_scale: float = 20.0, weight: float = 1.0):
        super().__init__(scale)
        self.teacher_scale, self.weight = teacher_scale, weight

    def forward(self, queries: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor | None = None,
                label_offset: int = 0,
                teacher: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None = None) -> torch.Tensor:
        if teacher is None:
            raise ValueError("distillation needs the teacher's vectors of the batch (triplets made with --teacher)")
        candidates = positives if negatives is None else torch.cat([positives, negatives])
        logits = (self.scale * queries @ candidates.T).float()
        labels = torch.arange(len(queries), device=queries.device) + label_offset
        teacher_queries, teacher_positives, teacher_negatives = teacher
        teacher_candidates = (teacher_positives if negatives is None or teacher_negatives is None
                              else torch.cat([teacher_positives, teacher_negatives]))
        target = torch.softmax(self.teacher_scale * teacher_queries.float() @ teacher_candidates.float().T, dim=1)
        distilled = F.kl_div(F.log_softmax(logits, dim=1), target, reduction="batchmean")
        return F.cross_entropy(logits, labels) + self.weight * distilled
