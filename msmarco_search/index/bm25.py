"""BM25 over a passage collection with ``bm25s``, on the project's tokens, optionally Snowball-stemmed.

The lexical baseline that evaluation compares against and that search and the hybrid use.
Defaults k1 = 0.9, b = 0.4 (Anserini's MS MARCO settings). Stemming (PyStemmer's Snowball stemmer, the one
bm25s supports) is applied to the tokens of ``msmarco_search.core.text.tokenize``, so BM25 sees the same words as
the towers, only stemmed (the towers' vocabulary has its own stemmer setting, ``--stemmer``, off by default).

A built index can be saved to a folder (bm25s's numpy arrays and JSON vocabulary, read back memory-mapped,
never unpickled) with a ``bm25.json`` record of its settings and collection, so a later run reuses it and a
run with other settings or another collection refuses it instead of silently mixing them.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from msmarco_search.core.commands import command
from msmarco_search.core.errors import PipelineError, first_line
from msmarco_search.core.text import (
    STEMMERS,
    TOKENIZER_VERSION,
    load_stemmer,
    tokenize,
)
from msmarco_search.io.atomic import save_json
from msmarco_search.io.safe_load import load_json

if TYPE_CHECKING:  # numpy is imported where the index is used: every command's --help reads BM25Settings
    import numpy as np

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
        import numpy as np

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
        import numpy as np

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
        import numpy as np

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
                      **file_record(tmp)}
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


def file_record(directory: Path) -> dict[str, dict[str, Any]]:
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
    import numpy as np

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
                            f"rebuild it ({command('search')} index) with these settings, or ask for its own", path)
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
