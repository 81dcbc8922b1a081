"""The on-disk passage index of a two-tower model: building it, checking it and loading it.

An index is a folder, by default ``<model stem>_index/`` beside the model file:

- ``vectors.npy``: ``(count, dim)`` float32 (or float16) L2-normalised passage vectors, memory-mapped when
  searched, so an 8.8M x 300 matrix is read chunk by chunk and never held in RAM at once;
- ``ids.npy`` and ``id_offsets.npy``: the passage ids, as one flat array of their UTF-8 bytes and ``(count + 1,)``
  int64 offsets into it (row ``i``'s id is ``ids[id_offsets[i]:id_offsets[i + 1]]``), so the files and memory
  hold the ids' own bytes: one long id costs its length once, not a fixed width for every row;
- ``offsets.npy``: ``(count,)`` int64 byte offset of each passage's line in the collection file, so a hit's
  text is one seek, not a scan;
- ``passages.tsv``: only for sources without a ``collection.tsv`` (row layout, hub): their passages,
  deduplicated by id, in the collection layout (``pid<TAB>text``);
- ``faiss.index``: optional (``faiss`` flat, HNSW or IVF, inner product);
- ``manifest.json``: written last, so a build that was interrupted has none and is refused. It holds the
  model's ``model_id`` and vocabulary fingerprint, the dims, count, dtype, format version, the size of every
  file, and a content sample (``fileio.content_sample``) of the collection and of the faiss index, so an index
  built by another model, one whose files were truncated or replaced, and one whose manifest names another
  collection than the one it was built from are refused.

A loaded index (``load_index``) answers from its files as they were when it was opened: every file is opened
once, through the folder opened once, and read through those open files (``os.pread``, memory maps of them),
never again by name. A rebuild swaps another folder in by renaming, and ``search/search.py faiss`` replaces
``faiss.index`` and the manifest in place; an index already open keeps answering with what it opened.

Only building and loading live here; searching an index is ``msmarco_search.retrieval``.
"""

from __future__ import annotations

import errno
import io
import itertools
import os
import shutil
import stat
import time
import weakref
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from .arrays import OpenedArray, map_npy, read_row_list, read_rows, save_npy
from .bm25 import BM25Settings, build_streamed
from .distributed import DistributedContext
from .errors import PipelineError, first_line, short
from .fileio import OutputKind, StagedFolder, atomic_write, content_sample, decode_json, load_json, save_json
from .model import TwoTowerModel
from .report import info, progress
from .sources import (
    Source,
    TsvSource,
    bad_id,
    bounded_lines,
    read_collection,
)
from .text import TOKENIZER_VERSION
from .textfiles import decode_text
from .vocab import vocabulary_fingerprint

KIND_INDEX = "two-tower-index"
KIND_SHARD = "two-tower-index-shard"
# 3: ids as flat bytes with offsets (ids.npy, id_offsets.npy), content samples of the collection and faiss index.
# An index of an earlier version is refused with the command that rebuilds it: it records nothing of its
# collection's content, so a collection path it names could not be checked to be the one it was built from.
INDEX_FORMAT_VERSION = 3
MANIFEST, SHARD_RECORD, SHARDS_DIR = "manifest.json", "shard.json", "shards"
VECTORS, IDS, ID_OFFSETS, OFFSETS = "vectors.npy", "ids.npy", "id_offsets.npy", "offsets.npy"
PASSAGES, FAISS_FILE = "passages.tsv", "faiss.index"
ARRAY_FILES = (VECTORS, IDS, ID_OFFSETS, OFFSETS)  # what every index (or each of its shards) holds
FAISS_KINDS = ("flat", "hnsw", "ivf", "ivfpq")
VECTOR_DTYPES = {"float32": np.float32, "float16": np.float16}
DTYPE_AUTO = "auto"
# float16 from 1M passages: there the float32 matrix (1.1 GB at 300 dimensions; 10.6 GB at 8.8M) stops
# fitting comfortably in the page cache next to other work, exact search reads half the bytes, and the
# ranking barely moves (benchmarks/float16_agreement.py: top-10 overlap with float32 0.9998 on 1,000 dev
# queries over the DL 2019 pool). Below it the file is small either way, so float32 stays exact.
FLOAT16_FROM = 1_000_000
BM25_DIR = "bm25"  # the saved BM25 index, a folder inside the index


def default_index_dir(model_path: str | Path) -> Path:
    """``<model stem>_index/`` beside the model: the index belongs to the model that built it."""
    model_path = Path(model_path)
    return model_path.with_name(f"{model_path.stem}_index")


# ---------------------------------------------------------------------------------------------- collection


def iter_collection(path: str | Path) -> Iterator[tuple[int, str, str]]:
    """``(byte offset, pid, text)`` of each passage of a ``collection.tsv``, streamed by the one TSV reader
    (``sources.read_collection``): the byte offset of each line is what lets search fetch a hit's text with
    one seek."""
    for offset, (pid, text) in read_collection(path, with_offsets=True):
        yield offset, pid, text


def count_passages(path: str | Path) -> int:
    """Passage lines in a collection file (a byte-level pass, no decoding: seconds for 8.8M lines)."""
    with open(path, "rb") as handle:
        return sum(1 for _, line in bounded_lines(handle, Path(path)) if line.strip(b"\r\n"))


def write_source_passages(source: Source, path: Path, max_passages: int | None = None) -> int:
    """The passages of a query-record source (row layout, hub, TSV without a collection), deduplicated by
    id, as a collection file; returns how many. Only the ids seen are kept in memory, not the texts."""
    count = 0

    def write(tmp: Path) -> None:
        nonlocal count
        with open(tmp, "w", encoding="utf-8", newline="\n") as handle:
            passages = source.passages(max_passages)
            for pid, text in progress(passages, desc="Reading passages", unit="passage", mininterval=1.0):
                # The sources refuse an id that is empty or holds a tab, a line break or another character
                # that is not printable, so the id is written as it is: changing it (joining its words) could
                # turn two ids into one. Tabs and line breaks inside a text are only spaces between words.
                if not pid or not pid.isprintable():
                    raise PipelineError(f"{source.description}: {bad_id('passage id', pid)}")
                handle.write(f"{pid}\t{' '.join(text.split())}\n")
                count += 1

    atomic_write(path, write)
    if not count:
        raise PipelineError("the source holds no passages to index", path)
    return count


def source_collection(source: Source) -> Path | None:
    """The ``collection.tsv`` behind a source, when it has one (indexed in place, no copy)."""
    if isinstance(source, TsvSource) and source.files.collection is not None:
        return source.files.collection
    return None


# ---------------------------------------------------------------------------------------------- building


@dataclass
class IndexSettings:
    batch_size: int = 1024
    dtype: str = DTYPE_AUTO  # "auto": float16 from FLOAT16_FROM passages, else float32
    faiss: str | None = None  # None, or one of FAISS_KINDS
    hnsw_m: int = 32
    ivf_lists: int = 0  # 0: about 4 * sqrt(count)
    pq_m: int = 0  # IVF-PQ sub-quantisers; 0: the divisor of the dimension nearest dim / 6
    max_passages: int | None = None


def vector_dtype(setting: str, count: int) -> str:
    """The stored vector type: ``auto`` is float16 from ``FLOAT16_FROM`` passages (see its comment)."""
    if setting == DTYPE_AUTO:
        return "float16" if count >= FLOAT16_FROM else "float32"
    return setting


def _check_settings(settings: IndexSettings) -> None:
    if settings.dtype != DTYPE_AUTO and settings.dtype not in VECTOR_DTYPES:
        raise PipelineError(f"unknown vector type {settings.dtype!r} (use auto, {', '.join(VECTOR_DTYPES)})")
    if settings.faiss is not None and settings.faiss not in FAISS_KINDS:
        raise PipelineError(f"unknown faiss index {settings.faiss!r} (use {', '.join(FAISS_KINDS)})")
    if settings.faiss is not None:
        import_faiss()  # fail before the long encoding, not after it


def _collection_of(source: Source, staging: Path, settings: IndexSettings) -> Path:
    collection = source_collection(source)
    if collection is None:
        collection = staging / PASSAGES
        written = write_source_passages(source, collection, settings.max_passages)
        info(f"Wrote {written:,} distinct passages of {source.description} to {collection}")
    return collection


def _passages_to_index(collection: Path, settings: IndexSettings) -> int:
    read_collection(collection)  # the reader's checks of the whole file (text, a word) before it is counted
    count = count_passages(collection)
    if settings.max_passages is not None:
        count = min(count, settings.max_passages)
    if count == 0:
        raise PipelineError("the collection holds no passages", collection)
    return count


class _VectorWriter:
    """Encodes passages batch by batch and appends their rows to an open ``.npy`` file; collects the ids as
    one flat run of UTF-8 bytes and their end offsets, so memory grows with the ids' own bytes."""

    def __init__(self, model: TwoTowerModel, handle: BinaryIO, dtype: Any, batch_size: int):
        self.model, self.handle, self.dtype, self.batch_size = model, handle, dtype, batch_size
        self.rows = 0
        self.texts: list[str] = []
        self.id_bytes = bytearray()
        self.id_ends = array("q")

    def add(self, pid: str, text: str) -> None:
        self.id_bytes += pid.encode("utf-8")
        self.id_ends.append(len(self.id_bytes))
        self.texts.append(text)
        if len(self.texts) >= self.batch_size:
            self._encode()

    def finish(self) -> int:
        self._encode()
        return self.rows

    def _encode(self) -> None:
        if self.texts:
            encoded = self.model.encode(self.texts, "passage", batch_size=self.batch_size)
            self.handle.write(np.ascontiguousarray(encoded.numpy(), dtype=self.dtype).tobytes())
            self.rows += len(self.texts)
            self.texts = []

    def ids(self) -> tuple[np.ndarray, np.ndarray]:
        """The ids' bytes (uint8) and their ``count + 1`` offsets (int64, from 0)."""
        offsets = np.zeros(len(self.id_ends) + 1, dtype=np.int64)
        offsets[1:] = np.frombuffer(self.id_ends, dtype=np.int64)
        return np.frombuffer(self.id_bytes, dtype=np.uint8), offsets


def _encode_collection(model: TwoTowerModel, collection: Path, rows: tuple[int, int], folder: Path,
                       settings: IndexSettings, dtype_name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Writes ``vectors.npy`` (atomically) for passages ``rows = (start, stop)`` of the collection; returns
    the ids' bytes, their offsets and the byte offsets of its rows in the collection."""
    dtype = VECTOR_DTYPES[dtype_name]
    start, stop = rows
    count = stop - start
    offsets = array("q")
    writers: list[_VectorWriter] = []

    def encode_into(tmp: Path) -> None:
        # open_memmap lays out the .npy (header, full size); the rows are then appended with plain writes,
        # which keep the process's memory flat (written pages of a mapping would count as resident).
        layout = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(count, model.config.output_dim))
        data_start = layout.offset
        del layout
        with open(tmp, "r+b") as handle:
            handle.seek(data_start)
            writer = _VectorWriter(model, handle, dtype, settings.batch_size)
            writers.append(writer)
            # a shard skips the passages before its own (parsing a line is ~1 us: seconds for 4M lines)
            lines = itertools.islice(iter_collection(collection), start, stop)
            for offset, pid, text in progress(lines, desc="Encoding passages", total=count, unit="passage",
                                              mininterval=1.0):
                offsets.append(offset)
                writer.add(pid, text)
            encoded = writer.finish()
        if encoded != count:
            raise PipelineError(f"the collection changed while it was indexed ({start + encoded:,} passages, "
                                f"expected {stop:,})", collection)

    atomic_write(folder / VECTORS, encode_into)
    return (*writers[-1].ids(), np.frombuffer(offsets, dtype=np.int64))


@dataclass
class _Build:
    """What every process of one build agrees on: the collection, the rows, the vector type, the model."""

    collection: Path
    final_collection: str  # the collection's path as the finished index records it
    collection_sample: str  # fileio.content_sample of the collection, taken before the encoding
    count: int
    dtype: str
    dim: int
    model_id: Any
    vocabulary: str
    world_size: int

    def identity(self) -> dict[str, Any]:
        """What a shard must have been built with to be reused or joined."""
        return {"format_version": INDEX_FORMAT_VERSION, "model_id": self.model_id,
                "vocabulary_fingerprint": self.vocabulary, "tokenizer": TOKENIZER_VERSION,
                "collection": self.final_collection, "collection_size": self.collection.stat().st_size,
                "collection_sample": self.collection_sample, "count": self.count, "dtype": self.dtype,
                "dim": self.dim, "shards": self.world_size}

    def rows(self, rank: int) -> tuple[int, int]:
        return rank * self.count // self.world_size, (rank + 1) * self.count // self.world_size

    def folder(self, staging: Path, rank: int) -> Path:
        return staging if self.world_size == 1 else staging / shard_name(rank, self.world_size)


def shard_name(rank: int, world_size: int) -> str:
    return f"{SHARDS_DIR}/{rank}-of-{world_size}"


_SHARD_MISMATCH = {"model_id": "another model", "vocabulary_fingerprint": "another vocabulary",
                   "collection": "another collection", "collection_size": "another collection",
                   "collection_sample": "another collection", "format_version": "another format version"}


def _check_shard(folder: Path, identity: dict[str, Any], rows: tuple[int, int]) -> dict[str, Any]:
    """The record of a complete shard built with ``identity`` for ``rows``; a one-line error otherwise."""
    path = folder / SHARD_RECORD
    if not folder.is_dir():
        raise PipelineError("shard missing; rebuild the index", folder)
    if not path.is_file():
        raise PipelineError(f"half-written shard (no {SHARD_RECORD}: its build never finished); rebuild the index",
                            folder)
    record = _check_shard_record(load_json(path), path, identity, rows)
    _check_file_sizes(folder, dict(record.get("files", {})))
    return record


def _check_shard_record(record: Any, path: Path, identity: dict[str, Any], rows: tuple[int, int]) -> dict[str, Any]:
    """``record`` (a shard's ``shard.json``), after checking it is one built with ``identity`` for ``rows``."""
    if not isinstance(record, dict) or record.get("kind") != KIND_SHARD:
        raise PipelineError(f"not a {KIND_SHARD} record", path)
    for key, wanted in identity.items():
        if record.get(key) != wanted:
            what = _SHARD_MISMATCH.get(key, f"another {key}")
            raise PipelineError(f"shard built by {what} ({key} {short(record.get(key), 40)}, this index: "
                                f"{short(wanted, 40)}); rebuild the index", path)
    if (record.get("start"), record.get("stop")) != rows:
        raise PipelineError(f"shard holds passages {record.get('start')}-{record.get('stop')}, expected "
                            f"{rows[0]}-{rows[1]}; rebuild the index", path)
    files = record.get("files")
    if not isinstance(files, dict) or set(files) != set(ARRAY_FILES):
        raise PipelineError(f"shard record lists files {short(files)}, not {', '.join(ARRAY_FILES)}; rebuild the index",
                            path)
    return record


def _encode_shard(model: TwoTowerModel, build: _Build, staging: Path, rank: int, settings: IndexSettings) -> None:
    """Encode this process's shard into its folder, or reuse it when an interrupted build finished it."""
    folder, rows = build.folder(staging, rank), build.rows(rank)
    try:
        _check_shard(folder, build.identity(), rows)
        info(f"Reusing {folder.name if build.world_size > 1 else 'the vectors'} (passages {rows[0]:,}-{rows[1]:,}), "
             "finished by an interrupted build")
        return
    except PipelineError:
        pass
    if build.world_size > 1:
        shutil.rmtree(folder, ignore_errors=True)
    for name in (SHARD_RECORD, *ARRAY_FILES):
        (folder / name).unlink(missing_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    info(f"Indexing passages {rows[0]:,}-{rows[1]:,} of {build.collection} ({build.dim} dimensions, {build.dtype})")
    started = time.perf_counter()
    id_bytes, id_offsets, offsets = _encode_collection(model, build.collection, rows, folder, settings, build.dtype)
    seconds = time.perf_counter() - started
    save_npy(folder / IDS, id_bytes)
    save_npy(folder / ID_OFFSETS, id_offsets)
    save_npy(folder / OFFSETS, offsets)
    count = rows[1] - rows[0]
    info(f"Encoded {count:,} passages in {seconds:.1f} s ({count / max(seconds, 1e-9):,.0f} passages/s)")
    save_json({"kind": KIND_SHARD, **build.identity(), "start": rows[0], "stop": rows[1],
               "encode_seconds": round(seconds, 3),
               "files": {name: (folder / name).stat().st_size for name in ARRAY_FILES}},
              folder / SHARD_RECORD)


def _clean_staging(staging: Path, world_size: int) -> None:
    """Remove what an interrupted build left in the staging folder, except shards it may have finished
    (``_encode_shard`` checks and reuses those) and the source's passages file (rewritten anyway)."""
    keep = {SHARDS_DIR, PASSAGES} if world_size > 1 else {*ARRAY_FILES, SHARD_RECORD, PASSAGES}
    for path in staging.iterdir():
        if path.name not in keep:
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    shards = staging / SHARDS_DIR
    if world_size > 1 and shards.is_dir():
        wanted = {shard_name(rank, world_size).split("/")[1] for rank in range(world_size)}
        for path in shards.iterdir():
            if path.name not in wanted:
                shutil.rmtree(path) if path.is_dir() else path.unlink()


def _final_collection(collection: Path, staging: Path) -> str:
    return collection.name if collection.resolve().parent == staging.resolve() else str(collection.resolve())


# what build_index writes into an index folder (besides the files its manifest lists)
INDEX_ENTRIES = frozenset({MANIFEST, VECTORS, IDS, ID_OFFSETS, OFFSETS, PASSAGES, FAISS_FILE, BM25_DIR, SHARDS_DIR,
                           SHARD_RECORD})


def recognise_index_folder(path: Path) -> str | None:
    """``fileio.OutputKind`` recogniser of an index folder: a manifest of an index, and nothing but the files an
    index holds (a temporary ``.NAME.*.tmp`` of a killed write too), so that rebuilding it loses nothing else."""
    try:
        manifest = load_json(path / MANIFEST)
    except PipelineError:
        return f"it has no readable {MANIFEST}"
    if not isinstance(manifest, dict) or manifest.get("kind") != KIND_INDEX:
        return f"its {MANIFEST} is not an index's"
    listed = manifest.get("files")
    known = INDEX_ENTRIES | (set(map(str, listed)) if isinstance(listed, dict) else set())
    others = sorted(entry.name for entry in path.iterdir()
                    if entry.name not in known and not (entry.name.startswith(".") and entry.name.endswith(".tmp")))
    if others:
        return f"it also holds {', '.join(others[:3])}{', ...' if len(others) > 3 else ''}, which no index writes"
    return None


INDEX_OUTPUT = OutputKind("search index", recognise_index_folder, folder=True)


def build_index(model: TwoTowerModel, model_path: str | Path, source: Source, index_dir: str | Path,
                settings: IndexSettings, bm25: BM25Settings | None = None,
                context: DistributedContext | None = None) -> dict[str, Any] | None:
    """Encode every passage of ``source`` with the passage tower and write the index (and, given ``bm25``,
    its BM25 index); returns its manifest (``None`` on the processes of a sharded build other than rank 0).

    The index is built in ``.NAME.new`` beside ``index_dir`` and swapped in when complete, so the old index
    keeps answering until then; a killed build's finished shards are reused by the next build, the rest
    removed. Under ``torchrun`` (``context`` with several processes) each process encodes its share of the
    collection into ``shards/RANK-of-WORLD/``, and rank 0 joins them with one manifest. A source with a
    ``collection.tsv`` is indexed in place; any other source first has its passages written to
    ``passages.tsv`` in the index folder. Either way the collection is streamed.
    """
    context = context or DistributedContext()
    _check_settings(settings)
    if settings.faiss == "ivfpq":
        pq_subquantizers(model.config.output_dim, settings.pq_m)  # a bad --pq-m fails before the encoding
    index_dir = Path(index_dir)
    # the index replaces only an earlier index, never a folder of other files nor one holding the model or the
    # collection it is built from (both read until the end, and the swap would remove them)
    folder = StagedFolder(index_dir, INDEX_OUTPUT, [model_path, source_collection(source)], flag="--index-dir")
    staging = folder.staging
    if context.is_main:
        folder.acquire()  # outside the try: a refused second build must not discard the running one's folder
    try:
        if context.is_main:
            _clean_staging(staging, context.world_size)
            collection = _collection_of(source, staging, settings)
        context.barrier()
        if not context.is_main:
            collection = source_collection(source) or staging / PASSAGES
        count = _passages_to_index(collection, settings)
        build = _Build(collection, _final_collection(collection, staging), content_sample(collection), count,
                       vector_dtype(settings.dtype, count), model.config.output_dim, model.metadata.get("model_id"),
                       vocabulary_fingerprint(model.vocab), context.world_size)
        _encode_shard(model, build, staging, context.rank, settings)
        context.barrier()
        if not context.is_main:
            return None
        manifest = _finish(build, staging, index_dir, model_path, source, settings, bm25)
        folder.commit()
    except PipelineError:
        if context.is_main:
            folder.discard()
        raise
    finally:
        folder.release()
    return manifest


def _finish(build: _Build, staging: Path, index_dir: Path, model_path: str | Path, source: Source,
            settings: IndexSettings, bm25: BM25Settings | None) -> dict[str, Any]:
    """Rank 0, once every shard is written: check and join the shards, build faiss and BM25, write the
    manifest (last: a folder without one is refused)."""
    shards = [_check_shard(build.folder(staging, rank), build.identity(), build.rows(rank))
              for rank in range(build.world_size)]
    if content_sample(build.collection) != build.collection_sample:
        raise PipelineError("the collection changed while it was indexed; index it again", build.collection)
    if build.world_size == 1:
        files = [*ARRAY_FILES]
        shard_entries = None
    else:  # each shard's record lists its own files, checked with its identity when the index is loaded
        files = []
        shard_entries = [{"name": shard_name(rank, build.world_size), "start": record["start"],
                          "stop": record["stop"]} for rank, record in enumerate(shards)]
    faiss_info = None
    if settings.faiss is not None:
        vectors = _joined_vectors(staging, shard_entries)
        faiss_info = build_faiss_index(vectors, settings.faiss, staging / FAISS_FILE, settings.hnsw_m,
                                       settings.ivf_lists, settings.pq_m)
        files.append(FAISS_FILE)
    inside = build.final_collection == build.collection.name
    if inside:
        files.append(build.collection.name)
    manifest = {
        "kind": KIND_INDEX, "format_version": INDEX_FORMAT_VERSION,
        "model_id": build.model_id, "model_path": str(Path(model_path).resolve()),
        "vocabulary_fingerprint": build.vocabulary, "tokenizer": TOKENIZER_VERSION,
        "dim": build.dim, "count": build.count, "dtype": build.dtype,
        "collection": build.final_collection, "collection_size": build.collection.stat().st_size,
        "collection_sample": build.collection_sample, "source": source.description,
        "shards": shard_entries, "faiss": faiss_info,
        "samples": {FAISS_FILE: content_sample(staging / FAISS_FILE)} if faiss_info else {},
        "encode_seconds": round(sum(record["encode_seconds"] for record in shards), 3),
        "created": datetime.now().isoformat(timespec="seconds"),
        "files": {name: (staging / name).stat().st_size for name in files},
    }
    if bm25 is not None:
        manifest["bm25"] = _build_bm25(build, staging, index_dir, bm25)
    save_json(manifest, staging / MANIFEST)
    return manifest


def _build_bm25(build: _Build, staging: Path, index_dir: Path, settings: BM25Settings) -> dict[str, Any]:
    """BM25 over the index's passages, streamed into ``bm25/`` (see ``bm25.build_streamed``)."""
    started = time.perf_counter()
    final = Path(build.final_collection)
    identity = {"collection": str(final if final.is_absolute() else (index_dir / final).resolve()),
                "collection_size": build.collection.stat().st_size, "collection_sample": build.collection_sample,
                "count": build.count}
    texts = (text for _, _, text in itertools.islice(iter_collection(build.collection), build.count))
    record = build_streamed(texts, build.count, settings, staging / BM25_DIR, identity)
    seconds = time.perf_counter() - started
    info(f"Built BM25 ({settings.describe()}) over {build.count:,} passages in {seconds:.1f} s "
         f"({record['postings']:,} postings)")
    return {**{key: record[key] for key in ("k1", "b", "stemmer", "tokenizer", "count")}, "seconds": round(seconds, 3)}


def update_manifest(index_dir: str | Path, **entries: Any) -> dict[str, Any]:
    """Add entries (e.g. faiss's measured recall) to a complete index's manifest, rewritten atomically."""
    path = Path(index_dir) / MANIFEST
    manifest = load_json(path)
    manifest.update(entries)
    save_json(manifest, path)
    return manifest


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


# ---------------------------------------------------------------------------------------------- faiss


def import_faiss() -> Any:
    """``faiss``, imported on first use: it is optional, and a missing one is said plainly."""
    try:
        import faiss
    except ImportError as error:
        raise PipelineError("faiss is not installed: install it with `uv sync --extra faiss` (or "
                            "`pip install faiss-cpu`), or search exactly without it (--search exact, no "
                            "--faiss)") from error
    return faiss


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _ivf_lists(count: int, ivf_lists: int) -> int:
    # faiss wants ~39+ training points per list; default to about 4 * sqrt(n) lists
    lists = ivf_lists or int(4 * np.sqrt(count))
    return max(1, min(lists, count // 39 or 1))


def _train(index: Any, vectors: np.ndarray, sample: int) -> None:
    count = len(vectors)
    rows = np.sort(np.random.default_rng(0).choice(count, size=min(count, sample), replace=False))
    index.train(np.ascontiguousarray(vector_row_list(vectors, rows), dtype=np.float32))


def pq_subquantizers(dim: int, wanted: int = 0) -> int:
    """IVF-PQ's sub-quantisers: ``wanted`` (it must divide ``dim``), else the divisor of ``dim`` nearest
    ``dim / 6`` (6 dimensions per byte: 50 bytes a vector at 300 dimensions, 440 MB for 8.8M passages)."""
    if wanted:
        if dim % wanted:
            raise PipelineError(f"--pq-m {wanted} does not divide the model's {dim} dimensions")
        return wanted
    return min((m for m in range(1, dim + 1) if dim % m == 0), key=lambda m: (abs(m - dim / 6), m))


def _faiss_structure(faiss: Any, vectors: np.ndarray, kind: str, hnsw_m: int, ivf_lists: int,
                     pq_m: int) -> tuple[Any, dict[str, Any]]:
    count, dim = vectors.shape
    params: dict[str, Any] = {"type": kind}
    if kind == "flat":
        return faiss.IndexFlatIP(dim), params
    if kind == "hnsw":
        params["m"] = hnsw_m
        return faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT), params
    lists = params["lists"] = _ivf_lists(count, ivf_lists)
    if kind == "ivf":
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
        # k-means cost grows with sample x lists: 64 points per list is within faiss's advice (39-256)
        _train(index, vectors, 64 * lists)
        return index, params
    m = params["pq_m"] = pq_subquantizers(dim, pq_m)
    # 8-bit codes (256 centroids per sub-quantiser) need ~10K training points; fewer bits on tiny collections
    bits = params["pq_bits"] = int(min(8, max(1, np.log2(max(count, 2) / 39))))
    index = faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, lists, m, bits, faiss.METRIC_INNER_PRODUCT)
    _train(index, vectors, max(64 * lists, 64 * 2**bits))
    return index, params


def build_faiss_index(vectors: np.ndarray, kind: str, path: Path, hnsw_m: int = 32, ivf_lists: int = 0,
                      pq_m: int = 0, chunk_rows: int = 65536) -> dict[str, Any]:
    """An inner-product faiss index over the rows of ``vectors`` (fed in chunks), written to ``path``; returns
    what it is (``type`` and its parameters), for the manifest."""
    faiss = import_faiss()
    count = len(vectors)
    started = time.perf_counter()
    index, params = _faiss_structure(faiss, vectors, kind, hnsw_m, ivf_lists, pq_m)
    for start in progress(range(0, count, chunk_rows), desc=f"Building faiss {kind}", unit="chunk",
                          total=-(-count // chunk_rows)):
        index.add(np.ascontiguousarray(vector_rows(vectors, start, start + chunk_rows), dtype=np.float32))
    if index.ntotal != count:
        raise PipelineError(f"faiss index holds {index.ntotal} vectors, expected {count}", path)
    atomic_write(path, lambda tmp: _write_faiss(faiss, index, tmp))
    params["seconds"] = round(time.perf_counter() - started, 3)
    shown = ", ".join(f"{key} {value}" for key, value in params.items() if key not in ("type", "seconds"))
    info(f"Built faiss {kind}{f' ({shown})' if shown else ''} over {count:,} vectors in {params['seconds']:.1f} s "
         f"({path.stat().st_size / 2**20:,.1f} MiB)")
    return params


def _write_faiss(faiss: Any, index: Any, tmp: Path) -> None:
    """``faiss.write_index`` into ``tmp`` through Python's own file: faiss's file writer reports a failed flush
    (a full disk, a file-size limit) on stderr and returns as if it had written, leaving a cut file; through
    Python's the write raises the ``OSError`` that ``atomic_write`` turns into one line, and nothing is renamed."""
    with open(tmp, "wb") as handle:
        faiss.write_index(index, faiss.PyCallbackIOWriter(handle.write))


def faiss_search_parameters(kind: str, nprobe: int, ef_search: int) -> Any:
    """faiss's search parameters for an index of ``kind`` (None for flat, which has none): made for each search
    instead of set on the shared faiss index, so that searches in several threads never change each other's.
    A value faiss cannot hold (its C int or size_t) is a one-line error naming the flag, raised when called:
    ``search/search.py index`` and ``faiss`` call it before building anything."""
    faiss = import_faiss()
    flag, value = ("--ef-search", ef_search) if kind == "hnsw" else ("--nprobe", nprobe)
    try:
        if kind == "hnsw":
            return faiss.SearchParametersHNSW(efSearch=ef_search)
        if kind in ("ivf", "ivfpq"):
            return faiss.SearchParametersIVF(nprobe=nprobe)
    except (OverflowError, TypeError) as error:
        raise PipelineError(f"{flag} {value} is more than faiss can search with ({first_line(error, 120)})") from error
    return None


def add_faiss(index_dir: str | Path, model: TwoTowerModel, model_path: str | Path,
              settings: IndexSettings) -> dict[str, Any]:
    """A faiss index (``settings.faiss`` and its parameters) built from a complete index's stored vectors and
    added to it, or put in place of the one it has; returns the new manifest.

    No passage is encoded again: at 8.8M passages the encoding is minutes and the vectors are already on
    disk. The folder's build lock is held, so a rebuild cannot swap the folder away meanwhile; the faiss file
    and then the manifest are each replaced atomically, so searches already running keep their loaded index.
    """
    _check_settings(settings)
    if settings.faiss is None:
        raise PipelineError(f"name the faiss index to build (one of {', '.join(FAISS_KINDS)})")
    index_dir = Path(index_dir)
    folder = StagedFolder(index_dir)
    folder.lock()
    try:
        index = load_index(index_dir, model, model_path)
        faiss_info = build_faiss_index(index.vectors, settings.faiss, index_dir / FAISS_FILE, settings.hnsw_m,
                                       settings.ivf_lists, settings.pq_m)
        files = {**index.manifest["files"], FAISS_FILE: (index_dir / FAISS_FILE).stat().st_size}
        samples = {**index.manifest.get("samples", {}), FAISS_FILE: content_sample(index_dir / FAISS_FILE)}
        index.close()
        return update_manifest(index_dir, faiss=faiss_info, files=files, samples=samples)
    finally:
        folder.release()


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


def _joined_vectors(directory: Path, shards: list[dict[str, Any]] | None) -> Any:
    if not shards:
        return _load_array(directory / VECTORS)
    return JoinedRows([_load_array(directory / shard["name"] / VECTORS) for shard in shards])


# ---------------------------------------------------------------------------------------------- loading

_OPEN_TRIES = 3  # opened again when the folder was swapped or its manifest replaced while it was being opened
# never through a link (an index's files lie in its folder); a FIFO put in a file's place does not block the open
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
_CHECK_ROWS = 1 << 22  # rows per read while checking offsets: 32 MiB of int64


class _Missing(PipelineError):
    """A file of the index is not there (the caller may say more about what that means)."""


class _OpenedFolder:
    """An index folder opened once (a directory descriptor) and the files opened through it, each once and kept
    open: whatever renames happen at the folder's path, all of them come from this one folder."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except (FileNotFoundError, NotADirectoryError) as error:
            raise PipelineError("no index here; build one with `search/search.py index MODEL` (without --index-dir "
                                "it is <model stem>_index/ beside the model)", path) from error
        except OSError as error:
            raise PipelineError(f"cannot read ({error.strerror or error})", path) from error
        folder = os.fstat(self.fd)
        self.identity = (folder.st_dev, folder.st_ino)
        self.manifest_identity: tuple[int, int] | None = None
        self.files: dict[str, io.FileIO] = {}  # by name inside the folder ("shards/0-of-2/vectors.npy")
        self.collection: io.FileIO | None = None  # the collection, when it lies outside the folder
        self._outside: list[io.FileIO] = []
        self._closer = weakref.finalize(self, _close_all, self.fd, self.files, self._outside)

    def open(self, name: str) -> io.FileIO:
        """The regular file ``name`` ('/'-separated, no part of it a link) inside the folder, opened once."""
        if name in self.files:
            return self.files[name]
        *folders, last = name.split("/")
        directory, opened = self.fd, []
        try:
            for part in folders:
                directory = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=directory)
                opened.append(directory)
            descriptor = os.open(last, _READ_FLAGS, dir_fd=directory)
        except FileNotFoundError as error:
            raise _Missing("missing from the index; rebuild it", self.path / name) from error
        except OSError as error:
            link = "; an index's files are plain files in its folder, not links" if error.errno in (
                errno.ELOOP, errno.ENOTDIR) else ""
            raise PipelineError(f"cannot read ({error.strerror or error}{link})", self.path / name) from error
        finally:
            for descriptor_of_folder in opened:
                os.close(descriptor_of_folder)
        file = io.FileIO(descriptor, "rb")
        self.files[name] = file
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise PipelineError("not a plain file; rebuild the index", self.path / name)
        return file

    def has_folder(self, name: str) -> bool:
        try:
            return stat.S_ISDIR(os.stat(name, dir_fd=self.fd, follow_symlinks=False).st_mode)
        except OSError:
            return False

    def size(self, name: str) -> int:
        return os.fstat(self.files[name].fileno()).st_size

    def moved(self) -> bool:
        """Whether the folder at the path is no longer the one opened (a rebuild swapped another one in)."""
        try:
            now = os.stat(self.path)
        except OSError:
            return True
        return (now.st_dev, now.st_ino) != self.identity

    def changed(self) -> bool:
        """Whether the folder was swapped, or its manifest replaced, since it was opened."""
        if self.moved():
            return True
        try:
            manifest = os.stat(MANIFEST, dir_fd=self.fd, follow_symlinks=False)
        except OSError:
            return True
        return self.manifest_identity is not None and (manifest.st_dev, manifest.st_ino) != self.manifest_identity

    def open_outside(self, path: Path) -> io.FileIO:
        """The file at the absolute ``path`` (the collection), opened and kept with the folder's files."""
        file = io.FileIO(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb")
        self._outside.append(file)
        self.collection = file
        return file

    def close(self) -> None:
        self._closer()


def _close_all(folder: int, files: dict[str, io.FileIO], others: list[io.FileIO]) -> None:
    for file in [*files.values(), *others]:
        file.close()
    os.close(folder)


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
                 collection: Path, opened: _OpenedFolder):
        self.directory, self.manifest = directory, manifest
        self.vectors, self.ids, self.offsets, self.collection = vectors, ids, offsets, collection
        self._row_offsets = memoryview(np.asarray(offsets))  # one row's offset as a Python int (see IdTable)
        self._opened = opened
        collection_file = opened.collection or opened.files[manifest["collection"]]
        self._collection = collection_file.fileno()
        self._faiss: Any = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def has_faiss(self) -> bool:
        return bool(self.manifest.get("faiss"))

    def pid(self, position: int) -> str:
        return self.ids[position].decode("utf-8", "replace")

    def text(self, position: int) -> str:
        """The passage text at row ``position``: its line, read at its offset in the collection."""
        return self._text_of(position, _read_line(self._collection, self._row_offsets[position]))

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
        if self._faiss is None:
            if not self.has_faiss:
                raise PipelineError("this index has no faiss index; add one with `search/search.py faiss MODEL "
                                    f"--faiss {'|'.join(FAISS_KINDS)}`, or use --search exact", self.directory)
            faiss = import_faiss()
            path = self.directory / FAISS_FILE
            loaded = _read_faiss(faiss, self._opened.files[FAISS_FILE], path)
            _check_faiss(faiss, loaded, self.manifest["faiss"]["type"], len(self), self.vectors.shape[1], path)
            self._faiss = loaded
        return self._faiss


def _read_line(descriptor: int, offset: int, block: int = 8192) -> bytes:
    """The line that starts at ``offset`` of the open file (without its line end), by ``os.pread``."""
    parts = []
    while True:
        chunk = os.pread(descriptor, block, offset)
        end = chunk.find(b"\n")
        if end >= 0:
            parts.append(chunk[:end])
            break
        parts.append(chunk)
        if len(chunk) < block:  # the end of the file
            break
        offset += len(chunk)
        block = min(block * 2, 1 << 24)
    return b"".join(parts)


class _PositionedReader(io.RawIOBase):
    """An open file read by ``os.pread`` from a position of its own, so that a sequential pass shares no file
    position with any other reader of the same descriptor."""

    def __init__(self, descriptor: int):
        super().__init__()
        self.descriptor, self.position = descriptor, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        got = os.preadv(self.descriptor, [buffer], self.position)
        self.position += got
        return got

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: os.fstat(self.descriptor).st_size}[whence]
        self.position = base + offset
        return self.position

    def tell(self) -> int:
        return self.position


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
        reader = io.BufferedReader(_PositionedReader(index._collection), 1 << 20)
        for position in range(len(self)):
            reader.seek(index._row_offsets[position])
            yield index._text_of(position, reader.readline())


def _json_of(file: io.FileIO, path: Path) -> Any:
    try:
        file.seek(0)
        data = file.readall()
    except OSError as error:
        raise PipelineError(f"cannot read ({error.strerror or error})", path) from error
    return decode_json(data, path)


def _read_manifest(folder: _OpenedFolder) -> dict[str, Any]:
    path = folder.path / MANIFEST
    try:
        file = folder.open(MANIFEST)
    except _Missing as error:
        raise PipelineError(f"not a complete index (no {MANIFEST}: its build never finished); rebuild it with "
                            "`search/search.py index MODEL`", folder.path) from error
    opened = os.fstat(file.fileno())
    folder.manifest_identity = (opened.st_dev, opened.st_ino)
    return _check_manifest(_json_of(file, path), path)


def _check_manifest(manifest: Any, path: Path) -> dict[str, Any]:
    """``manifest`` with its fields checked: kind, this format version, types, and names that stay in the index."""
    if not isinstance(manifest, dict) or manifest.get("kind") != KIND_INDEX:
        raise PipelineError(f"not a {KIND_INDEX} manifest", path)
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > INDEX_FORMAT_VERSION:
        raise PipelineError(f"index format version {version} is newer than this program reads "
                            f"({INDEX_FORMAT_VERSION}); upgrade msmarco-search", path)
    if version < INDEX_FORMAT_VERSION:
        raise PipelineError(f"index format version {version} is older than this program reads ({INDEX_FORMAT_VERSION}: "
                            "ids stored at their own length, the collection's content recorded); rebuild it with "
                            "`search/search.py index MODEL`", path)
    try:
        manifest["files"], manifest["count"], manifest["dim"] = (dict(manifest["files"]), int(manifest["count"]),
                                                                 int(manifest["dim"]))
        if manifest["dtype"] not in VECTOR_DTYPES:
            raise ValueError(f"unknown dtype {manifest['dtype']!r}")
        manifest["collection"] = str(manifest["collection"])
        sizes = [manifest.get("collection_size"), *manifest["files"].values()]
        if not all(type(size) is int for size in sizes):  # an edited manifest: a size as text was a traceback
            raise ValueError(f"file sizes are not whole numbers ({sizes})")
        samples = manifest["samples"] = dict(manifest.get("samples") or {})
        if not all(isinstance(sample, str) for sample in [manifest["collection_sample"], *samples.values()]):
            raise ValueError("content samples are not text")
        faiss = manifest.get("faiss")
        if faiss and (not isinstance(faiss, dict) or faiss.get("type") not in FAISS_KINDS):
            raise ValueError(f"faiss entry {short(faiss, 60)} is none of {', '.join(FAISS_KINDS)}")
    except (KeyError, TypeError, ValueError) as error:
        raise PipelineError(f"manifest is incomplete ({error})", path) from error
    _check_manifest_names(manifest, path)
    return manifest


def _check_manifest_names(manifest: dict[str, Any], path: Path) -> None:
    """Every file the manifest names is one of an index's files, in its folder; the collection is either the
    passages file inside it or an absolute path (checked against its recorded sample when it is opened)."""
    known = {*ARRAY_FILES, FAISS_FILE, PASSAGES}
    odd = sorted(name for name in manifest["files"] if name not in known)
    if odd:
        raise PipelineError(f"manifest lists {short(odd[0], 60)!r}, which is none of an index's files "
                            f"({', '.join(sorted(known))}); rebuild the index", path)
    collection = manifest["collection"]
    if not Path(collection).is_absolute() and (collection != PASSAGES or PASSAGES not in manifest["files"]):
        raise PipelineError(f"manifest's collection {short(collection, 60)!r} is neither the index's own {PASSAGES} "
                            "nor the absolute path of the collection it was built from; rebuild the index", path)
    unsampled = set(manifest["samples"]) - set(manifest["files"])
    if unsampled:
        raise PipelineError(f"manifest has a sample of {short(sorted(unsampled)[0], 60)!r}, a file it does not list; "
                            "rebuild the index", path)
    if manifest.get("faiss") and not {FAISS_FILE} <= set(manifest["files"]) & set(manifest["samples"]):
        raise PipelineError(f"manifest names a faiss index without the size and sample of {FAISS_FILE}; add it again "
                            "with `search/search.py faiss MODEL`", path)


def _check_model(manifest: dict[str, Any], path: Path, model: TwoTowerModel, model_path: str | Path | None) -> None:
    built_by, this = manifest.get("model_id"), model.metadata.get("model_id")
    if built_by != this:
        raise PipelineError(
            f"index was built by another model (model_id {str(built_by)[:12]}, {manifest.get('model_path')}), "
            f"not by {model_path or 'this model'} (model_id {str(this)[:12]}); index it with this model, or "
            "pass the --index-dir of its own index", path)
    if manifest.get("vocabulary_fingerprint") != vocabulary_fingerprint(model.vocab):
        raise PipelineError("index was built with another vocabulary than this model's; rebuild it", path)


def _check_file_sizes(index_dir: Path, files: dict[str, int]) -> None:
    """Each of ``files`` is in ``index_dir`` at its recorded size (a build checking the shards it wrote)."""
    for name, size in files.items():
        path = index_dir / name
        if not path.is_file():
            raise PipelineError("missing from the index; rebuild it", path)
        _check_size(path.stat().st_size, size, path)


def _check_size(actual: int, size: int, path: Path) -> None:
    if actual != size:
        raise PipelineError(f"truncated or changed since the index was built ({actual:,} bytes, expected "
                            f"{size:,}); rebuild the index", path)


def _open_files(folder: _OpenedFolder, files: dict[str, int], samples: dict[str, str], prefix: str = "") -> None:
    """Open each of ``files`` (names inside ``prefix``) and check its size and, where recorded, its content sample."""
    for name, size in files.items():
        folder.open(prefix + name)
        _check_size(folder.size(prefix + name), size, folder.path / prefix / name)
    for name, sample in samples.items():
        if content_sample(folder.files[prefix + name]) != sample:
            raise PipelineError("changed since the index was built (its content is not the one the manifest "
                                "recorded); rebuild it", folder.path / prefix / name)


def _map_arrays(folder: _OpenedFolder, prefix: str, rows: int, manifest: dict[str, Any]
                ) -> tuple[OpenedArray, IdTable, OpenedArray]:
    """The arrays of one folder (the index or a shard, ``prefix``), mapped from their open files and checked to
    hold ``rows`` passages as the manifest describes them."""
    where = folder.path / prefix
    vectors, id_bytes, id_offsets, offsets = (map_npy(folder.files[prefix + name], where / name)
                                              for name in ARRAY_FILES)
    dim, dtype = manifest["dim"], VECTOR_DTYPES[manifest["dtype"]]
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


def _open_shards(folder: _OpenedFolder, manifest: dict[str, Any]) -> tuple[JoinedRows, IdTable, np.ndarray]:
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
        except _Missing as error:
            raise PipelineError(f"half-written shard (no {SHARD_RECORD}: its build never finished); rebuild the "
                                "index", where) from error
        record = _check_shard_record(_json_of(record_file, where / SHARD_RECORD), where / SHARD_RECORD, identity,
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


def _open_collection(folder: _OpenedFolder, manifest: dict[str, Any]) -> Path:
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


def _open_index(folder: _OpenedFolder, model: TwoTowerModel | None, model_path: str | Path | None) -> PassageIndex:
    manifest = _read_manifest(folder)
    if model is not None:
        _check_model(manifest, folder.path / MANIFEST, model, model_path)
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
        folder = _OpenedFolder(index_dir)
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


def _load_array(path: Path) -> np.ndarray:
    """A ``.npy`` of a build's own staging folder, memory-mapped (the build holds the folder's lock)."""
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise PipelineError(f"not a readable .npy array ({first_line(error)})", path) from error


# ---------------------------------------------------------------------------------------------- faiss checks

_FAISS_CLASSES = {"flat": "IndexFlatIP", "hnsw": "IndexHNSWFlat", "ivf": "IndexIVFFlat", "ivfpq": "IndexIVFPQ"}


def _read_faiss(faiss: Any, file: io.FileIO, path: Path) -> Any:
    """The faiss index in the open ``file``, read through faiss's callback reader (``os.pread`` from a position
    of its own), not by name."""
    position = 0

    def read(size: int) -> bytes:
        nonlocal position
        chunk = os.pread(file.fileno(), size, position)
        position += len(chunk)
        return chunk

    try:
        return faiss.read_index(faiss.PyCallbackIOReader(read))
    except RuntimeError as error:
        raise PipelineError(f"not a readable faiss index ({first_line(error)})", path) from error
    except MemoryError as error:
        raise PipelineError("not a readable faiss index (it asks for more memory than there is)", path) from error


def _check_faiss(faiss: Any, index: Any, kind: str, count: int, dim: int, path: Path) -> None:
    """A faiss index of the manifest's ``kind`` over these ``count`` x ``dim`` vectors, ranking by inner product,
    whose answers can only be rows of the index; a one-line error otherwise."""
    found = type(index).__name__
    if found != _FAISS_CLASSES[kind]:
        raise PipelineError(f"holds a faiss {found}, not the {_FAISS_CLASSES[kind]} of a {kind} index the manifest "
                            f"names; rebuild it with `search/search.py faiss MODEL --faiss {kind}`", path)
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise PipelineError(f"faiss index ranks by another metric (faiss metric {index.metric_type}) than the inner "
                            "product the vectors are scored by; rebuild it", path)
    if index.ntotal != count or index.d != dim:
        raise PipelineError(f"faiss index holds {index.ntotal} x {index.d} vectors, the index "
                            f"{count} x {dim}; rebuild it", path)
    if kind == "hnsw" and (index.storage.ntotal != count or index.storage.d != dim):
        raise PipelineError(f"faiss HNSW's stored vectors are {index.storage.ntotal} x {index.storage.d}, the index "
                            f"{count} x {dim}; rebuild it", path)
    if kind in ("ivf", "ivfpq"):
        _check_ivf(faiss, index, count, dim, path)


def _check_ivf(faiss: Any, index: Any, count: int, dim: int, path: Path) -> None:
    """An IVF index's coarse quantiser has one centroid per list, and its lists hold each row of the index once:
    the ids there are what a search answers with (and faiss does not check them when it reads the file)."""
    quantizer = index.quantizer
    if quantizer.ntotal != index.nlist or quantizer.d != dim:
        raise PipelineError(f"faiss IVF has {quantizer.ntotal} centroids of {quantizer.d} dimensions for {index.nlist} "
                            f"lists of {dim}; rebuild it", path)
    lists = faiss.downcast_InvertedLists(index.invlists)
    if type(lists).__name__ != "ArrayInvertedLists" or lists.nlist != index.nlist:
        raise PipelineError(f"faiss IVF keeps its lists as {type(lists).__name__} of {lists.nlist}, not the "
                            f"ArrayInvertedLists of {index.nlist} an index builds; rebuild it", path)
    parts = [np.array(faiss.rev_swig_ptr(lists.get_ids(number), lists.list_size(number)), dtype=np.int64)
             for number in range(lists.nlist) if lists.list_size(number)]
    ids = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    if len(ids) != count or (count and (ids.min() < 0 or ids.max() >= count
                                        or (np.bincount(ids, minlength=count) != 1).any())):
        shown = f"ids {int(ids.min())}-{int(ids.max())}" if len(ids) else "no ids"
        raise PipelineError(f"faiss IVF lists hold {len(ids)} entries ({shown}), not each row 0-{count - 1} of the "
                            "index once; rebuild it", path)
