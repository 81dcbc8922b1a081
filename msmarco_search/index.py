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

import time
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from .arrays import save_npy
from .bm25 import BM25Index, BM25Settings
from .errors import PipelineError, first_line
from .fileio import atomic_write, load_json, save_json
from .model import TwoTowerModel
from .report import info, progress
from .sources import Source, TsvSource, read_collection
from .text import TOKENIZER_VERSION
from .vocab import vocabulary_fingerprint

KIND_INDEX = "two-tower-index"
INDEX_FORMAT_VERSION = 1
MANIFEST = "manifest.json"
VECTORS, IDS, OFFSETS, PASSAGES, FAISS_FILE = "vectors.npy", "ids.npy", "offsets.npy", "passages.tsv", "faiss.index"
FAISS_KINDS = ("flat", "hnsw", "ivf")
VECTOR_DTYPES = {"float32": np.float32, "float16": np.float16}
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
                # one passage per line: tabs and line breaks inside a text would break the layout
                handle.write(f"{' '.join(pid.split()) or '-'}\t{' '.join(text.split())}\n")
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
    dtype: str = "float32"
    faiss: str | None = None  # None, or one of FAISS_KINDS
    hnsw_m: int = 32
    ivf_lists: int = 0  # 0: about 4 * sqrt(count)
    max_passages: int | None = None


def _check_settings(settings: IndexSettings) -> None:
    if settings.dtype not in VECTOR_DTYPES:
        raise PipelineError(f"unknown vector type {settings.dtype!r} (use {', '.join(VECTOR_DTYPES)})")
    if settings.faiss is not None and settings.faiss not in FAISS_KINDS:
        raise PipelineError(f"unknown faiss index {settings.faiss!r} (use {', '.join(FAISS_KINDS)})")
    if settings.faiss is not None:
        import_faiss()  # fail before the long encoding, not after it


def _prepare_folder(index_dir: Path) -> None:
    try:
        index_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PipelineError(f"cannot create the index folder ({error.strerror or error})", index_dir) from error
    # An old manifest would vouch for files this build is about to replace: drop it first, so an
    # interrupted rebuild leaves an index that is refused as incomplete rather than a mixed one.
    (index_dir / MANIFEST).unlink(missing_ok=True)


def _collection_of(source: Source, index_dir: Path, settings: IndexSettings) -> Path:
    collection = source_collection(source)
    if collection is None:
        collection = index_dir / PASSAGES
        written = write_source_passages(source, collection, settings.max_passages)
        info(f"Wrote {written:,} distinct passages of {source.description} to {collection}")
    return collection


def _passages_to_index(collection: Path, settings: IndexSettings) -> int:
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


def _encode_collection(model: TwoTowerModel, collection: Path, count: int, index_dir: Path,
                       settings: IndexSettings) -> tuple[np.ndarray, np.ndarray]:
    """Writes ``vectors.npy`` (atomically); returns the ids and byte offsets of its rows."""
    dtype = VECTOR_DTYPES[settings.dtype]
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
            lines = iter_collection(collection)
            for offset, pid, text in progress(lines, desc="Encoding passages", total=count, unit="passage",
                                              mininterval=1.0):
                offsets.append(offset)
                writer.add(pid, text)
                if len(offsets) == count:
                    break
            rows = writer.finish()
        if rows != count:
            raise PipelineError(f"the collection changed while it was indexed ({rows:,} passages, expected "
                                f"{count:,})", collection)

    atomic_write(index_dir / VECTORS, encode_into)
    return writers[-1].ids(), np.frombuffer(offsets, dtype=np.int64)


def build_index(model: TwoTowerModel, model_path: str | Path, source: Source, index_dir: str | Path,
                settings: IndexSettings) -> dict[str, Any]:
    """Encode every passage of ``source`` with the passage tower and write the index; returns its manifest.

    A source with a ``collection.tsv`` is indexed in place; any other source first has its passages written
    to ``passages.tsv`` in the index folder. Either way the collection is streamed: vectors go batch by batch
    into a memory-mapped ``.npy`` under a temporary name, renamed into place when complete.
    """
    _check_settings(settings)
    index_dir = Path(index_dir)
    _prepare_folder(index_dir)
    collection = _collection_of(source, index_dir, settings)
    count = _passages_to_index(collection, settings)
    dim = model.config.output_dim
    info(f"Indexing {count:,} passages of {collection} ({dim} dimensions, {settings.dtype})")
    started = time.perf_counter()
    ids, offsets = _encode_collection(model, collection, count, index_dir, settings)
    seconds = time.perf_counter() - started
    save_npy(index_dir / IDS, ids)
    save_npy(index_dir / OFFSETS, offsets)
    info(f"Encoded {count:,} passages in {seconds:.1f} s ({count / max(seconds, 1e-9):,.0f} passages/s)")

    files = [VECTORS, IDS, OFFSETS]
    faiss_info = None
    if settings.faiss is not None:
        vectors = np.load(index_dir / VECTORS, mmap_mode="r")
        faiss_info = build_faiss_index(vectors, settings.faiss, index_dir / FAISS_FILE, settings.hnsw_m,
                                       settings.ivf_lists)
        files.append(FAISS_FILE)
    inside = collection.resolve().parent == index_dir.resolve()
    if inside:
        files.append(collection.name)
    manifest = {
        "kind": KIND_INDEX, "format_version": INDEX_FORMAT_VERSION,
        "model_id": model.metadata.get("model_id"), "model_path": str(Path(model_path).resolve()),
        "vocabulary_fingerprint": vocabulary_fingerprint(model.vocab), "tokenizer": TOKENIZER_VERSION,
        "dim": dim, "count": count, "dtype": settings.dtype, "id_width": ids.dtype.itemsize,
        "collection": collection.name if inside else str(collection.resolve()),
        "collection_size": collection.stat().st_size, "source": source.description,
        "faiss": faiss_info, "encode_seconds": round(seconds, 3),
        "created": datetime.now().isoformat(timespec="seconds"),
        "files": {name: (index_dir / name).stat().st_size for name in files},
    }
    save_json(manifest, index_dir / MANIFEST)
    return manifest


def update_manifest(index_dir: str | Path, **entries: Any) -> dict[str, Any]:
    """Add entries (e.g. a BM25 index's record) to a complete index's manifest, rewritten atomically."""
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


def bm25_identity(index: PassageIndex) -> dict[str, Any]:
    return collection_identity(index.collection, len(index))


def build_bm25_index(index: PassageIndex, settings: BM25Settings) -> dict[str, Any]:
    """BM25 over the index's passages, saved in ``bm25/`` inside it and recorded in its manifest."""
    started = time.perf_counter()
    bm25 = BM25Index(PassageIds(index), index.texts(), settings.k1, settings.b, settings.stemmer)
    record = bm25.save(index.directory / BM25_DIR, bm25_identity(index))
    seconds = time.perf_counter() - started
    entry = {key: record[key] for key in ("k1", "b", "stemmer", "tokenizer", "count")}
    index.manifest = update_manifest(index.directory, bm25={**entry, "seconds": round(seconds, 3)})
    info(f"Built BM25 ({settings.describe()}) over {len(index):,} passages in {seconds:.1f} s")
    return record


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


def _faiss_ivf(faiss: Any, vectors: np.ndarray, ivf_lists: int) -> tuple[Any, int]:
    count, dim = vectors.shape
    # faiss wants ~39+ training points per list; default to about 4 * sqrt(n) lists
    lists = ivf_lists or int(4 * np.sqrt(count))
    lists = max(1, min(lists, count // 39 or 1))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
    # k-means cost grows with sample x lists: 64 points per list is within faiss's advice (39-256)
    sample = min(count, 64 * lists)
    rows = np.sort(np.random.default_rng(0).choice(count, size=sample, replace=False))
    index.train(np.ascontiguousarray(vectors[rows], dtype=np.float32))
    return index, lists


def build_faiss_index(vectors: np.ndarray, kind: str, path: Path, hnsw_m: int = 32, ivf_lists: int = 0,
                      chunk_rows: int = 65536) -> dict[str, Any]:
    """An inner-product faiss index over the rows of ``vectors`` (fed in chunks), written to ``path``."""
    faiss = import_faiss()
    count, dim = vectors.shape
    params: dict[str, Any] = {"type": kind}
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        params["m"] = hnsw_m
    else:
        index, params["lists"] = _faiss_ivf(faiss, vectors, ivf_lists)
    for start in progress(range(0, count, chunk_rows), desc=f"Building faiss {kind}", unit="chunk",
                          total=-(-count // chunk_rows)):
        index.add(np.ascontiguousarray(vectors[start:start + chunk_rows], dtype=np.float32))
    if index.ntotal != count:
        raise PipelineError(f"faiss index holds {index.ntotal} vectors, expected {count}", path)
    atomic_write(path, lambda tmp: faiss.write_index(index, str(tmp)))
    return params


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
        return line.partition(b"\t")[2].decode("utf-8", "replace")

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
                raise PipelineError("this index has no faiss index; build one with `search/search.py index "
                                    "MODEL --faiss flat|hnsw|ivf`, or use --search exact", self.directory)
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
        raise PipelineError("no index here; build one with `search/search.py index MODEL` (or pass --index-dir)",
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


def _load_arrays(index_dir: Path, manifest: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    count, dim, dtype = manifest["count"], manifest["dim"], VECTOR_DTYPES[manifest["dtype"]]
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
