"""The on-disk passage index of a two-tower model: building it, checking it and loading it.

An index is a folder, by default ``<model stem>_index/`` beside the model file:

- ``vectors.npy``: ``(count, dim)`` float32 (or float16) L2-normalised passage vectors, memory-mapped when
  searched, so an 8.8M x 300 matrix is read chunk by chunk and never held in RAM at once;
- ``ids.npy``: ``(count,)`` fixed-width UTF-8 bytes, the passage id of each row;
- ``offsets.npy``: ``(count,)`` int64 byte offset of each passage's line in the collection file, so a hit's
  text is one seek, not a scan;
- ``passages.tsv``: only for sources without a ``collection.tsv`` (row layout, hub): their passages,
  deduplicated by id, in the collection layout (``pid<TAB>text``);
- ``faiss.index``: optional (``faiss`` flat, HNSW or IVF, inner product);
- ``manifest.json``: written last, so a build that was interrupted has none and is refused. It holds the
  model's ``model_id`` and vocabulary fingerprint, the dims, count, dtype, format version and the size of
  every file, so an index built by another model, or one whose files were truncated, is refused.

Only building and loading live here; searching an index is ``msmarco_search.retrieval``.
"""

from __future__ import annotations

import itertools
import shutil
import time
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from .arrays import read_row_list, read_rows, save_npy
from .bm25 import BM25Settings, build_streamed
from .distributed import DistributedContext
from .errors import PipelineError, first_line, short
from .fileio import StagedFolder, atomic_write, load_json, save_json
from .model import TwoTowerModel
from .report import info, progress
from .sources import Source, TsvSource, bad_id, read_collection
from .text import TOKENIZER_VERSION
from .textfiles import decode_text
from .vocab import vocabulary_fingerprint

KIND_INDEX = "two-tower-index"
KIND_SHARD = "two-tower-index-shard"
INDEX_FORMAT_VERSION = 2  # 2: sharded layout (shards/), built in a staging folder
MANIFEST, SHARD_RECORD, SHARDS_DIR = "manifest.json", "shard.json", "shards"
VECTORS, IDS, OFFSETS, PASSAGES, FAISS_FILE = "vectors.npy", "ids.npy", "offsets.npy", "passages.tsv", "faiss.index"
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
        return sum(1 for line in handle if line.strip(b"\r\n"))


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
    """Encodes passages batch by batch and appends their rows to an open ``.npy`` file; collects ids."""

    def __init__(self, model: TwoTowerModel, handle: BinaryIO, dtype: Any, batch_size: int):
        self.model, self.handle, self.dtype, self.batch_size = model, handle, dtype, batch_size
        self.rows = 0
        self.texts: list[str] = []
        self.pids: list[str] = []
        self.id_chunks: list[np.ndarray] = []

    def add(self, pid: str, text: str) -> None:
        self.pids.append(pid)
        self.texts.append(text)
        if len(self.texts) >= self.batch_size:
            self._encode()
        if len(self.pids) >= 1_000_000:  # ids as compact bytes arrays, not a list of 8.8M strings
            self._keep_ids()

    def finish(self) -> int:
        self._encode()
        self._keep_ids()
        return self.rows

    def _encode(self) -> None:
        if self.texts:
            encoded = self.model.encode(self.texts, "passage", batch_size=self.batch_size)
            self.handle.write(np.ascontiguousarray(encoded.numpy(), dtype=self.dtype).tobytes())
            self.rows += len(self.texts)
            self.texts = []

    def _keep_ids(self) -> None:
        if self.pids:
            self.id_chunks.append(np.array([p.encode("utf-8") for p in self.pids], dtype=np.bytes_))
            self.pids = []

    def ids(self) -> np.ndarray:
        width = max(chunk.dtype.itemsize for chunk in self.id_chunks)
        return np.concatenate([chunk.astype(f"S{width}") for chunk in self.id_chunks])


def _encode_collection(model: TwoTowerModel, collection: Path, rows: tuple[int, int], folder: Path,
                       settings: IndexSettings, dtype_name: str) -> tuple[np.ndarray, np.ndarray]:
    """Writes ``vectors.npy`` (atomically) for passages ``rows = (start, stop)`` of the collection; returns
    the ids and byte offsets of its rows."""
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
    return writers[-1].ids(), np.frombuffer(offsets, dtype=np.int64)


@dataclass
class _Build:
    """What every process of one build agrees on: the collection, the rows, the vector type, the model."""

    collection: Path
    final_collection: str  # the collection's path as the finished index records it
    count: int
    dtype: str
    dim: int
    model_id: Any
    vocabulary: str
    world_size: int

    def identity(self) -> dict[str, Any]:
        """What a shard must have been built with to be reused or joined."""
        return {"model_id": self.model_id, "vocabulary_fingerprint": self.vocabulary, "tokenizer": TOKENIZER_VERSION,
                "collection": self.final_collection, "collection_size": self.collection.stat().st_size,
                "count": self.count, "dtype": self.dtype, "dim": self.dim, "shards": self.world_size}

    def rows(self, rank: int) -> tuple[int, int]:
        return rank * self.count // self.world_size, (rank + 1) * self.count // self.world_size

    def folder(self, staging: Path, rank: int) -> Path:
        return staging if self.world_size == 1 else staging / shard_name(rank, self.world_size)


def shard_name(rank: int, world_size: int) -> str:
    return f"{SHARDS_DIR}/{rank}-of-{world_size}"


_SHARD_MISMATCH = {"model_id": "another model", "vocabulary_fingerprint": "another vocabulary",
                   "collection": "another collection", "collection_size": "another collection"}


def _check_shard(folder: Path, identity: dict[str, Any], rows: tuple[int, int]) -> dict[str, Any]:
    """The record of a complete shard built with ``identity`` for ``rows``; a one-line error otherwise."""
    path = folder / SHARD_RECORD
    if not folder.is_dir():
        raise PipelineError("shard missing; rebuild the index", folder)
    if not path.is_file():
        raise PipelineError(f"half-written shard (no {SHARD_RECORD}: its build never finished); rebuild the index",
                            folder)
    record = load_json(path)
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
    _check_file_sizes(folder, dict(record.get("files", {})))
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
    for name in (SHARD_RECORD, VECTORS, IDS, OFFSETS):
        (folder / name).unlink(missing_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    info(f"Indexing passages {rows[0]:,}-{rows[1]:,} of {build.collection} ({build.dim} dimensions, {build.dtype})")
    started = time.perf_counter()
    ids, offsets = _encode_collection(model, build.collection, rows, folder, settings, build.dtype)
    seconds = time.perf_counter() - started
    save_npy(folder / IDS, ids)
    save_npy(folder / OFFSETS, offsets)
    count = rows[1] - rows[0]
    info(f"Encoded {count:,} passages in {seconds:.1f} s ({count / max(seconds, 1e-9):,.0f} passages/s)")
    save_json({"kind": KIND_SHARD, **build.identity(), "start": rows[0], "stop": rows[1],
               "encode_seconds": round(seconds, 3),
               "files": {name: (folder / name).stat().st_size for name in (VECTORS, IDS, OFFSETS)}},
              folder / SHARD_RECORD)


def _clean_staging(staging: Path, world_size: int) -> None:
    """Remove what an interrupted build left in the staging folder, except shards it may have finished
    (``_encode_shard`` checks and reuses those) and the source's passages file (rewritten anyway)."""
    keep = {SHARDS_DIR, PASSAGES} if world_size > 1 else {VECTORS, IDS, OFFSETS, SHARD_RECORD, PASSAGES}
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
    folder = StagedFolder(index_dir)
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
        build = _Build(collection, _final_collection(collection, staging), count,
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
    if build.world_size == 1:
        files = [VECTORS, IDS, OFFSETS]
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
    ids_width = max(_load_array(build.folder(staging, rank) / IDS).dtype.itemsize
                    for rank in range(build.world_size))
    manifest = {
        "kind": KIND_INDEX, "format_version": INDEX_FORMAT_VERSION,
        "model_id": build.model_id, "model_path": str(Path(model_path).resolve()),
        "vocabulary_fingerprint": build.vocabulary, "tokenizer": TOKENIZER_VERSION,
        "dim": build.dim, "count": build.count, "dtype": build.dtype, "id_width": ids_width,
        "collection": build.final_collection,
        "collection_size": build.collection.stat().st_size, "source": source.description,
        "shards": shard_entries, "faiss": faiss_info,
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
                "collection_size": build.collection.stat().st_size, "count": build.count}
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
    """What a saved BM25 index records it was built over: the collection file (absolute path, size) and the
    passages indexed from it; a run over anything else is refused."""
    collection = Path(collection).resolve()
    return {"collection": str(collection), "collection_size": collection.stat().st_size, "count": count}


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
    atomic_write(path, lambda tmp: faiss.write_index(index, str(tmp)))
    params["seconds"] = round(time.perf_counter() - started, 3)
    shown = ", ".join(f"{key} {value}" for key, value in params.items() if key not in ("type", "seconds"))
    info(f"Built faiss {kind}{f' ({shown})' if shown else ''} over {count:,} vectors in {params['seconds']:.1f} s "
         f"({path.stat().st_size / 2**20:,.1f} MiB)")
    return params


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
        return update_manifest(index_dir, faiss=faiss_info, files=files)
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


class PassageIndex:
    """A built index, checked and memory-mapped. Rows are passage positions; ``pid``/``text`` look them up."""

    def __init__(self, directory: Path, manifest: dict[str, Any], vectors: np.ndarray, ids: np.ndarray,
                 offsets: np.ndarray, collection: Path):
        self.directory, self.manifest = directory, manifest
        self.vectors, self.ids, self.offsets, self.collection = vectors, ids, offsets, collection
        self._handle: BinaryIO | None = None
        self._faiss: Any = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def has_faiss(self) -> bool:
        return bool(self.manifest.get("faiss"))

    def pid(self, position: int) -> str:
        return bytes(self.ids[position]).decode("utf-8", "replace")

    def text(self, position: int) -> str:
        """The passage text at row ``position``: one seek into the collection file."""
        if self._handle is None:
            self._handle = open(self.collection, "rb")  # kept open: a session looks up many hits
        self._handle.seek(int(self.offsets[position]))
        line = self._handle.readline().rstrip(b"\r\n")
        return decode_text(line.partition(b"\t")[2])  # as the reader read it when the index was built

    def texts(self) -> Sequence[str]:
        """All texts in row order, read lazily from the collection (for BM25 over the same passages)."""
        return _CollectionTexts(self)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def faiss_index(self) -> Any:
        if self._faiss is None:
            if not self.has_faiss:
                raise PipelineError("this index has no faiss index; add one with `search/search.py faiss MODEL "
                                    f"--faiss {'|'.join(FAISS_KINDS)}`, or use --search exact", self.directory)
            faiss = import_faiss()
            path = self.directory / FAISS_FILE
            try:
                self._faiss = faiss.read_index(str(path))
            except RuntimeError as error:
                raise PipelineError(f"not a readable faiss index ({first_line(error)})", path) from error
            if self._faiss.ntotal != len(self) or self._faiss.d != self.vectors.shape[1]:
                raise PipelineError(f"faiss index holds {self._faiss.ntotal} x {self._faiss.d} vectors, the index "
                                    f"{len(self)} x {self.vectors.shape[1]}; rebuild it", path)
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
        # one sequential read instead of a seek per passage
        for count, (_, _, text) in enumerate(iter_collection(self.index.collection), 1):
            yield text
            if count == len(self):
                return


def _read_manifest(index_dir: Path) -> dict[str, Any]:
    if not index_dir.is_dir():
        raise PipelineError("no index here; build one with `search/search.py index MODEL` (without --index-dir "
                            "it is <model stem>_index/ beside the model)",
                            index_dir)
    path = index_dir / MANIFEST
    if not path.is_file():
        raise PipelineError(f"not a complete index (no {MANIFEST}: its build never finished); rebuild it with "
                            "`search/search.py index MODEL`", index_dir)
    manifest = load_json(path)
    if not isinstance(manifest, dict) or manifest.get("kind") != KIND_INDEX:
        raise PipelineError(f"not a {KIND_INDEX} manifest", path)
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > INDEX_FORMAT_VERSION:
        raise PipelineError(f"index format version {version} is newer than this program reads "
                            f"({INDEX_FORMAT_VERSION}); upgrade msmarco-search", path)
    try:
        manifest["files"], manifest["count"], manifest["dim"] = (dict(manifest["files"]), int(manifest["count"]),
                                                                 int(manifest["dim"]))
        if manifest["dtype"] not in VECTOR_DTYPES:
            raise ValueError(f"unknown dtype {manifest['dtype']!r}")
        manifest["collection"] = str(manifest["collection"])
        sizes = [manifest.get("collection_size"), *manifest["files"].values()]
        if not all(type(size) is int for size in sizes):  # an edited manifest: a size as text was a traceback
            raise ValueError(f"file sizes are not whole numbers ({sizes})")
    except (KeyError, TypeError, ValueError) as error:
        raise PipelineError(f"manifest is incomplete ({error})", path) from error
    return manifest


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
    for name, size in files.items():
        path = index_dir / name
        if not path.is_file():
            raise PipelineError("missing from the index; rebuild it", path)
        actual = path.stat().st_size
        if actual != size:
            raise PipelineError(f"truncated or changed since the index was built ({actual:,} bytes, expected "
                                f"{size:,}); rebuild the index", path)


def _load_arrays(index_dir: Path, manifest: dict[str, Any]) -> tuple[Any, np.ndarray, np.ndarray]:
    count, dim, dtype = manifest["count"], manifest["dim"], VECTOR_DTYPES[manifest["dtype"]]
    shards = manifest.get("shards")
    if shards:
        vectors, ids, offsets = _load_shards(index_dir, manifest, shards)
    else:
        vectors, ids, offsets = (_load_array(index_dir / name) for name in (VECTORS, IDS, OFFSETS))
    if vectors.shape != (count, dim) or vectors.dtype != dtype:
        raise PipelineError(f"holds {vectors.shape} {vectors.dtype}, the manifest says ({count}, {dim}) "
                            f"{np.dtype(dtype)}; rebuild the index", index_dir / VECTORS)
    if ids.shape != (count,) or ids.dtype.kind != "S":
        raise PipelineError(f"holds {ids.shape} {ids.dtype}, expected {count} fixed-width ids", index_dir / IDS)
    if offsets.shape != (count,) or offsets.dtype != np.int64:
        raise PipelineError(f"holds {offsets.shape} {offsets.dtype}, expected {count} int64 offsets",
                            index_dir / OFFSETS)
    # one pass over 8 bytes a passage (70 MB at 8.8M: a fraction of a second): an offset outside the collection
    # was a traceback at the hit's seek, or an empty text
    if count and (offsets.min() < 0 or offsets.max() >= manifest["collection_size"]):
        raise PipelineError(f"holds offsets outside the collection's {manifest['collection_size']:,} bytes; rebuild "
                            "the index", index_dir / OFFSETS)
    return vectors, ids, offsets


def _load_shards(index_dir: Path, manifest: dict[str, Any], shards: Any) -> tuple[JoinedRows, np.ndarray, np.ndarray]:
    """A sharded index's shards, each checked against the manifest (its model, collection, rows and files),
    read as one: vectors joined lazily, ids and offsets (small) concatenated."""
    try:
        entries = [(str(shard["name"]), int(shard["start"]), int(shard["stop"])) for shard in shards]
    except (KeyError, TypeError, ValueError) as error:
        raise PipelineError(f"manifest's shard list is incomplete ({error})", index_dir / MANIFEST) from error
    identity = {key: manifest.get(key) for key in ("model_id", "vocabulary_fingerprint", "tokenizer", "collection",
                                                   "collection_size", "count", "dtype", "dim")}
    identity["shards"] = len(entries)
    vectors, ids, offsets = [], [], []
    for name, start, stop in entries:
        folder = index_dir / name
        _check_shard(folder, identity, (start, stop))
        vectors.append(_load_array(folder / VECTORS))
        ids.append(np.asarray(_load_array(folder / IDS)))
        offsets.append(np.asarray(_load_array(folder / OFFSETS)))
    width = max(chunk.dtype.itemsize for chunk in ids)
    return JoinedRows(vectors), np.concatenate([c.astype(f"S{width}") for c in ids]), np.concatenate(offsets)


def _indexed_collection(index_dir: Path, manifest: dict[str, Any]) -> Path:
    collection = Path(manifest["collection"])
    if not collection.is_absolute():
        collection = index_dir / collection
    if not collection.is_file():
        raise PipelineError("the indexed collection is gone (passage texts are read from it); restore it or "
                            "rebuild the index", collection)
    if collection.stat().st_size != manifest.get("collection_size"):
        raise PipelineError(f"the collection changed since it was indexed ({collection.stat().st_size:,} bytes, "
                            f"expected {manifest.get('collection_size'):,}), so passage offsets would be wrong; "
                            "rebuild the index", collection)
    return collection


def load_index(index_dir: str | Path, model: TwoTowerModel | None = None,
               model_path: str | Path | None = None) -> PassageIndex:
    """Open an index and check it: complete, untruncated, and (given the model) built by this model."""
    index_dir = Path(index_dir)
    manifest = _read_manifest(index_dir)
    if model is not None:
        _check_model(manifest, index_dir / MANIFEST, model, model_path)
    _check_file_sizes(index_dir, manifest["files"])
    vectors, ids, offsets = _load_arrays(index_dir, manifest)
    collection = _indexed_collection(index_dir, manifest)
    return PassageIndex(index_dir, manifest, vectors, ids, offsets, collection)


def _load_array(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise PipelineError(f"not a readable .npy array ({first_line(error)})", path) from error
