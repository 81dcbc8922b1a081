"""Word <-> index, with padding at 0 and unknown words at 1, and text -> token-id arrays."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice, repeat

import numpy as np

from .arrays import TokenArrays
from .report import progress
from .text import TEXT_BREAK, tokenize, tokenize_many

PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1


class Vocabulary:
    def __init__(self, index_to_word: Sequence[str]):
        if list(index_to_word[:2]) != [PAD, UNK]:
            raise ValueError(f"a vocabulary starts with {PAD!r} and {UNK!r}")
        self.index_to_word = list(index_to_word)
        self.word_to_index = {word: index for index, word in enumerate(self.index_to_word)}
        if len(self.word_to_index) != len(self.index_to_word):  # a word twice: its first row could never be used
            seen: set[str] = set()
            repeated = next(word for word in self.index_to_word if word in seen or seen.add(word))
            raise ValueError(f"the vocabulary lists the word {repeated!r} twice")
        self._chunk_lookup: dict[str, int] | None = None

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

    def encode_chunk(self, texts: list[str], max_length: int | None = None) -> TokenArrays:
        """``encode`` for a list of texts, vectorised: one regex pass, a C-level dictionary map, numpy cuts."""
        if self._chunk_lookup is None:
            self._chunk_lookup = {**self.word_to_index, TEXT_BREAK: -1}
        tokens = tokenize_many(texts)
        ids = np.fromiter(map(self._chunk_lookup.get, tokens, repeat(UNK_ID)), dtype=np.int32, count=len(tokens))
        breaks = np.flatnonzero(ids < 0)  # one after each text's last token
        starts = np.concatenate([[0], breaks[:-1] + 1])
        lengths = breaks - starts
        ids = ids[ids >= 0]
        if max_length:
            rank = np.arange(len(ids), dtype=np.int64) - np.repeat(starts - np.arange(len(starts)), lengths)
            ids = ids[rank < max_length]
            lengths = np.minimum(lengths, max_length)
        offsets = np.zeros(len(texts) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return TokenArrays(ids, offsets)

    def encode_chunks(self, texts: Iterable[str], max_length: int | None = None,
                      chunk_size: int = 20_000) -> Iterator[TokenArrays]:
        """``encode_chunk`` over ``texts`` in chunks of ``chunk_size``: bounded memory for any input size."""
        iterator = iter(texts)
        while chunk := list(islice(iterator, chunk_size)):
            yield self.encode_chunk(chunk, max_length)

    def encode_many(self, texts: Iterable[str], max_length: int | None = None, total: int | None = None,
                    desc: str = "Tokenising") -> TokenArrays:
        """Tokenise many texts into one flat int32 id array with offsets (no per-text Python lists kept)."""
        bar = progress(None, desc=desc, total=total, unit="text", mininterval=1.0)
        parts: list[TokenArrays] = []
        for part in self.encode_chunks(texts, max_length):
            parts.append(part)
            bar.update(len(part))
        bar.close()
        return TokenArrays.concatenate(parts)


def vocabulary_fingerprint(vocab: Vocabulary) -> str:
    """A short hash of the word list: files made with one vocabulary record it, and another is refused."""
    digest = hashlib.sha256("\n".join(vocab.index_to_word).encode("utf-8"))
    return digest.hexdigest()[:16]


def inverse_document_frequency(vocab: Vocabulary, texts: Sequence[str]) -> np.ndarray:
    """IDF of every vocabulary word over ``texts``, BM25's ``log(1 + (N - df + 0.5) / (df + 0.5))`` (float32)."""
    arrays = vocab.encode_many(texts, desc="Counting words")
    rows = np.repeat(np.arange(len(arrays), dtype=np.int64), arrays.lengths())
    pairs = np.unique(rows * len(vocab) + np.asarray(arrays.ids, dtype=np.int64))
    df = np.bincount(pairs % len(vocab), minlength=len(vocab)).astype(np.float64)
    return np.log1p((len(texts) - df + 0.5) / (df + 0.5)).astype(np.float32)
