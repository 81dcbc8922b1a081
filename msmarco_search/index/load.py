"""Loading a built index: ``load_index`` opens it once, checks it, and answers from the files it opened.

A loaded index (``PassageIndex``) answers from its files as they were when it was opened: every file is opened
once, through the folder opened once (``opened.OpenedFolder``), and read through those open files (``os.pread``,
memory maps of them), never again by name. A rebuild swaps another folder in by renaming, and the search
command's ``faiss`` replaces ``faiss.index`` and the manifest in place; an index already open keeps answering
with what it opened.
"""

from __future__ import annotations

import io
import os
import stat
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from msmarco_search.core.commands import command
from msmarco_search.core.errors import PipelineError, short
from msmarco_search.index.bm25 import BM25Settings
from msmarco_search.index.faiss import check_faiss, import_faiss, read_faiss
from msmarco_search.index.layout import (
    ARRAY_FILES,
    FAISS_FILE,
    FAISS_KINDS,
    ID_OFFSETS,
    IDS,
    MANIFEST,
    OFFSETS,
    SHARD_RECORD,
    VECTORS,
    shard_name,
)
from msmarco_search.index.manifest import check_model, check_shard_record, check_size, json_of, read_manifest
from msmarco_search.index.opened import Missing, OpenedFolder, PositionedReader, read_line
from msmarco_search.index.vectors import JoinedRows
from msmarco_search.io.arrays import OpenedArray, map_npy, read_rows
from msmarco_search.io.atomic import content_sample
from msmarco_search.io.textfiles import decode_text

if TYPE_CHECKING:  # the model's type only: the index is read without torch
    from msmarco_search.training.model import TwoTowerModel

# ---------------------------------------------------------------------------------------------- BM25


class PassageIds(Sequence[str]):
    """An index's passage ids, decoded one at a time (an 8.8M-row index never builds the list)."""

    def __init__(self, index: PassageIndex):
        self.index = index

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, position):  # type: ignore[override]
        return self.index.pid(position)


def collection_identity(collection: str | Path, count: int) -> dict[str, Any]:
    """What a saved BM25 index records it was built over: the collection file (absolute path, size, content
    sample) and the passages indexed from it; a run over anything else is refused."""
    collection = Path(collection).resolve()
    return {"collection": str(collection), "collection_size": collection.stat().st_size,
            "collection_sample": content_sample(collection), "count": count}


def saved_bm25_settings(index: PassageIndex) -> BM25Settings | None:
    """The settings of the BM25 index saved with ``index`` (``None``: it has none)."""
    entry = index.manifest.get("bm25")
    if not isinstance(entry, dict):
        return None
    try:
        return BM25Settings(float(entry["k1"]), float(entry["b"]), str(entry["stemmer"]))
    except (KeyError, TypeError, ValueError) as error:
        raise PipelineError(f"the manifest's BM25 entry is incomplete ({error})", index.directory / MANIFEST) from error


# ---------------------------------------------------------------------------------------------- loading

_OPEN_TRIES = 3  # opened again when the folder was swapped or its manifest replaced while it was being opened


_CHECK_ROWS = 1 << 22  # rows per read while checking offsets: 32 MiB of int64


class IdTable:
    """Passage ids as one flat array of UTF-8 bytes and ``count + 1`` int64 offsets into it (``ids.npy``,
    ``id_offsets.npy``): row ``i``'s id is ``data[offsets[i]:offsets[i + 1]]``."""

    def __init__(self, data: np.ndarray, offsets: np.ndarray):
        self.data, self.offsets = np.asarray(data), np.asarray(offsets)
        # memoryviews of the maps: ranking and fusing look up thousands of ids a query, and a memoryview's slice
        # and item cost less than a numpy array's (a memmap subclass's, several times more)
        self._bytes, self._ends = memoryview(self.data), memoryview(self.offsets)
        self._count = len(self.offsets) - 1

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, position: int) -> bytes:
        position = int(position)
        if position < 0:
            position += self._count
        if not 0 <= position < self._count:
            raise IndexError(f"row {position} outside 0-{self._count - 1}")
        return self._bytes[self._ends[position]:self._ends[position + 1]].tobytes()

    def tolist(self) -> list[bytes]:
        return [self[position] for position in range(len(self))]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return np.array(self.tolist(), dtype=dtype or np.bytes_)


class PassageIndex:
    """A built index as it was when it was opened (``load_index``), checked; rows are passage positions, and
    ``pid``/``text`` look them up.

    Everything it answers with is read from the files it opened: the arrays are memory maps of them, texts and
    rows are read with ``os.pread`` on them, faiss is read from its open file. None is opened again by name, so a
    rebuild of its folder (another folder renamed into its place, the old one removed) or a faiss index replaced
    in place changes nothing it answers; and ``pread`` needs no shared file position, so threads read at once.
    Each text's line must begin with its row's id: a collection edited in place after the index was opened is
    refused, never shown beside another passage's id.
    """

    def __init__(self, directory: Path, manifest: dict[str, Any], vectors: Any, ids: IdTable, offsets: np.ndarray,
                 collection: Path, opened: OpenedFolder):
        self.directory, self.manifest = directory, manifest
        self.vectors, self.ids, self.offsets, self.collection = vectors, ids, offsets, collection
        self._row_offsets = memoryview(np.asarray(offsets))  # one row's offset as a Python int (see IdTable)
        self._opened = opened
        collection_file = opened.collection or opened.files[manifest["collection"]]
        self._collection = collection_file.fileno()
        self._faiss: Any = None
        self._faiss_lock = threading.Lock()  # a server's first searches may ask for it at once: read it once

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def has_faiss(self) -> bool:
        return bool(self.manifest.get("faiss"))

    def pid(self, position: int) -> str:
        return self.ids[position].decode("utf-8", "replace")

    def text(self, position: int) -> str:
        """The passage text at row ``position``: its line, read at its offset in the collection."""
        return self._text_of(position, read_line(self._collection, self._row_offsets[position]))

    def _text_of(self, position: int, line: bytes) -> str:
        pid, _, text = line.rstrip(b"\r\n").partition(b"\t")
        found, expected = decode_text(pid), self.pid(position)
        if found != expected:
            raise PipelineError(f"the line at row {position}'s offset holds passage {short(found, 40)!r}, not "
                                f"{short(expected, 40)!r}: the collection or the index's offsets were changed in "
                                "place; rebuild the index", self.collection)
        return decode_text(text)  # as the reader read it when the index was built

    def texts(self) -> Sequence[str]:
        """All texts in row order, read lazily from the collection (for BM25 over the same passages)."""
        return _CollectionTexts(self)

    def collection_identity(self) -> dict[str, Any]:
        """What a BM25 index saved with this index must have been built over (``collection_identity``'s form):
        the collection as it was checked when the index was opened."""
        return {"collection": str(self.collection.resolve()), "collection_size": self.manifest["collection_size"],
                "collection_sample": self.manifest["collection_sample"], "count": len(self)}

    def check_in_place(self) -> None:
        """A one-line error when the folder at the index's path is no longer the one opened: a file read there by
        name (the saved BM25 index, which bm25s opens by path) would belong to another build."""
        if self._opened.moved():
            raise PipelineError("the index was rebuilt after it was opened here; start the command again to open "
                                "the new one", self.directory)

    def close(self) -> None:
        self._opened.close()

    def faiss_index(self) -> Any:
        """The faiss index, read from its open file on first use and checked against the manifest and the index:
        its kind, metric, dimensions, count and (IVF) the rows its lists hold."""
        if self._faiss is not None:
            return self._faiss
        with self._faiss_lock:
            return self._read_faiss()

    def _read_faiss(self) -> Any:
        if self._faiss is None:
            if not self.has_faiss:
                raise PipelineError(f"this index has no faiss index; add one with `{command('search')} faiss MODEL "
                                    f"--faiss {'|'.join(FAISS_KINDS)}`, or use --search exact", self.directory)
            faiss = import_faiss()
            path = self.directory / FAISS_FILE
            loaded = read_faiss(faiss, self._opened.files[FAISS_FILE], path)
            check_faiss(faiss, loaded, self.manifest["faiss"]["type"], len(self), self.vectors.shape[1], path)
            self._faiss = loaded
        return self._faiss


class _CollectionTexts(Sequence[str]):
    def __init__(self, index: PassageIndex):
        self.index = index

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, position):  # type: ignore[override]
        if isinstance(position, slice):
            return [self.index.text(i) for i in range(*position.indices(len(self)))]
        return self.index.text(position)

    def __iter__(self) -> Iterator[str]:
        # one buffered sequential read instead of a read per passage; each line is checked as ``text`` checks it
        index = self.index
        reader = io.BufferedReader(PositionedReader(index._collection), 1 << 20)
        for position in range(len(self)):
            reader.seek(index._row_offsets[position])
            yield index._text_of(position, reader.readline())


def _open_files(folder: OpenedFolder, files: dict[str, int], samples: dict[str, str], prefix: str = "") -> None:
    """Open each of ``files`` (names inside ``prefix``) and check its size and, where recorded, its content sample."""
    for name, size in files.items():
        folder.open(prefix + name)
        check_size(folder.size(prefix + name), size, folder.path / prefix / name)
    for name, sample in samples.items():
        if content_sample(folder.files[prefix + name]) != sample:
            raise PipelineError("changed since the index was built (its content is not the one the manifest "
                                "recorded); rebuild it", folder.path / prefix / name)


def _map_arrays(folder: OpenedFolder, prefix: str, rows: int, manifest: dict[str, Any]
                ) -> tuple[OpenedArray, IdTable, OpenedArray]:
    """The arrays of one folder (the index or a shard, ``prefix``), mapped from their open files and checked to
    hold ``rows`` passages as the manifest describes them."""
    where = folder.path / prefix
    vectors, id_bytes, id_offsets, offsets = (map_npy(folder.files[prefix + name], where / name)
                                              for name in ARRAY_FILES)
    dim, dtype = manifest["dim"], np.dtype(manifest["dtype"])
    if vectors.shape != (rows, dim) or vectors.dtype != dtype:
        raise PipelineError(f"holds {vectors.shape} {vectors.dtype}, the manifest says ({rows}, {dim}) "
                            f"{np.dtype(dtype)}; rebuild the index", where / VECTORS)
    if id_bytes.ndim != 1 or id_bytes.dtype != np.uint8:
        raise PipelineError(f"holds {id_bytes.shape} {id_bytes.dtype}, expected the ids' UTF-8 bytes (uint8)",
                            where / IDS)
    if id_offsets.shape != (rows + 1,) or id_offsets.dtype != np.int64:
        raise PipelineError(f"holds {id_offsets.shape} {id_offsets.dtype}, expected {rows + 1} int64 id offsets",
                            where / ID_OFFSETS)
    if offsets.shape != (rows,) or offsets.dtype != np.int64:
        raise PipelineError(f"holds {offsets.shape} {offsets.dtype}, expected {rows} int64 offsets", where / OFFSETS)
    _check_id_offsets(id_offsets, len(id_bytes), where / ID_OFFSETS)
    low, high = _bounds(offsets)
    # one pass over 8 bytes a passage (70 MB at 8.8M: a fraction of a second): an offset outside the collection
    # would be an error at the hit's read, or an empty text
    if rows and (low < 0 or high >= manifest["collection_size"]):
        raise PipelineError(f"holds offsets outside the collection's {manifest['collection_size']:,} bytes; rebuild "
                            "the index", where / OFFSETS)
    return vectors, IdTable(id_bytes, id_offsets), offsets


def _bounds(array: np.ndarray) -> tuple[int, int]:
    """The smallest and largest value of a 1-D array, read a chunk at a time (``read_rows``)."""
    low, high = 0, 0
    for start in range(0, len(array), _CHECK_ROWS):
        part = read_rows(array, start, start + _CHECK_ROWS)
        low, high = (int(part.min()), int(part.max())) if start == 0 else (min(low, int(part.min())),
                                                                          max(high, int(part.max())))
    return low, high


def _check_id_offsets(offsets: np.ndarray, total: int, path: Path) -> None:
    """Id offsets start at 0, never decrease and end at the ids' length, so every row's id lies in ``ids.npy``."""
    previous = 0
    for start in range(0, len(offsets), _CHECK_ROWS):
        part = read_rows(offsets, start, start + _CHECK_ROWS)
        if int(part[0]) < previous or bool((np.diff(part) < 0).any()) or (start == 0 and int(part[0]) != 0):
            raise PipelineError("id offsets decrease or do not start at 0; rebuild the index", path)
        previous = int(part[-1])
    if previous != total:
        raise PipelineError(f"id offsets end at byte {previous:,}, the ids hold {total:,}; rebuild the index", path)


def _shard_entries(manifest: dict[str, Any], path: Path) -> list[tuple[str, int, int]]:
    """The manifest's shards as ``(name, start, stop)``, each named ``shards/RANK-of-WORLD`` in rank order."""
    try:
        entries = [(str(shard["name"]), int(shard["start"]), int(shard["stop"])) for shard in manifest["shards"]]
    except (KeyError, TypeError, ValueError) as error:
        raise PipelineError(f"manifest's shard list is incomplete ({error})", path) from error
    for rank, (name, _, _) in enumerate(entries):
        if name != shard_name(rank, len(entries)):
            raise PipelineError(f"manifest names shard {rank} {short(name, 60)!r}, not {shard_name(rank, len(entries))}"
                                " (a shard lies in the index's own shards/ folder); rebuild the index", path)
    return entries


def _open_shards(folder: OpenedFolder, manifest: dict[str, Any]) -> tuple[JoinedRows, IdTable, np.ndarray]:
    """A sharded index's shards, each checked against the manifest (its model, collection, rows and files),
    read as one: vectors joined lazily, ids and offsets (small) concatenated."""
    entries = _shard_entries(manifest, folder.path / MANIFEST)
    identity = {key: manifest.get(key) for key in ("format_version", "model_id", "vocabulary_fingerprint",
                                                   "tokenizer", "collection", "collection_size", "collection_sample",
                                                   "count", "dtype", "dim")}
    identity["shards"] = len(entries)
    vectors, tables, offsets = [], [], []
    for name, start, stop in entries:
        where = folder.path / name
        if not folder.has_folder(name):
            raise PipelineError("shard missing; rebuild the index", where)
        try:
            record_file = folder.open(f"{name}/{SHARD_RECORD}")
        except Missing as error:
            raise PipelineError(f"half-written shard (no {SHARD_RECORD}: its build never finished); rebuild the "
                                "index", where) from error
        record = check_shard_record(json_of(record_file, where / SHARD_RECORD), where / SHARD_RECORD, identity,
                                     (start, stop))
        _open_files(folder, record["files"], {}, f"{name}/")
        shard_vectors, table, shard_offsets = _map_arrays(folder, f"{name}/", stop - start, manifest)
        vectors.append(shard_vectors)
        tables.append(table)
        offsets.append(np.asarray(shard_offsets))
    ends = np.cumsum([0, *(len(table.data) for table in tables)])
    id_offsets = np.concatenate([[0], *(np.asarray(t.offsets[1:]) + end for t, end in zip(tables, ends, strict=False))])
    ids = IdTable(np.concatenate([np.asarray(table.data) for table in tables]), id_offsets.astype(np.int64))
    return JoinedRows(vectors), ids, np.concatenate(offsets)


def _open_collection(folder: OpenedFolder, manifest: dict[str, Any]) -> Path:
    """The collection the index was built from, opened and checked: the index's own passages file, or the
    absolute path the manifest names, whose size and content sample must be the ones recorded at the build."""
    name = manifest["collection"]
    if not Path(name).is_absolute():
        path, file = folder.path / name, folder.files[name]
    else:
        path = Path(name)
        try:
            file = folder.open_outside(path)
        except FileNotFoundError as error:
            raise PipelineError("the indexed collection is gone (passage texts are read from it); restore it or "
                                "rebuild the index", path) from error
        except OSError as error:
            raise PipelineError(f"cannot read the indexed collection ({error.strerror or error})", path) from error
        if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
            raise PipelineError("the indexed collection is not a plain file; rebuild the index", path)
    size = os.fstat(file.fileno()).st_size
    if size != manifest["collection_size"]:
        raise PipelineError(f"the collection changed since it was indexed ({size:,} bytes, expected "
                            f"{manifest['collection_size']:,}), so passage offsets would be wrong; rebuild the index",
                            path)
    if content_sample(file) != manifest["collection_sample"]:
        raise PipelineError("is not the collection the index was built from (its content differs from the sample "
                            "recorded at the build); restore it or rebuild the index", path)
    return path


def _open_index(folder: OpenedFolder, model: TwoTowerModel | None, model_path: str | Path | None) -> PassageIndex:
    manifest = read_manifest(folder)
    if model is not None:
        check_model(manifest, folder.path / MANIFEST, model, model_path)
    _open_files(folder, manifest["files"], manifest["samples"])
    if manifest.get("shards"):
        vectors, ids, offsets = _open_shards(folder, manifest)
    else:
        if not set(ARRAY_FILES) <= set(manifest["files"]):
            raise PipelineError(f"manifest is incomplete (it lists {', '.join(manifest['files'])}, not "
                                f"{', '.join(ARRAY_FILES)})", folder.path / MANIFEST)
        vectors, ids, offsets = _map_arrays(folder, "", manifest["count"], manifest)
    if len(ids) != manifest["count"]:
        raise PipelineError(f"shards hold {len(ids)} passages, the manifest says {manifest['count']}; rebuild the "
                            "index", folder.path / MANIFEST)
    collection = _open_collection(folder, manifest)
    return PassageIndex(folder.path, manifest, vectors, ids, offsets, collection, folder)


def load_index(index_dir: str | Path, model: TwoTowerModel | None = None,
               model_path: str | Path | None = None) -> PassageIndex:
    """Open an index and check it: complete, untruncated, its files the ones its manifest records, the names
    in its manifest inside what it was built from, and (given the model) built by this model.

    The index answers from the files as they were opened (``PassageIndex``). One that changes while it is being
    opened (a rebuild's swap, ``search/search.py faiss`` replacing its faiss index and manifest) and fails a
    check for that reason is opened again, so the result is one whole index or a one-line error.
    """
    index_dir = Path(index_dir)
    for attempt in range(1, _OPEN_TRIES + 1):
        folder = OpenedFolder(index_dir)
        try:
            index = _open_index(folder, model, model_path)
        except PipelineError:
            changed = folder.changed()
            folder.close()
            if not changed or attempt == _OPEN_TRIES:
                raise
            continue
        except BaseException:
            folder.close()
            raise
        # whole, but no longer the folder at the path: its saved BM25 index, which bm25s reads by name, would be
        # the new folder's; the new one is opened instead
        if not folder.moved() or attempt == _OPEN_TRIES:
            return index
        index.close()
    raise AssertionError("unreachable")  # the last attempt returns or raises
