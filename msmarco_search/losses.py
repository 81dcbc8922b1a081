"""Training objectives for the two towers. Inputs are L2-normalised vectors, so dot products are cosines."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class InBatchSoftmaxLoss(nn.Module):
    """Softmax cross-entropy of each query against every passage in the batch (plus explicit negatives).

    For queries ``q_i``, positives ``p_j`` and explicit negatives ``n_j`` (``j = 1..B``)::

        loss = -1/B * sum_i log( exp(s * q_i·p_i) / (sum_j exp(s * q_i·p_j) + sum_j exp(s * q_i·n_j)) )

    Every other query's positive (and every negative) serves as a negative for ``q_i``, so a batch of B
    triplets gives each query 2B - 1 negatives for the cost of 3B encodings. ``scale`` ``s`` is an inverse
    temperature: cosines live in [-1, 1], and without it (s ~ 20) the softmax is too flat to learn from.

    Use it for retrieval with (query, positive) pairs, with or without mined negatives; large batches help.
    Under data parallelism pass the passages of all processes and this process's ``label_offset``.
    Reference: Henderson et al. 2017, "Efficient Natural Language Response Suggestion for Smart Reply";
    sentence-transformers' ``MultipleNegativesRankingLoss``; Karpukhin et al. 2020 (DPR).
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


LOSSES = {"softmax": InBatchSoftmaxLoss, "triplet": TripletMarginLoss}
