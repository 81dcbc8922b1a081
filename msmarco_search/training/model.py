"""The two-tower model: a query tower and a passage tower over CBOW-initialised word vectors.

Each tower maps a batch of token sequences to L2-normalised vectors; relevance is their dot product. The model
owns its vocabulary, so ``model.encode_queries(texts)`` / ``model.encode_passages(texts)`` go from text to
vectors in one call (``load_model(path)`` gives a saved one).

- ``mean`` (default): a weighted mean of the word vectors (each vocabulary word has a learned weight,
  ``exp(w)``, starting at 1, so the tower starts as a plain mean), then a linear head (identity at start
  when the sizes match, so an untrained model is the zero-shot CBOW mean). Built on ``nn.EmbeddingBag``
  over flat ids: no padding, and sparse gradients for the big embedding matrix.
- ``gru``: a bidirectional GRU over the word vectors, masked mean over its states, a linear head.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from msmarco_search.core.errors import PipelineError
from msmarco_search.core.report import warn
from msmarco_search.data.tokens import TokenBatch
from msmarco_search.data.vocab import (
    PAD_ID,
    Vocabulary,
    inverse_document_frequency,
)
from msmarco_search.training.config import TwoTowerConfig
from msmarco_search.training.optim import RowAdam


def _embedding_weight(config: TwoTowerConfig, embeddings: torch.Tensor | None) -> nn.Parameter:
    if embeddings is None:
        weight = torch.randn(config.vocab_size, config.embedding_dim) * 0.1
    else:
        weight = embeddings.detach().clone().float()
    weight[PAD_ID] = 0.0
    return nn.Parameter(weight, requires_grad=not config.freeze_embeddings)


def _head(in_dim: int, out_dim: int) -> nn.Linear:
    head = nn.Linear(in_dim, out_dim)
    if in_dim == out_dim:
        with torch.no_grad():
            head.weight.copy_(torch.eye(in_dim))
            head.bias.zero_()
    return head


@dataclass
class GatheredRows:
    """The distinct rows ``rows`` of a word table that one training batch reads, copied into a dense leaf.

    The towers pool from ``values``, so backward leaves the gradient of exactly those rows in ``values.grad``:
    the coalesced gradient, without a sparse tensor. ``RowAdam.update_rows`` then writes the updated rows back
    into ``table``. (``TwoTowerModel.forward_rows``; the loop in ``trainer.Trainer.step``.)
    """

    table: nn.Parameter
    rows: torch.Tensor
    values: torch.Tensor


TOKEN_WEIGHT_CLAMP = 10.0  # log word weights are clamped to +-10 (exp: 4.5e-5 .. 22,026)


class MeanPoolTower(nn.Module):
    def __init__(self, config: TwoTowerConfig, embeddings: torch.Tensor | None = None):
        super().__init__()
        self.embedding = nn.EmbeddingBag(config.vocab_size, config.embedding_dim, mode="sum",
                                         sparse=config.sparse_embeddings)
        self.embedding.weight = _embedding_weight(config, embeddings)
        self.token_weight = (nn.Embedding(config.vocab_size, 1, sparse=config.sparse_embeddings)
                             if config.token_weights else None)
        if self.token_weight is not None:
            nn.init.zeros_(self.token_weight.weight)
        self.head = _head(config.embedding_dim, config.output_dim)

    def forward(self, batch: TokenBatch) -> torch.Tensor:
        # Look each distinct word of the batch up once, then pool from that small table: the sparse gradient
        # of the big table then has one row per distinct word (not one per token), which makes backward and
        # the optimiser's coalescing several times cheaper; the pooled values are the same.
        table = self.embedding.weight
        unique, inverse = distinct_ids(batch.ids, len(table))
        vectors = F.embedding(unique, table, sparse=self.embedding.sparse and table.requires_grad)
        log_weights = None
        if self.token_weight is not None:
            log_weights = F.embedding(unique, self.token_weight.weight,
                                      sparse=self.token_weight.sparse and self.token_weight.weight.requires_grad)
        return self.pool(batch.offsets, unique, inverse, vectors, log_weights)

    def forward_rows(self, batch: TokenBatch, gathered: list[GatheredRows]) -> torch.Tensor:
        """``forward`` for training with row updates: the batch's distinct rows of each trainable table are
        copied into dense leaves (appended to ``gathered``) instead of being looked up through autograd."""
        unique, inverse = distinct_ids(batch.ids, len(self.embedding.weight))
        vectors = _gather_rows(self.embedding.weight, unique, gathered)
        log_weights = None if self.token_weight is None else _gather_rows(self.token_weight.weight, unique, gathered)
        return self.pool(batch.offsets, unique, inverse, vectors, log_weights)

    def pool(self, offsets: torch.Tensor, unique: torch.Tensor, inverse: torch.Tensor, vectors: torch.Tensor,
             log_weights: torch.Tensor | None) -> torch.Tensor:
        """The tower's vectors of texts whose tokens are ``unique[inverse]`` (``offsets``: where each text
        starts), from the distinct words' ``vectors`` and log word weights: the head of their weighted mean."""
        return F.normalize(self.head(self.weighted_mean(offsets, unique, inverse, vectors, log_weights)), dim=-1)

    def weighted_mean(self, offsets: torch.Tensor, unique: torch.Tensor, inverse: torch.Tensor, vectors: torch.Tensor,
                      log_weights: torch.Tensor | None) -> torch.Tensor:
        """Each text's mean word vector, weighted by ``exp(log weight)`` (1 without word weights)."""
        weights = (unique != PAD_ID).to(vectors.dtype)
        if log_weights is not None:
            weights = weights * log_weights.squeeze(-1).clamp(-TOKEN_WEIGHT_CLAMP, TOKEN_WEIGHT_CLAMP).exp()
        # the weighted vectors and the weight side by side: one sum-bag gives each text's weighted sum and its
        # total weight (backward: a row scatter and two [U, d] products instead of per-token weights' dot
        # product per token; measured no faster nor slower, docs/experiments.md, and one expression for both
        # the autograd and the row-update paths)
        rows = torch.cat([vectors * weights.unsqueeze(-1), weights.unsqueeze(-1)], dim=1)
        summed, total = F.embedding_bag(inverse, rows, offsets, mode="sum").split([vectors.shape[1], 1], dim=1)
        return summed / total.clamp_min(1e-6)  # split, not two slices: its backward is one cat, not two fills


def distinct_ids(ids: torch.Tensor, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.unique(ids, return_inverse=True)``: the sorted distinct ids and each id's place among them.

    A batch's tokens number about as many as the vocabulary's words, and marking a vocabulary-sized table is
    then 12x faster than ``torch.unique``'s sort (1.5 against 17 ms for 30K tokens of a 31K vocabulary, one
    thread, ``docs/experiments.md``); a few tokens (one query at search time) keep the sort, and so does MPS
    (whose integer ``cumsum`` depends on the macOS version).
    """
    if len(ids) * 4 < vocab_size or ids.device.type == "mps":
        return torch.unique(ids, return_inverse=True)
    mark = torch.zeros(vocab_size, dtype=torch.long, device=ids.device)
    mark[ids] = 1
    unique = mark.nonzero().squeeze(1)
    return unique, mark.cumsum_(0).sub_(1)[ids]


def _gather_rows(table: nn.Parameter, rows: torch.Tensor, gathered: list[GatheredRows]) -> torch.Tensor:
    values = table.detach().index_select(0, rows)
    if table.requires_grad:
        values.requires_grad_()
        gathered.append(GatheredRows(table, rows, values))
    return values


class GRUTower(nn.Module):
    def __init__(self, config: TwoTowerConfig, embeddings: torch.Tensor | None = None):
        super().__init__()
        self.embedding = nn.Embedding(config.vocab_size, config.embedding_dim, padding_idx=PAD_ID,
                                      sparse=config.sparse_embeddings)
        self.embedding.weight = _embedding_weight(config, embeddings)
        self.gru = nn.GRU(config.embedding_dim, config.gru_hidden_dim, batch_first=True, bidirectional=True)
        self.head = _head(2 * config.gru_hidden_dim, config.output_dim)

    def forward(self, batch: TokenBatch) -> torch.Tensor:
        ids, offsets = batch.ids, batch.offsets
        lengths = batch.lengths()
        width = max(int(lengths.max().item()) if len(lengths) else 1, 1)
        rows = torch.repeat_interleave(torch.arange(len(offsets), device=ids.device), lengths)
        columns = torch.arange(len(ids), device=ids.device) - torch.repeat_interleave(offsets, lengths)
        padded = ids.new_full((len(offsets), width), PAD_ID)
        padded[rows, columns] = ids
        # one lookup per distinct word (small sparse gradient), then a dense gather into the padded batch
        unique, inverse = torch.unique(padded, return_inverse=True)
        table = self.embedding.weight
        vectors = F.embedding(unique, table, padding_idx=PAD_ID,
                              sparse=self.embedding.sparse and table.requires_grad)
        states, _ = self.gru(vectors[inverse])
        mask = (padded != PAD_ID).unsqueeze(-1).to(states.dtype)
        pooled = (states * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        return F.normalize(self.head(pooled), dim=-1)


class TwoTowerModel(nn.Module):
    """A query tower and a passage tower, and the vocabulary that turns text into their input."""

    def __init__(self, config: TwoTowerConfig, vocab: Vocabulary, embeddings: torch.Tensor | None = None):
        super().__init__()
        if len(vocab) != config.vocab_size:
            raise PipelineError(f"the vocabulary has {len(vocab)} words but the config says {config.vocab_size}")
        self.config = config
        self.vocab = vocab
        self.metadata: dict[str, Any] = {}  # what the model file holds beside the weights (model_id, training)
        tower_class = MeanPoolTower if config.tower == "mean" else GRUTower
        self.query_tower = tower_class(config, embeddings)
        self.passage_tower = self.query_tower if config.shared_towers else tower_class(config, embeddings)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def query_vectors(self, batch: TokenBatch) -> torch.Tensor:
        return self.query_tower(batch)

    def passage_vectors(self, batch: TokenBatch) -> torch.Tensor:
        return self.passage_tower(batch)

    def forward(self, queries: TokenBatch, positives: TokenBatch,
                negatives: TokenBatch | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        return (self.query_vectors(queries), self.passage_vectors(positives),
                None if negatives is None else self.passage_vectors(negatives))

    @property
    def row_updates_work(self) -> bool:
        """Whether ``forward_rows`` works for these towers (mean towers; the GRU's lookups stay in autograd)."""
        return self.config.tower == "mean"

    def forward_rows(self, queries: TokenBatch, positives: TokenBatch, negatives: TokenBatch | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, list[GatheredRows]]:
        """``forward`` for one process's training step with row updates (``Trainer.step``): the same vectors,
        and the rows of the word tables the batch read, as ``GatheredRows`` whose leaves hold the gradient
        after backward. Each tower gathers once: positives and negatives (and, with shared towers, queries
        too) go through it as one batch, so each table row appears once, as its coalesced gradient would."""
        gathered: list[GatheredRows] = []
        sides = [queries, positives] + ([] if negatives is None else [negatives])
        if self.config.shared_towers:
            vectors = self.query_tower.forward_rows(TokenBatch.concatenate(sides), gathered)
            q, passages = vectors[:len(queries)], vectors[len(queries):]
        else:
            q = self.query_tower.forward_rows(queries, gathered)
            passages = self.passage_tower.forward_rows(TokenBatch.concatenate(sides[1:]), gathered)
        p, n = passages, None
        if negatives is not None:  # split, not slices: one cat in backward
            p, n = passages.split([len(positives), len(negatives)])
        return q, p, n, gathered

    def configure_optimizers(self, learning_rate: float, embedding_learning_rate: float,
                             weight_decay: float = 0.0) -> list[torch.optim.Optimizer]:
        """AdamW for the dense layers; RowAdam at ``embedding_learning_rate`` for the word-vector tables.

        The tables go to RowAdam whether their gradients are sparse or dense (MPS, DDP on CUDA), so a run
        learns the same way on every device.
        """
        tables: list[nn.Parameter] = []
        for module in self.modules():
            if isinstance(module, (nn.Embedding, nn.EmbeddingBag)) and module.weight.requires_grad:
                if all(module.weight is not p for p in tables):
                    tables.append(module.weight)
        table_ids = {id(p) for p in tables}
        dense = [p for p in self.parameters() if p.requires_grad and id(p) not in table_ids]
        optimizers: list[torch.optim.Optimizer] = []
        if dense:
            optimizers.append(torch.optim.AdamW(dense, lr=learning_rate, weight_decay=weight_decay))
        if tables:
            optimizers.append(RowAdam(tables, lr=embedding_learning_rate))
        return optimizers

    def init_token_weights(self, passages: Sequence[str]) -> bool:
        """Start the learned word weights at each word's IDF over ``passages``: the untrained tower is then the
        zero-shot IDF-weighted mean of the word vectors (a weight is ``exp(w)``, so ``w`` starts at log IDF).

        Returns False, changing nothing, when the towers have no word weights (``gru``, ``token_weights=False``).
        """
        towers = {id(t): t for t in (self.query_tower, self.passage_tower)}.values()
        if not all(getattr(t, "token_weight", None) is not None for t in towers):
            return False
        idf = torch.from_numpy(inverse_document_frequency(self.vocab, passages)).clamp_min(1e-4).log()
        with torch.no_grad():
            for tower in towers:
                tower.token_weight.weight[:, 0] = idf.to(tower.token_weight.weight)
        return True

    def tokenize(self, texts: Sequence[str], side: str) -> TokenBatch:
        """Texts as one batch for the ``side`` ("query" or "passage") tower, cut at that side's length."""
        if side not in ("query", "passage"):
            raise ValueError(f"side must be 'query' or 'passage', not {side!r}")
        limit = self.config.max_query_length if side == "query" else self.config.max_passage_length
        arrays = self.vocab.encode_chunk(list(texts), limit)
        return TokenBatch.from_arrays(arrays, np.arange(len(arrays)))

    @torch.no_grad()
    def encode(self, texts: Sequence[str], side: str, batch_size: int = 1024) -> torch.Tensor:
        """L2-normalised float32 vectors of ``texts`` from the ``side`` tower, on the CPU, in eval mode."""
        tower = self.query_tower if side == "query" else self.passage_tower
        was_training = self.training
        self.eval()
        device = self.device
        vectors = [tower(self.tokenize(texts[start:start + batch_size], side).to(device)).float().cpu()
                   for start in range(0, len(texts), batch_size)]
        self.train(was_training)
        return torch.cat(vectors) if vectors else torch.zeros(0, self.config.output_dim)

    def encode_queries(self, texts: Sequence[str], batch_size: int = 1024) -> np.ndarray:
        """Query vectors: a ``(len(texts), dim)`` float32 array, rows L2-normalised."""
        return self.encode(texts, "query", batch_size).numpy()

    def encode_passages(self, texts: Sequence[str], batch_size: int = 1024) -> np.ndarray:
        """Passage vectors: a ``(len(texts), dim)`` float32 array, rows L2-normalised."""
        return self.encode(texts, "passage", batch_size).numpy()


def sparse_gradients_work(device: torch.device, distributed: bool = False) -> bool:
    """Whether the word-vector tables can have sparse gradients here: not on MPS (no sparse kernels), nor
    under DDP on CUDA (NCCL does not all-reduce sparse tensors; gloo does)."""
    return device.type != "mps" and not (distributed and device.type == "cuda")


def build_model(vocab: Vocabulary, embeddings: torch.Tensor, device: torch.device, distributed: bool = False,
                idf_passages: Sequence[str] | None = None, **settings: Any) -> TwoTowerModel:
    """A model to train on ``device``: towers over the CBOW ``embeddings``, sparse gradients where they work.

    ``settings``: the other ``TwoTowerConfig`` fields (tower, output_dim, ...). ``idf_passages``: start the
    word weights at their IDF over these passages (``init_token_weights``) instead of at 1.
    """
    config = TwoTowerConfig(vocab_size=len(vocab), embedding_dim=embeddings.shape[1],
                            sparse_embeddings=sparse_gradients_work(device, distributed), **settings)
    model = TwoTowerModel(config, vocab, embeddings)
    if idf_passages is not None and not model.init_token_weights(idf_passages):
        warn("the word weights start at 1, not at their IDF: these towers have no word weights")
    return model
