"""What a two-tower model is made of (``TwoTowerConfig``): plain settings, saved with every model and read back by
its loader; plain values only, so that the train command's ``--help`` shows the towers without importing torch."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from msmarco_search.core.errors import PipelineError

TOWERS = ("mean", "gru")


@dataclass
class TwoTowerConfig:
    vocab_size: int
    embedding_dim: int
    output_dim: int = 0  # 0: same as embedding_dim
    tower: str = "mean"
    gru_hidden_dim: int = 256
    token_weights: bool = True
    freeze_embeddings: bool = False
    sparse_embeddings: bool = True
    shared_towers: bool = False
    max_query_length: int = 32
    max_passage_length: int = 128

    def __post_init__(self) -> None:
        if self.tower not in TOWERS:
            raise PipelineError(f"unknown tower {self.tower!r} (use {', '.join(TOWERS)})")
        if not self.output_dim:
            self.output_dim = self.embedding_dim

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TwoTowerConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
