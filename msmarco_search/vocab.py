"""Word <-> index, with padding at 0 and unknown words at 1, and text -> token-id arrays."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from .arrays import TokenArrays
from .report import progress
from .text import tokenize

PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1


class Vocabulary:
    def __init__(self, index_to_word: Sequence[str]):
        if list(index_to_word[:2]) != [PAD, UNK]:
            raise ValueError(f"a vocabulary starts with {PAD!r} and {UNK!r}")
        self.index_to_word = list(index_to_word)
        self.word_to_index = {word: index for index, word in enumerate(self.index_to_word)}

    @classmethod
    def from_words(cls, words: Iterable[str]) -> Vocabulary:
        return cls([PAD, UNK, *words])

    def __len__(self) -> int:
        return len(self.index_to_word)

    def encode(self, text: str, max_length: int | None = None) -> list[int]:
        """Token ids of ``text`` (unknown words -> ``UNK_ID``), cut at ``max_length`` tokens."""
        lookup = self.word_to_index.get
        ids = [lookup(token, UNK_ID) for token in tokenize(text)]
        return ids[:max_length] if max_length else ids

    def encode_many(self, texts: Iterable[str], max_length: int | None = None, total: int | None = None,
                    desc: str = "Tokenising") -> TokenArrays:
        """Tokenise many texts into one flat int32 id array with offsets (no per-text Python lists kept)."""
        chunks: list[np.ndarray] = []
        lengths: list[int] = []
        for text in progress(texts, desc=desc, total=total, unit="text", mininterval=1.0):
            ids = np.asarray(self.encode(text, max_length), dtype=np.int32)
            chunks.append(ids)
            lengths.append(len(ids))
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int32)
        return TokenArrays(flat, offsets)
