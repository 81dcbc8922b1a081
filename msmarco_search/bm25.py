"""BM25 over a passage collection with ``bm25s``, on the project's tokens, optionally Snowball-stemmed.

The lexical baseline that evaluation compares against and that search and the hybrid use.
Defaults k1 = 0.9, b = 0.4 (Anserini's MS MARCO settings). Stemming (PyStemmer's Snowball stemmer, the one
bm25s supports) is applied to the tokens of ``msmarco_search.text.tokenize``, so BM25 sees the same words as
the towers, only stemmed (the towers' vocabulary has its own stemmer setting, ``--stemmer``, off by default).

A built index can be saved to a folder (bm25s's numpy arrays and JSON vocabulary, read back memory-mapped,
never unpickled) with a ``bm25.json`` record of its settings and collection, so a later run reuses it and a
run with other settings or another collection refuses it instead of silently mixing them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from .errors import PipelineError, first_line
from .fileio import load_json, save_json
from .report import progress
from .text import STEMMERS, TEXT_BREAK, TOKENIZER_VERSION, load_stemmer, pieces, tokenize, tokenize_many

DEFAULT_STEMMER = "english"
RECORD = "bm25.json"
KIND_BM25 = "bm25-index"


@dataclass(frozen=True)
class BM25Settings:
    k1: float = 0.9
    b: float = 0.4
    stemmer: str = DEFAULT_STEMMER

    def __post_init__(self) -> None:
        if self.stemmer not in STEMMERS:
            raise PipelineError(f"unknown BM25 stemmer {self.stemmer!r} (use {', '.join(STEMMERS)})")

    def describe(self) -> str:
        stem = "Snowball English stemmer" if self.stemmer == "english" else "no stemming"
        return f"bm25s, k1 {self.k1}, b {self.b}, {stem}"


class BM25Tokenizer:
    """The project's tokens, Snowball-stemmed unless the stemmer is ``none``."""

    def __init__(self, stemmer: str = DEFAULT_STEMMER):
        self._stemmer = load_stemmer(stemmer)

    def __call__(self, text: str) -> list[str]:
        tokens = tokenize(text)
        return self._stemmer.stemWords(tokens) if self._stemmer is not None and tokens else tokens


class BM25Index:
    def __init__(self, passage_ids: Sequence[str], texts: Sequence[str] | None, k1: float = 0.9, b: float = 0.4,
                 stemmer: str = DEFAULT_STEMMER, retriever: Any = None):
        """BM25 over ``texts`` (row i is ``passage_ids[i]``), or around an already built bm25s ``retriever``."""
        import bm25s

        self.settings = BM25Settings(k1, b, stemmer)
        self.k1, self.b, self.stemmer = k1, b, stemmer
        self.passage_ids = passage_ids
        self.tokenizer = BM25Tokenizer(stemmer)
        self.directory: Path | None = None  # where a loaded index came from, for its error messages
        if retriever is not None:
            self._retriever = retriever
            return
        if texts is None or len(passage_ids) != len(texts):
            raise ValueError("passage_ids and texts differ in length")
        if not len(texts):
            raise PipelineError("cannot build BM25 over an empty collection")
        self._retriever = bm25s.BM25(k1=k1, b=b)
        self._retriever.index([self.tokenizer(t) for t in texts], show_progress=False)

    def __len__(self) -> int:
        return len(self.passage_ids)

    def search(self, queries: Sequence[str], k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` passage positions and scores per query, best first: two ``(len(queries), k)`` arrays."""
        k = min(k, len(self))
        # A query without tokens scores 0 everywhere: bm25s takes an empty list for it, but its own padding
        # token "" lies outside the score matrix and would raise.
        try:
            documents, scores = self._retriever.retrieve([self.tokenizer(q) for q in queries], k=k,
                                                         show_progress=False)
        except (IndexError, ValueError, TypeError) as error:  # a saved index whose arrays were changed
            raise self._damaged(error) from error
        return np.asarray(documents, dtype=np.int64), self._finite(np.asarray(scores, dtype=np.float32))

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of ``query`` against every passage (for re-ranking candidates)."""
        tokens = self.tokenizer(query)
        if not tokens:
            return np.zeros(len(self), dtype=np.float32)
        try:
            return self._finite(np.asarray(self._retriever.get_scores(tokens), dtype=np.float32))
        except (IndexError, ValueError, TypeError) as error:
            raise self._damaged(error) from error

    def _damaged(self, error: BaseException) -> PipelineError:
        return PipelineError(f"BM25 index is damaged ({first_line(error)}); rebuild it", self.directory)

    def _finite(self, scores: np.ndarray) -> np.ndarray:
        # NaN scores sort anywhere and print as nan: only a saved index whose values were changed has them
        if not np.isfinite(scores).all():
            raise self._damaged(ValueError("its scores hold NaN or infinite values"))
        return scores

    # ------------------------------------------------------------------------------------------ on disk

    def save(self, directory: str | Path, collection: dict[str, Any]) -> dict[str, Any]:
        """Write the index to ``directory`` (replaced whole, via a temporary folder); returns its record.

        ``collection`` identifies what was indexed (e.g. file name, size, passage count); a load checks it.
        """
        directory = Path(directory)
        tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            self._retriever.save(str(tmp), show_progress=False)
            record = {"kind": KIND_BM25, **asdict(self.settings), "tokenizer": TOKENIZER_VERSION,
                      "count": len(self), "collection": collection,
                      **_file_record(tmp)}
            save_json(record, tmp / RECORD)
            shutil.rmtree(directory, ignore_errors=True)
            os.replace(tmp, directory)
        except OSError as error:
            raise PipelineError(f"cannot write the BM25 index ({error.strerror or error})", directory) from error
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return record

    @classmethod
    def load(cls, directory: str | Path, passage_ids: Sequence[str], settings: BM25Settings,
             collection: dict[str, Any]) -> BM25Index:
        """A saved index, memory-mapped; refused (one line) unless its settings and collection are these.

        The record is checked, then bm25s reads the files, each by name: a folder replaced in between (a search
        index rebuilt, swapping in a new ``bm25/``) would pair one build's record with another's arrays, so the
        folder must be the same one before and after."""
        import bm25s

        directory = Path(directory)
        before = _folder_identity(directory)
        record = check_saved(directory, settings, collection, len(passage_ids))
        try:
            retriever = bm25s.BM25.load(str(directory), mmap=True, allow_pickle=False, show_progress=False)
        except (OSError, ValueError, KeyError) as error:
            raise PipelineError(f"not a readable BM25 index ({first_line(error)}); rebuild it", directory) from error
        if _folder_identity(directory) != before:
            raise PipelineError("BM25 index was replaced while it was being read (its search index rebuilt?); run "
                                "the command again", directory)
        if retriever.scores.get("num_docs") != record["count"]:
            raise PipelineError(f"BM25 index holds {retriever.scores.get('num_docs')} passages, its record says "
                                f"{record['count']}; rebuild it", directory)
        _check_arrays(retriever, directory)
        index = cls(passage_ids, None, settings.k1, settings.b, settings.stemmer, retriever=retriever)
        index.directory = directory
        return index


def _folder_identity(directory: Path) -> tuple[int, int] | None:
    try:
        found = os.stat(directory)
    except OSError:
        return None
    return found.st_dev, found.st_ino


def _file_record(directory: Path) -> dict[str, dict[str, Any]]:
    """Each file of a saved index: its size, SHA-256 and modification time (``files``, ``digests``, ``stamps``).

    An edit that keeps the size (two words' ids swapped in the vocabulary, scores or rows rewritten in place)
    would otherwise pass the size check and score the wrong passages. The arrays are the index's bulk (1.4 GB
    at 2M passages), so a load hashes them only when a file's modification time is not the one recorded (edited,
    or copied without its times): an unchanged index loads without reading them.
    """
    files = sorted(p for p in directory.iterdir() if p.name != RECORD)
    return {"files": {p.name: p.stat().st_size for p in files}, "digests": {p.name: _digest(p) for p in files},
            "stamps": {p.name: p.stat().st_mtime_ns for p in files}}


def _digest(path: Path) -> str:
    """SHA-256 of a file of the saved index."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_arrays(retriever: Any, directory: Path) -> None:
    """The score matrix's arrays fit together (a CSC matrix: one column per word, one row per passage), so a
    file replaced by another of the same size is refused here instead of crashing or scoring wrongly later.
    Cheap: one pass over the column pointers (one per word), none over the nonzero entries."""
    scores, words = retriever.scores, len(retriever.vocab_dict)
    data, indices, indptr = scores.get("data"), scores.get("indices"), scores.get("indptr")
    arrays = {"data": data, "indices": indices, "indptr": indptr}
    if not all(isinstance(a, np.ndarray) and a.ndim == 1 for a in arrays.values()):
        problem = "its score arrays are not one-dimensional arrays"
    elif data.dtype.kind != "f" or indices.dtype.kind not in "iu" or indptr.dtype.kind not in "iu":
        problem = f"its score arrays have types {data.dtype}, {indices.dtype}, {indptr.dtype}"
    elif len(data) != len(indices) or not len(indptr) or indptr[0] != 0 or indptr[-1] != len(data):
        problem = f"its score arrays do not fit together ({len(data)} scores, {len(indices)} rows, column pointers "
        problem += f"ending at {indptr[-1] if len(indptr) else 'nothing'})"
    elif len(indptr) not in (words, words + 1) or (np.diff(indptr) < 0).any():
        problem = f"its column pointers ({len(indptr)}) do not fit its vocabulary of {words} words"
    else:
        return
    raise PipelineError(f"BM25 index is damaged: {problem}; rebuild it", directory)


def check_saved(directory: Path, settings: BM25Settings, collection: dict[str, Any], count: int) -> dict[str, Any]:
    """The record of a saved BM25 index, after checking it was built with ``settings`` over ``collection``."""
    path = directory / RECORD
    if not path.is_file():
        raise PipelineError(f"not a complete BM25 index (no {RECORD}); rebuild it", directory)
    record = load_json(path)
    if not isinstance(record, dict) or record.get("kind") != KIND_BM25:
        raise PipelineError(f"not a {KIND_BM25} record", path)
    saved = (record.get("k1"), record.get("b"), record.get("stemmer"), record.get("tokenizer"))
    wanted = (settings.k1, settings.b, settings.stemmer, TOKENIZER_VERSION)
    if saved != wanted:
        raise PipelineError(f"BM25 index was built with k1 {saved[0]}, b {saved[1]}, stemmer {saved[2]}, tokenizer "
                            f"{saved[3]}, not the k1 {wanted[0]}, b {wanted[1]}, stemmer {wanted[2]} asked for; "
                            "rebuild it (search/search.py index) with these settings, or ask for its own", path)
    if record.get("collection") != collection or record.get("count") != count:
        raise PipelineError(f"BM25 index was built over another collection ({record.get('collection')}, "
                            f"{record.get('count')} passages), not {collection} ({count} passages); rebuild it", path)
    # no digests or stamps: an index of an older version (its JSON files were hashed, its arrays not)
    files, digests, stamps = record.get("files", {}), record.get("digests", {}), record.get("stamps", {})
    if not all(isinstance(part, dict) for part in (files, digests, stamps)):
        raise PipelineError("BM25 index record is damaged (files, digests or stamps not a mapping); rebuild it", path)
    for name, size in files.items():
        file = directory / str(name)
        stat = file.stat() if file.is_file() else None
        if stat is None or stat.st_size != size:
            raise PipelineError("missing or changed since the BM25 index was built; rebuild it", file)
        untouched = name in stamps and stamps[name] == stat.st_mtime_ns
        if name in digests and not untouched and _digest(file) != digests[name]:
            raise PipelineError("changed since the BM25 index was built (its content differs); rebuild it", file)
    return record


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
              **_file_record(directory)}
    save_json(record, directory / RECORD)
    return record
