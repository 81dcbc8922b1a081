"""An index's vectors read as one matrix, whether one file or several shards: rows and row lists read through
the files, so a pass over millions of vectors costs one chunk of resident memory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from msmarco_search.core.errors import PipelineError, first_line
from msmarco_search.index.layout import VECTORS
from msmarco_search.io.arrays import read_row_list, read_rows


def vector_row_list(vectors: Any, rows: np.ndarray) -> np.ndarray:
    """The rows ``rows`` of an index's vectors (one file or shards joined), read through the files
    (``arrays.read_row_list``): a sample of 8.8M vectors costs its own rows of resident memory, not the file."""
    return vectors.row_list(rows) if isinstance(vectors, JoinedRows) else read_row_list(vectors, rows)


def vector_rows(vectors: Any, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of an index's vectors (one file or shards joined), read through the files
    (``arrays.read_rows``), so a pass over 8.8M vectors costs one chunk of resident memory, not the file."""
    return vectors.rows(start, stop) if isinstance(vectors, JoinedRows) else read_rows(vectors, start, stop)


class JoinedRows:
    """The vectors of several shards read as one ``(count, dim)`` matrix: row slices and row lists, the two
    reads search makes (chunks for exact search, candidates for re-ranking), each shard memory-mapped."""

    def __init__(self, parts: list[np.ndarray]):
        self.parts = parts
        self.starts = np.cumsum([0, *(len(p) for p in parts)])
        self.dtype = parts[0].dtype
        self.shape = (int(self.starts[-1]), parts[0].shape[1])
        self.ndim = 2

    def __len__(self) -> int:
        return self.shape[0]

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` of the joined matrix, each shard's part read through its file (``read_rows``)."""
        pieces = [read_rows(part, start - first, stop - first) for part, first in zip(self.parts, self.starts,
                                                                                      strict=False)
                  if stop > first and start < first + len(part)]
        return np.concatenate(pieces) if pieces else self.parts[0][:0].copy()

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                return self[np.arange(start, stop, step)]
            pieces = [part[max(start - first, 0):max(stop - first, 0)]
                      for part, first in zip(self.parts, self.starts, strict=False)]
            return np.concatenate([p for p in pieces if len(p)] or [self.parts[0][:0]])
        rows = np.asarray(key, dtype=np.int64)
        if rows.ndim == 0:
            return self[int(rows):int(rows) + 1][0]
        return self.row_list(np.where(rows < 0, rows + len(self), rows), through_files=False)

    def row_list(self, rows: np.ndarray, through_files: bool = True) -> np.ndarray:
        """The rows ``rows`` of the joined matrix; ``through_files``: each shard's read through its file
        (``arrays.read_row_list``), else through its map."""
        out = np.empty((len(rows), self.shape[1]), dtype=self.dtype)
        owner = np.searchsorted(self.starts, rows, side="right") - 1
        for number, part in enumerate(self.parts):
            mine = owner == number
            if mine.any():
                local = rows[mine] - self.starts[number]
                out[mine] = read_row_list(part, local) if through_files else part[local]
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        whole = self[0:len(self)]
        return whole if dtype is None else whole.astype(dtype)


def joined_vectors(directory: Path, shards: list[dict[str, Any]] | None) -> Any:
    if not shards:
        return load_array(directory / VECTORS)
    return JoinedRows([load_array(directory / shard["name"] / VECTORS) for shard in shards])


def load_array(path: Path) -> np.ndarray:
    """A ``.npy`` of a build's own staging folder, memory-mapped (the build holds the folder's lock)."""
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise PipelineError(f"not a readable .npy array ({first_line(error)})", path) from error
