"""Variable-length token sequences as two flat arrays: int32 ids and int64 offsets (nanoGPT-style).

Sequence ``i`` is ``ids[offsets[i]:offsets[i + 1]]``. Arrays are saved as ``.npy`` and memory-mapped on load,
so a training run reads only the batches it touches. Batches are gathered with vectorised numpy, no loop
over tokens: the flat ids plus per-sequence offsets feed ``nn.EmbeddingBag`` directly.
"""

from __future__ import annotations

import io
import mmap
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from msmarco_search.core.errors import PipelineError, first_line
from msmarco_search.io.atomic import PendingFile, atomic_write


@dataclass
class TokenArrays:
    ids: np.ndarray  # int32, all sequences back to back
    offsets: np.ndarray  # int64, len(self) + 1 entries, offsets[0] == 0

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def gather(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Flat ids and start offsets of the sequences at ``indices`` (EmbeddingBag's input format)."""
        indices = np.asarray(indices, dtype=np.int64)
        starts = self.offsets[indices]
        lengths = self.offsets[indices + 1] - starts
        bag_offsets = np.zeros(len(indices), dtype=np.int64)
        np.cumsum(lengths[:-1], out=bag_offsets[1:])
        total = int(lengths.sum())
        # position of each output token in the flat array: its sequence's start plus its rank inside it
        positions = np.arange(total, dtype=np.int64) + np.repeat(starts - bag_offsets, lengths)
        return np.asarray(self.ids[positions], dtype=np.int64), bag_offsets

    @classmethod
    def concatenate(cls, parts: list[TokenArrays]) -> TokenArrays:
        if not parts:
            return cls(np.zeros(0, dtype=np.int32), np.zeros(1, dtype=np.int64))
        ids = np.concatenate([np.asarray(p.ids, dtype=np.int32) for p in parts])
        lengths = np.concatenate([p.lengths() for p in parts])
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return cls(ids, offsets)

    def save(self, directory: str | Path, name: str) -> None:
        directory = Path(directory)
        save_npy(directory / f"{name}.ids.npy", self.ids)
        save_npy(directory / f"{name}.offsets.npy", self.offsets)

    @classmethod
    def load(cls, directory: str | Path, name: str, mmap: bool = True, vocab_size: int | None = None
             ) -> TokenArrays:
        """Load and validate; with ``vocab_size``, also check every id is a row of the embedding table.

        A cache that passes is safe to index with: offsets start at 0, never decrease and end at ``len(ids)``.
        """
        directory = Path(directory)
        ids = _load_npy(directory / f"{name}.ids.npy", mmap)
        offsets = _load_npy(directory / f"{name}.offsets.npy", mmap)
        where = directory / name
        if (ids.dtype != np.int32 or offsets.dtype != np.int64 or ids.ndim != 1 or offsets.ndim != 1
                or len(offsets) == 0):
            raise PipelineError("token arrays have the wrong type or shape", where)
        if int(offsets[0]) != 0 or int(offsets[-1]) != len(ids):
            raise PipelineError("token arrays do not match their offsets (truncated?)", where)
        previous = 0
        for part in _chunks(offsets):
            if previous > int(part[0]) or bool((np.diff(part) < 0).any()):
                raise PipelineError("token array offsets decrease (corrupt)", where)
            previous = int(part[-1])
        if vocab_size is not None:
            for part in _chunks(ids):
                if int(part.min()) < 0 or int(part.max()) >= vocab_size:
                    raise PipelineError(f"token ids fall outside the vocabulary of {vocab_size} words (corrupt, or "
                                        "made with another vocabulary)", where)
        return cls(ids, offsets)


_CHECK_CHUNK = 1 << 22  # elements per read while checking: 16-32 MiB


def _chunks(array: np.ndarray) -> Iterator[np.ndarray]:
    """The chunks of ``array`` (``read_rows``: a memory map is read through its file, in flat memory)."""
    for start in range(0, len(array), _CHECK_CHUNK):
        yield read_rows(array, start, start + _CHECK_CHUNK)


class OpenedArray(np.memmap):
    """A ``.npy`` array memory-mapped from a file the project opened (``open_npy``), keeping that open file: reads
    through the file (``read_rows``, ``read_row_list``) use it, never the path, so they see the bytes of the file
    that was opened even after a rebuild renamed another file to its name, and ``os.pread`` needs no shared
    file position, so any number of threads read at once."""

    file: io.FileIO | None = None
    path: Path | None = None

    def __array_finalize__(self, obj: Any) -> None:
        super().__array_finalize__(obj)
        self.file, self.path = None, getattr(obj, "path", None)  # a view's offset is not the file's: read its map


def open_npy(path: str | Path) -> OpenedArray:
    """The ``.npy`` at ``path`` memory-mapped read-only, as an ``OpenedArray`` that keeps its open file."""
    path = Path(path)
    try:
        file = open(path, "rb", buffering=0)
    except FileNotFoundError as error:
        raise PipelineError("file not found", path) from error
    except OSError as error:
        raise PipelineError(f"cannot read ({error.strerror or error})", path) from error
    try:
        return map_npy(file, path)
    except PipelineError:
        file.close()
        raise


def map_npy(file: io.FileIO, path: str | Path) -> OpenedArray:
    """The ``.npy`` in the open ``file`` memory-mapped read-only, as an ``OpenedArray`` that keeps ``file``
    (``path`` names it in messages). Object arrays and Fortran order, which the project never writes, are
    refused, like any header numpy cannot read."""
    path = Path(path)
    try:
        file.seek(0)
        version = np.lib.format.read_magic(file)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"unsupported .npy version {version}")
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = read_header(file)
        if dtype.hasobject or fortran_order:
            raise ValueError("it holds Python objects or is in Fortran order")
        array = OpenedArray(file, dtype=dtype, mode="r", offset=file.tell(), shape=shape)
    except Exception as error:  # noqa: BLE001 - a damaged header fails in numpy's parser in many ways
        raise PipelineError(f"not a readable .npy array ({first_line(error)})", path) from error
    array.file, array.path = file, path
    return array


def _file_of(array: np.ndarray) -> tuple[int, Path] | None:
    """The open file to read ``array`` through (descriptor, name for messages), or None: read its memory."""
    if isinstance(array, OpenedArray):
        return (array.file.fileno(), array.path) if array.file is not None and array.flags.c_contiguous else None
    return None


def read_rows(array: np.ndarray, start: int, stop: int) -> np.ndarray:
    """``array[start:stop]`` as an array of its own; a memory map of a ``.npy`` file is read through the file.

    Why not slice the map: every page of a map that is touched stays in the process's resident memory until
    the map goes. Checking 10M triplets' 4.7 GB of token ids through the map peaked at 5.1 GB RSS, and an exact
    search over 8.8M float16 vectors (5.3 GB) at 6.1 GB. Read into arrays of one chunk, a pass costs one chunk;
    the pages stay in the kernel's reclaimable cache, as fast to read again.

    An ``OpenedArray`` is read with ``os.pread`` on the file it was opened from. A map made elsewhere
    (``np.load(mmap_mode="r")``) has no open file to read, so its file is opened by name.
    """
    stop = max(0, min(stop, len(array)))
    start = max(0, min(start, stop))
    per_row = int(np.prod(array.shape[1:], dtype=np.int64))
    opened = _file_of(array)
    if opened is not None:
        descriptor, path = opened
        part = np.empty((stop - start) * per_row, dtype=array.dtype)
        wanted = part.nbytes
        if wanted and _pread_into(descriptor, memoryview(part.view(np.uint8)),
                                  array.offset + start * per_row * array.itemsize) != wanted:
            raise PipelineError("is shorter than its header says (truncated?)", path)
        return part.reshape((stop - start, *array.shape[1:]))
    mapped = isinstance(array, np.memmap) and isinstance(array.base, mmap.mmap) and array.filename
    if not mapped or not array.flags.c_contiguous:  # in memory, or a view of a map (its offset is the map's)
        return np.array(array[start:stop])
    with open(array.filename, "rb") as handle:
        handle.seek(array.offset + start * per_row * array.itemsize)
        part = np.fromfile(handle, dtype=array.dtype, count=(stop - start) * per_row)
    if part.size != (stop - start) * per_row:
        raise PipelineError("is shorter than its header says (truncated?)", array.filename)
    return part.reshape((stop - start, *array.shape[1:]))


def _pread_into(descriptor: int, view: memoryview, offset: int) -> int:
    """Fill ``view`` from ``offset`` of the open file (several reads when the kernel returns fewer bytes, as it
    may for reads over 2 GiB); returns the bytes read, fewer only at the end of the file."""
    done = 0
    while done < len(view):
        got = os.preadv(descriptor, [view[done:]], offset + done)
        if got <= 0:
            break
        done += got
    return done


def read_row_list(array: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``array[rows]`` as an array of its own; a memory map of a ``.npy`` file is read row by row through the
    file (``pread``), so the resident set grows by the rows alone.

    Why not index the map: the kernel maps the cached pages around each faulted page into the process too
    (fault-around, 64 KB), so 100K rows scattered over 8.8M float16 vectors put the whole 5.3 GB file in the
    resident set (reclaimable, but it is the peak a process reports). Alone it costs ~5x the map's time
    (1.26 s against 0.18-0.25 s for 100K cached rows); within IVF-PQ's re-scoring at 8.8M, ~25 % of the
    search's time at refine 40 (docs/experiments.md), for 2.2 GB peak instead of 7.1 GB.

    An ``OpenedArray`` is read through the file it was opened from (see ``read_rows``).
    """
    rows = np.asarray(rows, dtype=np.int64)
    opened = _file_of(array)
    mapped = isinstance(array, np.memmap) and isinstance(array.base, mmap.mmap) and array.filename
    if (opened is None and (not mapped or not array.flags.c_contiguous)) or len(rows) == 0:
        return np.array(array[rows])
    if rows.min() < 0 or rows.max() >= len(array):
        raise IndexError(f"rows outside 0-{len(array) - 1}")
    out = np.empty((len(rows), *array.shape[1:]), dtype=array.dtype)
    row_bytes = out[0].nbytes
    view = memoryview(out.reshape(-1).view(np.uint8))
    if opened is not None:
        _read_listed_rows(opened[0], view, rows, array.offset, row_bytes, opened[1])
        return out
    with open(array.filename, "rb", buffering=0) as handle:
        _read_listed_rows(handle.fileno(), view, rows, array.offset, row_bytes, Path(array.filename))
    return out


def _read_listed_rows(descriptor: int, view: memoryview, rows: np.ndarray, start: int, row_bytes: int,
                      path: Path) -> None:
    for i, row in enumerate(rows.tolist()):
        if os.preadv(descriptor, [view[i * row_bytes:(i + 1) * row_bytes]], start + row * row_bytes) != row_bytes:
            raise PipelineError("is shorter than its header says (truncated?)", path)


_HEADER_BYTES = 128  # a .npy v1.0 header padded to a fixed size, so the shape can be patched in at the end


def _npy_header(dtype: np.dtype, length: int) -> bytes:
    text = f"{{'descr': '{np.dtype(dtype).str}', 'fortran_order': False, 'shape': ({length},), }}"
    text = text.ljust(_HEADER_BYTES - 10 - 1) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode("latin1")


class TokenArrayWriter:
    """Append chunks of token arrays straight to ``{name}.ids.npy`` / ``{name}.offsets.npy`` on disk.

    Memory stays at one chunk whatever the total size (the 8.8M-passage collection, 39M triplets). The files
    appear under their final names only on ``close()`` (temporary files renamed into place), like every
    file this project writes; an interrupted run leaves no half-written array behind.
    """

    def __init__(self, directory: str | Path, name: str):
        self.directory, self.name = Path(directory), name
        self._files: dict[str, PendingFile] = {}
        try:
            for kind in ("ids", "offsets"):
                self._files[kind] = PendingFile(self.directory / f"{name}.{kind}.npy")
                self._files[kind].handle.write(b"\0" * _HEADER_BYTES)
            self._files["offsets"].handle.write(np.zeros(1, dtype=np.int64).tobytes())
        except BaseException:
            self.abort()
            raise
        self.tokens = 0
        self.sequences = 0

    def append(self, part: TokenArrays) -> None:
        self._files["ids"].handle.write(np.ascontiguousarray(part.ids, dtype=np.int32).tobytes())
        ends = np.asarray(part.offsets[1:], dtype=np.int64) + self.tokens
        self._files["offsets"].handle.write(ends.tobytes())
        self.tokens += int(part.offsets[-1])
        self.sequences += len(part)

    def close(self) -> TokenArrays:
        """Finish both files, rename them into place (``atomic.PendingFile``) and return them memory-mapped."""
        try:
            for kind, dtype, length in (("ids", np.int32, self.tokens), ("offsets", np.int64, self.sequences + 1)):
                handle = self._files[kind].handle
                handle.seek(0)
                handle.write(_npy_header(np.dtype(dtype), length))
        except OSError as error:
            self.abort()
            raise PipelineError(f"cannot write ({error.strerror or error})", self.directory / self.name) from error
        # offsets last: TokenArrays.load of a half-renamed pair fails on the missing or mismatched offsets file
        for kind in ("ids", "offsets"):
            self._files[kind].commit()
        return TokenArrays.load(self.directory, self.name)

    def abort(self) -> None:
        for pending in self._files.values():
            pending.abort()


def save_npy(path: str | Path, array: np.ndarray) -> Path:
    """``array`` as a ``.npy`` file (no pickled objects), written atomically."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.save(handle, array, allow_pickle=False)

    return atomic_write(path, write)


def _load_npy(path: Path, mmap: bool) -> np.ndarray:
    if not path.is_file():
        raise PipelineError("file not found", path)
    if mmap:  # kept open: the arrays read later are the ones checked now
        return open_npy(path)
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as error:  # noqa: BLE001 - a damaged header fails in numpy's parser in many ways
        raise PipelineError(f"not a readable .npy array ({first_line(error)})", path) from error
    if not isinstance(array, np.ndarray):  # allow_pickle=False already refuses object arrays; be explicit
        raise PipelineError("not a .npy array", path)
    return array
