"""Building an index: every passage encoded with the passage tower, in shards under ``torchrun``, swapped in
whole when complete; a faiss index added to a built one from its stored vectors."""

from __future__ import annotations

import itertools
import shutil
import time
from array import array
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from msmarco_search.core.errors import PipelineError
from msmarco_search.core.report import info, progress
from msmarco_search.core.text import TOKENIZER_VERSION
from msmarco_search.data.records import Source
from msmarco_search.data.vocab import vocabulary_fingerprint
from msmarco_search.index.bm25 import BM25Settings
from msmarco_search.index.bm25_build import build_streamed
from msmarco_search.index.collection import count_passages, iter_collection, source_collection, write_source_passages
from msmarco_search.index.faiss import build_faiss_index, import_faiss, pq_subquantizers
from msmarco_search.index.layout import (
    ARRAY_FILES,
    BM25_DIR,
    DTYPE_AUTO,
    FAISS_FILE,
    FAISS_KINDS,
    ID_OFFSETS,
    IDS,
    INDEX_FORMAT_VERSION,
    INDEX_OUTPUT,
    KIND_INDEX,
    KIND_SHARD,
    MANIFEST,
    OFFSETS,
    PASSAGES,
    SHARD_RECORD,
    SHARDS_DIR,
    VECTOR_DTYPES,
    VECTORS,
    IndexSettings,
    shard_name,
    vector_dtype,
)
from msmarco_search.index.load import load_index
from msmarco_search.index.manifest import check_file_sizes, check_shard_record
from msmarco_search.index.vectors import joined_vectors
from msmarco_search.io.arrays import save_npy
from msmarco_search.io.atomic import atomic_write, content_sample, save_json
from msmarco_search.io.msmarco_files import read_collection
from msmarco_search.io.outputs import StagedFolder
from msmarco_search.io.safe_load import load_json
from msmarco_search.training.distributed import DistributedContext
from msmarco_search.training.model import TwoTowerModel


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
    dtype = np.dtype(dtype_name)
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
    collection_sample: str  # atomic.content_sample of the collection, taken before the encoding
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


def _check_shard(folder: Path, identity: dict[str, Any], rows: tuple[int, int]) -> dict[str, Any]:
    """The record of a complete shard built with ``identity`` for ``rows``; a one-line error otherwise."""
    path = folder / SHARD_RECORD
    if not folder.is_dir():
        raise PipelineError("shard missing; rebuild the index", folder)
    if not path.is_file():
        raise PipelineError(f"half-written shard (no {SHARD_RECORD}: its build never finished); rebuild the index",
                            folder)
    record = check_shard_record(load_json(path), path, identity, rows)
    check_file_sizes(folder, dict(record.get("files", {})))
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
        vectors = joined_vectors(staging, shard_entries)
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
    """BM25 over the index's passages, streamed into ``bm25/`` (see ``bm25_build.build_streamed``)."""
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
