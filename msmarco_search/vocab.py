"""Word <-> index, with padding at 0 and unknown words at 1, and text -> token-id arrays.

The vocabulary owns how text becomes its words (as sentence-transformers' ``StaticEmbedding`` owns its tokenizer):
the project's tokens (``msmarco_search.text``), Snowball-stemmed when the vocabulary was made from stemmed text
(``stemmer``, recorded with the words wherever they are saved, and part of the fingerprint).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice, repeat
from typing import Any

import numpy as np

from .arrays import TokenArrays
from .report import progress
from .text import TEXT_BREAK, load_stemmer, pieces, tokenize, tokenize_many

PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1


class _StemmedIds(dict):
    """Raw token -> id of its stem (``UNK_ID`` when the stem is not a word), each distinct token stemmed once;
    the text break of ``tokenize_many`` maps to -1."""

    def __init__(self, word_to_index: dict[str, int], stemmer: Any):
        super().__init__({TEXT_BREAK: -1})
        self._words, self._stem = word_to_index, stemmer.stemWord

    def __missing__(self, token: str) -> int:
        value = self[token] = self._words.get(self._stem(token), UNK_ID)
        return value


HEAD_CHARACTERS = 65_536  # texts longer than this (and 64 characters a wanted token) are cut before tokenising


def _head(text: str, max_length: int) -> str:
    """The start of ``text`` that holds its first ``max_length`` tokens (``text`` itself when it is short): a
    prefix cut at whitespace, so every token in it is whole, grown until it holds ``max_length`` tokens or is
    the whole text. ASCII only: a non-ASCII text is repaired and normalised as a whole (``text.repair``), which a
    prefix could change."""
    size = max(HEAD_CHARACTERS, 64 * max_length)
    if len(text) <= size or not text.isascii():
        return text
    while size < len(text):
        cut = max(text.rfind(" ", 0, size), text.rfind("\n", 0, size), text.rfind("\t", 0, size))
        if cut > 0 and len(tokenize(text[:cut])) >= max_length:
            return text[:cut]
        size *= 4
    return text


class Vocabulary:
    def __init__(self, index_to_word: Sequence[str], stemmer: str = "none"):
        self.stemmer = stemmer
        self._stemmer = load_stemmer(stemmer)  # ValueError for an unknown name
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
    def from_words(cls, words: Iterable[str], stemmer: str = "none") -> Vocabulary:
        return cls([PAD, UNK, *words], stemmer)

    def __getstate__(self) -> dict[str, Any]:  # for DataLoader workers: the PyStemmer object does not pickle
        return {"index_to_word": self.index_to_word, "stemmer": self.stemmer}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["index_to_word"], state["stemmer"])

    def tokens(self, text: str) -> list[str]:
        """The words of ``text`` as this vocabulary spells them: the project's tokens, stemmed if it stems."""
        tokens = tokenize(text)
        return self._stemmer.stemWords(tokens) if self._stemmer is not None and tokens else tokens

    def __len__(self) -> int:
        return len(self.index_to_word)

    def encode(self, text: str, max_length: int | None = None) -> list[int]:
        """Token ids of ``text`` (unknown words -> ``UNK_ID``), cut at ``max_length`` tokens."""
        lookup = self.word_to_index.get
        ids = [lookup(token, UNK_ID) for token in self.tokens(text)]
        return ids[:max_length] if max_length else ids

    def encode_chunk(self, texts: list[str], max_length: int | None = None) -> TokenArrays:
        """``encode`` for a list of texts, vectorised: one regex pass, a C-level dictionary map, numpy cuts.

        Memory follows the distinct text, not the list: a text listed many times (a pickle's shared references
        load as one string) is tokenised once and its ids repeated; the distinct texts are tokenised in pieces of
        about ``text.PIECE_CHARACTERS`` (``text.pieces``); with ``max_length``, a long text is
        tokenised only as far as its first ``max_length`` tokens reach.
        """
        distinct = dict.fromkeys(texts)
        if len(distinct) == len(texts):
            return self._encode_distinct(texts, max_length)
        for row, text in enumerate(distinct):
            distinct[text] = row
        arrays = self._encode_distinct(list(distinct), max_length)
        ids, starts = arrays.gather(np.fromiter(map(distinct.__getitem__, texts), dtype=np.int64, count=len(texts)))
        offsets = np.append(starts, len(ids))
        return TokenArrays(ids.astype(np.int32), offsets)

    def _encode_distinct(self, texts: list[str], max_length: int | None) -> TokenArrays:
        if max_length:
            texts = [_head(text, max_length) for text in texts]
        parts = [self._encode_piece(piece, max_length) for piece in pieces(texts)]
        return TokenArrays.concatenate(parts) if len(parts) != 1 else parts[0]

    def _encode_piece(self, texts: list[str], max_length: int | None) -> TokenArrays:
        tokens = tokenize_many(texts)
        if self._stemmer is not None:
            if self._chunk_lookup is None:
                self._chunk_lookup = _StemmedIds(self.word_to_index, self._stemmer)
            found = map(self._chunk_lookup.__getitem__, tokens)
        else:
            if self._chunk_lookup is None:
                self._chunk_lookup = {**self.word_to_index, TEXT_BREAK: -1}
            found = map(self._chunk_lookup.get, tokens, repeat(UNK_ID))
        ids = np.fromiter(found, dtype=np.int32, count=len(tokens))
        del tokens
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


def read_stemmer(data: dict[str, Any]) -> str:
    """The ``stemmer`` a saved vocabulary records (files from before it have none: ``none``); TypeError or
    ValueError for anything but a known name."""
    stemmer = data.get("stemmer", "none")
    if not isinstance(stemmer, str):
        raise TypeError(f"its stemmer is a {type(stemmer).__name__}, not a name")
    load_stemmer(stemmer)
    return stemmer


def vocabulary_fingerprint(vocab: Vocabulary) -> str:
    """A short hash of the word list (and the stemmer, if any): files made with one vocabulary record it, and
    another is refused."""
    text = "\n".join(vocab.index_to_word) + ("" if vocab.stemmer == "none" else f"\n\0stemmer:{vocab.stemmer}")
    digest = hashlib.sha256(text.encode("utf-8"))
    return digest.hexdigest()[:16]


def inverse_document_frequency(vocab: Vocabulary, texts: Sequence[str]) -> np.ndarray:
    """IDF of every vocabulary word over ``texts``, BM25's ``log(1 + (N - df + 0.5) / (df + 0.5))`` (float32)."""
    arrays = vocab.encode_many(texts, desc="Counting words")
    rows = np.repeat(np.arange(len(arrays), dtype=np.int64), arrays.lengths())
    # distinct (text, word) pairs by a sort, not np.unique: numpy 2.4's unique hashes, 8.6 s against 0.2 s
    # here for the recipe's 8M tokens (166K passages), paid by every seed the main job trains
    pairs = np.sort(rows * len(vocab) + np.asarray(arrays.ids, dtype=np.int64))
    pairs = pairs[np.concatenate(([True], pairs[1:] != pairs[:-1]))] if len(pairs) else pairs
    df = np.bincount(pairs % len(vocab), minlength=len(vocab)).astype(np.float64)
    return np.log1p((len(texts) - df + 0.5) / (df + 0.5)).astype(np.float32)
