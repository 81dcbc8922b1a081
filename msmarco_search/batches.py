"""Triplets as token arrays (tokenised once, cached, memory-mapped) and the batches cut from them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .arrays import TokenArrays
from .errors import PipelineError
from .fileio import cache_key
from .report import info, warn
from .text import TOKENIZER_VERSION
from .triplets import TeacherLabels, Triplets
from .vocab import Vocabulary, vocabulary_fingerprint

SIDES = ("queries", "positives", "negatives")


@dataclass
class TokenBatch:
    """A batch of token sequences in ``nn.EmbeddingBag`` form: flat ids and the start offset of each row."""

    ids: torch.Tensor  # int64, (total tokens,)
    offsets: torch.Tensor  # int64, (batch,)

    @classmethod
    def from_arrays(cls, arrays: TokenArrays, indices: np.ndarray) -> TokenBatch:
        ids, offsets = arrays.gather(indices)
        return cls(torch.from_numpy(ids), torch.from_numpy(offsets))

    @classmethod
    def from_lists(cls, sequences: list[list[int]]) -> TokenBatch:
        lengths = [len(s) for s in sequences]
        offsets = np.zeros(len(sequences), dtype=np.int64)
        np.cumsum(lengths[:-1], out=offsets[1:])
        flat = np.fromiter((t for s in sequences for t in s), dtype=np.int64, count=sum(lengths))
        return cls(torch.from_numpy(flat), torch.from_numpy(offsets))

    @classmethod
    def concatenate(cls, batches: list[TokenBatch]) -> TokenBatch:
        """One batch of every row of ``batches``, in order (offsets shifted past the earlier batches' ids)."""
        starts = np.cumsum([0] + [len(b.ids) for b in batches[:-1]])
        return cls(torch.cat([b.ids for b in batches]),
                   torch.cat([b.offsets + int(start) for b, start in zip(batches, starts, strict=True)]))

    def __len__(self) -> int:
        return len(self.offsets)

    def lengths(self) -> torch.Tensor:
        ends = torch.cat([self.offsets[1:], self.offsets.new_tensor([len(self.ids)])])
        return ends - self.offsets

    def to(self, device: torch.device | str) -> TokenBatch:
        return TokenBatch(self.ids.to(device, non_blocking=True), self.offsets.to(device, non_blocking=True))


@dataclass
class TripletArrays:
    queries: TokenArrays
    positives: TokenArrays
    negatives: TokenArrays
    teacher: TeacherLabels | None = None  # a teacher's vectors of the same triplets, for distillation

    def __len__(self) -> int:
        return len(self.queries)

    def batch(self, indices: np.ndarray) -> tuple[TokenBatch, ...] | tuple[TokenBatch, TokenBatch, TokenBatch,
                                                                          tuple[torch.Tensor, ...]]:
        """Queries, positives and negatives of triplets ``indices``, then, with a teacher, its vectors of them."""
        tokens = (TokenBatch.from_arrays(self.queries, indices), TokenBatch.from_arrays(self.positives, indices),
                  TokenBatch.from_arrays(self.negatives, indices))
        if self.teacher is None:
            return tokens
        return (*tokens, tuple(torch.from_numpy(vectors) for vectors in self.teacher.batch(indices)))


def tokenise_triplets(triplets: Triplets, vocab: Vocabulary, max_query_length: int, max_passage_length: int,
                      cache_dir: Path | None = None, source_identity: str = "") -> TripletArrays:
    """Tokenise the three columns once; with ``cache_dir`` and a ``source_identity``, reuse earlier work."""
    cache = None
    if cache_dir is not None and source_identity:
        key = cache_key(source_identity, vocabulary_fingerprint(vocab), max_query_length, max_passage_length,
                        TOKENIZER_VERSION)
        cache = Path(cache_dir) / f"triplet_tokens_{key}"
        if (cache / "negatives.offsets.npy").is_file():
            try:
                arrays = TripletArrays(*(TokenArrays.load(cache, side, vocab_size=len(vocab)) for side in SIDES))
                if all(len(getattr(arrays, side)) == len(triplets) for side in SIDES):
                    info(f"📦 Loading cached token arrays from {cache}")
                    arrays.teacher = triplets.teacher
                    return arrays
                warn(f"{cache}: cached token arrays hold the wrong number of texts; rebuilding them")
            except PipelineError as error:
                warn(f"damaged token cache, rebuilding it: {error}")
    limits = {"queries": max_query_length, "positives": max_passage_length, "negatives": max_passage_length}
    arrays = TripletArrays(*(vocab.encode_many(getattr(triplets, side), limits[side], total=len(triplets),
                                               desc=f"Tokenising {side}") for side in SIDES), teacher=triplets.teacher)
    if cache is not None:
        try:
            for side in SIDES:
                getattr(arrays, side).save(cache, side)
        except PipelineError as error:  # the cache only saves time; training goes on without it
            warn(f"cannot cache the token arrays, going on without: {error}")
    return arrays
