"""BM25 at scale: a collection streamed into a saved BM25 index, its postings spilled to disk in blocks, so
memory stays bounded whatever the collection's size (``build_streamed``)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from msmarco_search.core.errors import PipelineError
from msmarco_search.core.report import progress
from msmarco_search.core.text import (
    TEXT_BREAK,
    TOKENIZER_VERSION,
    load_stemmer,
    pieces,
    tokenize_many,
)
from msmarco_search.index.bm25 import KIND_BM25, RECORD, BM25Settings, file_record
from msmarco_search.io.atomic import save_json

# ---------------------------------------------------------------------------------------------- at scale

# Texts tokenised per chunk: one regex pass and one np.unique over ~3M tokens, ~50 MB of token arrays.
STREAM_CHUNK = 50_000
# Postings placed per pass over the per-passage spill (data float32 + indices int32: 8 bytes each, so
# 256 MiB of arrays): the term-major matrix is written block of terms by block of terms, never held whole.
BLOCK_POSTINGS = 32 * 2**20
_DATA, _INDICES, _INDPTR = "data.csc.index.npy", "indices.csc.index.npy", "indptr.csc.index.npy"
_VOCAB, _PARAMS = "vocab.index.json", "params.index.json"


class _TermIds(dict):
    """Raw token -> stemmed term id, filled on first sight (each distinct token is stemmed once); the text
    break of ``tokenize_many`` maps to -1."""

    def __init__(self, stemmer: str):
        super().__init__({TEXT_BREAK: -1})
        self._stemmer = load_stemmer(stemmer)
        self.terms: dict[str, int] = {}

    def __missing__(self, token: str) -> int:
        term = self._stemmer.stemWord(token) if self._stemmer is not None else token
        value = self.terms.setdefault(term, len(self.terms))
        self[token] = value
        return value


class _PostingSpill:
    """Pass 1: per chunk of texts, each passage's distinct term ids and their counts, appended to two flat
    int32 files (passage-major), with per-passage lengths and posting counts and the running document
    frequencies kept as arrays."""

    def __init__(self, folder: Path, stemmer: str):
        self.table = _TermIds(stemmer)
        self.terms_path, self.tfs_path = folder / ".spill-terms.i32", folder / ".spill-tfs.i32"
        self._terms, self._tfs = open(self.terms_path, "wb"), open(self.tfs_path, "wb")
        self.lengths: list[np.ndarray] = []  # tokens per passage
        self.postings: list[np.ndarray] = []  # distinct terms per passage
        self.df = np.zeros(0, dtype=np.int64)

    def add(self, texts: list[str]) -> None:
        for piece in pieces(texts):  # the token lists of a bounded run of characters at a time
            self._add(piece)

    def _add(self, texts: list[str]) -> None:
        tokens = tokenize_many(texts)
        ids = np.fromiter(map(self.table.__getitem__, tokens), dtype=np.int64, count=len(tokens))
        ends = np.flatnonzero(ids < 0)  # one break after each text
        self.lengths.append((np.diff(ends, prepend=-1) - 1).astype(np.int32))
        passage = np.repeat(np.arange(len(texts), dtype=np.int64), np.diff(ends, prepend=-1))
        keep = ids >= 0
        pairs, tfs = np.unique((passage[keep] << 32) | ids[keep], return_counts=True)
        terms = (pairs & 0xFFFFFFFF).astype(np.int32)
        self.postings.append(np.bincount(pairs >> 32, minlength=len(texts)).astype(np.int32))
        if len(self.table.terms) > len(self.df):
            self.df = np.concatenate([self.df, np.zeros(len(self.table.terms) - len(self.df), dtype=np.int64)])
        self.df += np.bincount(terms, minlength=len(self.df))
        self._terms.write(terms.tobytes())
        self._tfs.write(tfs.astype(np.int32).tobytes())

    def close(self) -> None:
        self._terms.close()
        self._tfs.close()

    def remove(self) -> None:
        try:
            self.close()
        except OSError:  # a write that failed (a full disk) failed the close too; the files go anyway
            pass
        self.terms_path.unlink(missing_ok=True)
        self.tfs_path.unlink(missing_ok=True)


def _idf(df: np.ndarray, count: int) -> np.ndarray:
    """bm25s's Lucene IDF, term by term with ``math.log`` and stored as float32, exactly as bm25s builds it
    (numpy's vectorised log may differ in the last bit)."""
    idf = np.zeros(len(df), dtype=np.float32)
    for term, frequency in enumerate(df.tolist()):
        if frequency:
            idf[term] = math.log(1 + (count - frequency + 0.5) / (frequency + 0.5))
    return idf


def _npy_writer(path: Path, dtype: Any, length: int) -> BinaryIO:
    """An open ``.npy`` of ``length`` rows laid out by numpy (header, full size), positioned at its data;
    rows are then appended with plain writes, which keep the process's memory flat."""
    layout = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(length,))
    start = layout.offset
    del layout
    handle = open(path, "r+b")
    handle.seek(start)
    return handle


def _write_postings(spill: _PostingSpill, folder: Path, settings: BM25Settings, block: int) -> tuple[int, int]:
    """Pass 2: the term-major (CSC) score matrix bm25s searches, block of terms by block of terms; each
    block is one read of the spill. Scores are bm25s's Lucene BM25 in bm25s's arithmetic (float64 term
    frequency component, float32 IDF, float32 result), so they are bit for bit the ones ``BM25.index`` gives.
    Returns (passages, postings)."""
    lengths = np.concatenate(spill.lengths)
    per_passage = np.concatenate(spill.postings)
    count, total = len(lengths), int(spill.df.sum())
    average = float(lengths.sum(dtype=np.int64)) / count
    idf = _idf(spill.df, count)
    # bm25s: tf / (k1 * ((1 - b) + b * doc_len / avg_len) + tf), the denominator's constant per passage
    constant = settings.k1 * ((1 - settings.b) + settings.b * lengths.astype(np.float64) / average)
    indptr = np.zeros(len(spill.df) + 1, dtype=np.int64)
    np.cumsum(spill.df, out=indptr[1:])
    save_npy_plain(folder / _INDPTR, indptr)
    data_out, indices_out = _npy_writer(folder / _DATA, np.float32, total), _npy_writer(folder / _INDICES,
                                                                                         np.int32, total)
    with data_out, indices_out:
        first = 0
        while first < len(spill.df):
            last = int(np.searchsorted(indptr, indptr[first] + block, side="right")) - 1
            last = max(last, first + 1)  # one term's postings always fit one block
            size = int(indptr[last] - indptr[first])
            data, rows = np.empty(size, dtype=np.float32), np.empty(size, dtype=np.int32)
            cursor = indptr[first:last] - indptr[first]
            for passages, (start, stop) in _chunk_bounds(per_passage):
                terms = np.fromfile(spill.terms_path, dtype=np.int32, count=stop - start, offset=4 * start)
                inside = (terms >= first) & (terms < last)
                if not inside.any():
                    continue
                tfs = np.fromfile(spill.tfs_path, dtype=np.int32, count=stop - start, offset=4 * start)[inside]
                owner = passages[inside]
                terms = terms[inside] - first
                tf = tfs.astype(np.float64)
                scores = (idf[terms + first].astype(np.float64) * (tf / (constant[owner] + tf))).astype(np.float32)
                order = np.argsort(terms, kind="stable")  # passage order within each term, as bm25s
                terms, owner, scores = terms[order], owner[order], scores[order]
                starts = np.flatnonzero(np.r_[True, terms[1:] != terms[:-1]])
                runs = np.diff(np.r_[starts, len(terms)])
                group = terms[starts]
                place = cursor[np.repeat(group, runs)] + (np.arange(len(terms)) - np.repeat(starts, runs))
                data[place], rows[place] = scores, owner
                cursor[group] += runs
            data_out.write(data.tobytes())
            indices_out.write(rows.tobytes())
            first = last
    return count, total


def _chunk_bounds(per_passage: np.ndarray, postings: int = 8 * 2**20) -> Iterator[tuple[np.ndarray, tuple[int, int]]]:
    """The spill cut into runs of whole passages of about ``postings`` entries: per run, the passage of
    each entry and the run's (start, stop) in the spill (made one run at a time: all of them would be
    4 bytes per posting)."""
    ends = np.cumsum(per_passage, dtype=np.int64)
    first, start = 0, 0
    while first < len(per_passage):
        last = max(int(np.searchsorted(ends, start + postings, side="right")), first + 1)
        stop = int(ends[last - 1])
        yield np.repeat(np.arange(first, last, dtype=np.int32), per_passage[first:last]), (start, stop)
        first, start = last, stop


def save_npy_plain(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as handle:
        np.save(handle, array, allow_pickle=False)


def build_streamed(texts: Iterable[str], count: int, settings: BM25Settings, directory: str | Path,
                   collection: dict[str, Any], chunk: int = STREAM_CHUNK,
                   block: int = BLOCK_POSTINGS) -> dict[str, Any]:
    """BM25 over ``count`` streamed ``texts``, written to ``directory`` as a saved bm25s index (what
    ``BM25Index.load`` memory-maps), without ever holding the token lists: texts are tokenised chunk by
    chunk into a spill of per-passage term counts (pass 1), then the score matrix is written term block
    by term block (pass 2). ``directory`` must be new (an index build's own staging folder); on failure
    it is left for the caller to remove. Returns the ``bm25.json`` record."""
    directory = Path(directory)
    try:  # a full disk (or a quota) fails a write anywhere here: one line, and the caller removes the folder
        return _build_streamed(texts, count, settings, directory, collection, chunk, block)
    except OSError as error:
        raise PipelineError(f"cannot write the BM25 index ({error.strerror or error}); free some space or choose "
                            "another folder, then run again", directory) from error


def _build_streamed(texts: Iterable[str], count: int, settings: BM25Settings, directory: Path,
                    collection: dict[str, Any], chunk: int, block: int) -> dict[str, Any]:
    import bm25s

    directory.mkdir(parents=True)
    spill = _PostingSpill(directory, settings.stemmer)
    try:
        batch: list[str] = []
        for text in progress(texts, desc="BM25: tokenising", total=count, unit="passage", mininterval=1.0):
            batch.append(text)
            if len(batch) == chunk:
                spill.add(batch)
                batch = []
        if batch:
            spill.add(batch)
        spill.close()
        indexed = sum(len(part) for part in spill.lengths)
        if indexed != count or not count:
            raise PipelineError(f"BM25 read {indexed:,} passages, expected {count:,}", directory)
        passages, postings = _write_postings(spill, directory, settings, block)
    finally:
        spill.remove()
    vocab = {**spill.table.terms, "": len(spill.table.terms)}  # bm25s's empty token, outside the matrix
    (directory / _VOCAB).write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    params = {"k1": settings.k1, "b": settings.b, "delta": 0.5, "method": "lucene", "idf_method": "lucene",
              "dtype": "float32", "int_dtype": "int32", "num_docs": passages, "version": bm25s.__version__,
              "backend": "numpy"}
    (directory / _PARAMS).write_text(json.dumps(params, indent=4))
    record = {"kind": KIND_BM25, **asdict(settings), "tokenizer": TOKENIZER_VERSION, "count": passages,
              "postings": postings, "collection": collection,
              **file_record(directory)}
    save_json(record, directory / RECORD)
    return record
