"""Search with a trained two-tower model: index a passage collection, answer queries, fuse with BM25.

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

Systems: ``two-tower`` (exact inner product on the memory-mapped matrix, or faiss), ``bm25``
(``msmarco_search.bm25.BM25Index`` over the same collection) and ``hybrid`` (reciprocal rank fusion, or a
weighted mix of min-max-normalised scores, of the two). The fusion functions take plain ``{id: score}``
mappings so evaluation can reuse them on runs.
"""

from __future__ import annotations

import time
from array import array
from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import numpy as np
import torch

from .arrays import save_npy
from .errors import PipelineError
from .fileio import atomic_write, load_json, save_json
from .model import TwoTowerModel
from .report import info, progress
from .sources import Source, TsvSource
from .text import TOKENIZER_VERSION
from .vocab import vocabulary_fingerprint

KIND_INDEX = "two-tower-index"
INDEX_FORMAT_VERSION = 1
MANIFEST = "manifest.json"
VECTORS, IDS, OFFSETS, PASSAGES, FAISS_FILE = "vectors.npy", "ids.npy", "offsets.npy", "passages.tsv", "faiss.index"
FAISS_KINDS = ("flat", "hnsw", "ivf")
SYSTEMS = ("two-tower", "bm25", "hybrid")
FUSIONS = ("rrf", "linear")
VECTOR_DTYPES = {"float32": np.float32, "float16": np.float16}

T = TypeVar("T", bound=Hashable)


def default_index_dir(model_path: str | Path) -> Path:
    """``<model stem>_index/`` beside the model: the index belongs to the model that built it."""
    model_path = Path(model_path)
    return model_path.with_name(f"{model_path.stem}_index")


# ---------------------------------------------------------------------------------------------- collection


def iter_collection(path: str | Path) -> Iterator[tuple[int, str, str]]:
    """``(byte offset, pid, text)`` of each passage line of a ``collection.tsv``, streamed.

    Read as bytes (unlike ``sources.read_collection``) because the byte offset of each line is what lets
    search fetch a hit's text with one seek. Same rules: blank lines skipped, a line without a tab refused.
    """
    path = Path(path)
    if not path.is_file():
        raise PipelineError("collection file not found", path)
    if path.stat().st_size == 0:
        raise PipelineError("file is empty", path)
    offset = 0
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, 1):
            start, offset = offset, offset + len(line)
            line = line.rstrip(b"\r\n")
            if not line:
                continue
            pid, tab, text = line.partition(b"\t")
            if not tab:
                raise PipelineError(f"line {number} has 1 tab-separated field(s), a collection (pid<TAB>text) "
                                    "file needs 2", path)
            yield start, pid.decode("utf-8", "replace"), text.decode("utf-8", "replace")


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


def build_index(model: TwoTowerModel, model_path: str | Path, source: Source, index_dir: str | Path,
                settings: IndexSettings) -> dict[str, Any]:
    """Encode every passage of ``source`` with the passage tower and write the index; returns its manifest.

    A source with a ``collection.tsv`` is indexed in place; any other source first has its passages written
    to ``passages.tsv`` in the index folder. Either way the collection is streamed: vectors go batch by batch
    into a memory-mapped ``.npy`` under a temporary name, renamed into place when complete.
    """
    if settings.dtype not in VECTOR_DTYPES:
        raise PipelineError(f"unknown vector type {settings.dtype!r} (use {', '.join(VECTOR_DTYPES)})")
    if settings.faiss is not None and settings.faiss not in FAISS_KINDS:
        raise PipelineError(f"unknown faiss index {settings.faiss!r} (use {', '.join(FAISS_KINDS)})")
    if settings.faiss is not None:
        import_faiss()  # fail before the long encoding, not after it
    index_dir = Path(index_dir)
    try:
        index_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PipelineError(f"cannot create the index folder ({error.strerror or error})", index_dir) from error
    # An old manifest would vouch for files this build is about to replace: drop it first, so an
    # interrupted rebuild leaves an index that is refused as incomplete rather than a mixed one.
    (index_dir / MANIFEST).unlink(missing_ok=True)
    collection = source_collection(source)
    if collection is None:
        collection = index_dir / PASSAGES
        written = write_source_passages(source, collection, settings.max_passages)
        info(f"Wrote {written:,} distinct passages of {source.description} to {collection}")

    count = count_passages(collection)
    if settings.max_passages is not None:
        count = min(count, settings.max_passages)
    if count == 0:
        raise PipelineError("the collection holds no passages", collection)
    dim = model.config.output_dim
    dtype = VECTOR_DTYPES[settings.dtype]
    info(f"Indexing {count:,} passages of {collection} ({dim} dimensions, {settings.dtype})")
    started = time.perf_counter()
    offsets = array("q")
    id_chunks: list[np.ndarray] = []

    def encode_into(tmp: Path) -> None:
        # open_memmap lays out the .npy (header, full size); the rows are then appended with plain writes,
        # which keep the process's memory flat (written pages of a mapping would count as resident).
        layout = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(count, dim))
        data_start = layout.offset
        del layout
        row, texts, pids = 0, [], []
        with open(tmp, "r+b") as handle:
            handle.seek(data_start)

            def flush() -> None:
                nonlocal row, texts
                if texts:
                    encoded = model.encode(texts, "passage", batch_size=settings.batch_size)
                    handle.write(np.ascontiguousarray(encoded.numpy(), dtype=dtype).tobytes())
                    row += len(texts)
                    texts = []
                if len(pids) >= 1_000_000 or (pids and row == count):
                    id_chunks.append(np.array([p.encode("utf-8") for p in pids], dtype=np.bytes_))
                    pids.clear()

            lines = iter_collection(collection)
            for offset, pid, text in progress(lines, desc="Encoding passages", total=count, unit="passage",
                                              mininterval=1.0):
                offsets.append(offset)
                pids.append(pid)
                texts.append(text)
                if len(texts) >= settings.batch_size:
                    flush()
                if len(offsets) == count:
                    break
            flush()
        if row != count:
            raise PipelineError(f"the collection changed while it was indexed ({row:,} passages, expected "
                                f"{count:,})", collection)

    atomic_write(index_dir / VECTORS, encode_into)
    seconds = time.perf_counter() - started
    width = max(chunk.dtype.itemsize for chunk in id_chunks)
    ids = np.concatenate([chunk.astype(f"S{width}") for chunk in id_chunks])
    save_npy(index_dir / IDS, ids)
    save_npy(index_dir / OFFSETS, np.frombuffer(offsets, dtype=np.int64))
    info(f"Encoded {count:,} passages in {seconds:.1f} s ({count / max(seconds, 1e-9):,.0f} passages/s)")

    files = [VECTORS, IDS, OFFSETS]
    faiss_info = None
    if settings.faiss is not None:
        vectors = np.load(index_dir / VECTORS, mmap_mode="r")
        faiss_info = build_faiss_index(vectors, settings.faiss, index_dir / FAISS_FILE, settings.hnsw_m,
                                       settings.ivf_lists)
        files.append(FAISS_FILE)
    collection_stat = collection.stat()
    inside = collection.resolve().parent == index_dir.resolve()
    if inside:
        files.append(collection.name)
    manifest = {
        "kind": KIND_INDEX, "format_version": INDEX_FORMAT_VERSION,
        "model_id": model.metadata.get("model_id"), "model_path": str(Path(model_path).resolve()),
        "vocabulary_fingerprint": vocabulary_fingerprint(model.vocab), "tokenizer": TOKENIZER_VERSION,
        "dim": dim, "count": count, "dtype": settings.dtype, "id_width": width,
        "collection": collection.name if inside else str(collection.resolve()),
        "collection_size": collection_stat.st_size, "source": source.description,
        "faiss": faiss_info, "encode_seconds": round(seconds, 3),
        "created": datetime.now().isoformat(timespec="seconds"),
        "files": {name: (index_dir / name).stat().st_size for name in files},
    }
    save_json(manifest, index_dir / MANIFEST)
    return manifest


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
        # faiss wants ~39+ training points per list; default to about 4 * sqrt(n) lists
        lists = ivf_lists or int(4 * np.sqrt(count))
        lists = max(1, min(lists, count // 39 or 1))
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, lists, faiss.METRIC_INNER_PRODUCT)
        # k-means cost grows with sample x lists: 64 points per list is within faiss's advice (39-256)
        sample = min(count, 64 * lists)
        rows = np.sort(np.random.default_rng(0).choice(count, size=sample, replace=False))
        index.train(np.ascontiguousarray(vectors[rows], dtype=np.float32))
        params["lists"] = lists
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
                raise PipelineError(f"not a readable faiss index ({str(error).splitlines()[0]})", path) from error
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


def load_index(index_dir: str | Path, model: TwoTowerModel | None = None,
               model_path: str | Path | None = None) -> PassageIndex:
    """Open an index and check it: complete, untruncated, and (given the model) built by this model."""
    index_dir = Path(index_dir)
    if not index_dir.is_dir():
        raise PipelineError("no index here; build one with `search/search.py index MODEL` (or pass --index-dir)",
                            index_dir)
    manifest_path = index_dir / MANIFEST
    if not manifest_path.is_file():
        raise PipelineError(f"not a complete index (no {MANIFEST}: its build never finished); rebuild it with "
                            "`search/search.py index MODEL`", index_dir)
    manifest = load_json(manifest_path)
    if not isinstance(manifest, dict) or manifest.get("kind") != KIND_INDEX:
        raise PipelineError(f"not a {KIND_INDEX} manifest", manifest_path)
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > INDEX_FORMAT_VERSION:
        raise PipelineError(f"index format version {version} is newer than this program reads "
                            f"({INDEX_FORMAT_VERSION}); upgrade msmarco-search", manifest_path)
    try:
        files, count, dim = dict(manifest["files"]), int(manifest["count"]), int(manifest["dim"])
        dtype, collection_name = VECTOR_DTYPES[manifest["dtype"]], str(manifest["collection"])
    except (KeyError, TypeError, ValueError) as error:
        raise PipelineError(f"manifest is incomplete ({error})", manifest_path) from error
    if model is not None:
        built_by, this = manifest.get("model_id"), model.metadata.get("model_id")
        if built_by != this:
            raise PipelineError(
                f"index was built by another model (model_id {str(built_by)[:12]}, {manifest.get('model_path')}), "
                f"not by {model_path or 'this model'} (model_id {str(this)[:12]}); index it with this model, or "
                "pass the --index-dir of its own index", manifest_path)
    if model is not None and manifest.get("vocabulary_fingerprint") != vocabulary_fingerprint(model.vocab):
        raise PipelineError("index was built with another vocabulary than this model's; rebuild it", manifest_path)
    for name, size in files.items():
        path = index_dir / name
        if not path.is_file():
            raise PipelineError("missing from the index; rebuild it", path)
        actual = path.stat().st_size
        if actual != size:
            raise PipelineError(f"truncated or changed since the index was built ({actual:,} bytes, expected "
                                f"{size:,}); rebuild the index", path)
    vectors = _load_array(index_dir / VECTORS)
    ids = _load_array(index_dir / IDS)
    offsets = _load_array(index_dir / OFFSETS)
    if vectors.shape != (count, dim) or vectors.dtype != dtype:
        raise PipelineError(f"holds {vectors.shape} {vectors.dtype}, the manifest says ({count}, {dim}) "
                            f"{np.dtype(dtype)}; rebuild the index", index_dir / VECTORS)
    if ids.shape != (count,) or ids.dtype.kind != "S":
        raise PipelineError(f"holds {ids.shape} {ids.dtype}, expected {count} fixed-width ids", index_dir / IDS)
    if offsets.shape != (count,) or offsets.dtype != np.int64:
        raise PipelineError(f"holds {offsets.shape} {offsets.dtype}, expected {count} int64 offsets",
                            index_dir / OFFSETS)
    collection = Path(collection_name)
    if not collection.is_absolute():
        collection = index_dir / collection
    if not collection.is_file():
        raise PipelineError("the indexed collection is gone (passage texts are read from it); restore it or "
                            "rebuild the index", collection)
    if collection.stat().st_size != manifest.get("collection_size"):
        raise PipelineError(f"the collection changed since it was indexed ({collection.stat().st_size:,} bytes, "
                            f"expected {manifest.get('collection_size'):,}), so passage offsets would be wrong; "
                            "rebuild the index", collection)
    return PassageIndex(index_dir, manifest, vectors, ids, offsets, collection)


def _load_array(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise PipelineError(f"not a readable .npy array ({str(error).splitlines()[0]})", path) from error


# ---------------------------------------------------------------------------------------------- searching


Hits = list[tuple[int, float]]  # (row position, score), best first


def exact_search(vectors: np.ndarray, queries: torch.Tensor, k: int, chunk_rows: int = 65536,
                 device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` rows of ``vectors`` by inner product with each query: ``(scores, positions)``, each ``(Q, k)``.

    Reads ``vectors`` (a memory map is fine) ``chunk_rows`` rows at a time and keeps a running top-k, so
    memory stays at one chunk plus ``Q x k`` whatever the collection size.
    """
    count = len(vectors)
    k = min(k, count)
    queries = queries.to(device=device, dtype=torch.float32)
    best_scores = torch.empty(len(queries), 0, device=device)
    best_rows = torch.empty(len(queries), 0, dtype=torch.long, device=device)
    chunks = range(0, count, chunk_rows)
    if len(chunks) > 8:
        chunks = progress(chunks, desc="Searching", unit="chunk", total=len(chunks))
    for start in chunks:
        block = torch.from_numpy(np.array(vectors[start:start + chunk_rows], dtype=np.float32))  # owned, writable
        scores = queries @ block.to(device).T
        top = scores.topk(min(k, scores.shape[1]), dim=1)
        best_scores = torch.cat([best_scores, top.values], dim=1)
        best_rows = torch.cat([best_rows, top.indices + start], dim=1)
        if best_scores.shape[1] > k:
            keep = best_scores.topk(k, dim=1)
            best_scores, best_rows = keep.values, best_rows.gather(1, keep.indices)
    order = best_scores.argsort(dim=1, descending=True)
    return best_scores.gather(1, order).cpu(), best_rows.gather(1, order).cpu()


class TwoTowerSearcher:
    """Queries through the query tower, then exact inner product on the matrix, or the index's faiss index."""

    name = "two-tower"

    def __init__(self, model: TwoTowerModel, index: PassageIndex, use_faiss: bool = False, nprobe: int = 16,
                 ef_search: int = 128, chunk_rows: int = 65536):
        self.model, self.index, self.device = model, index, model.device
        self.use_faiss, self.nprobe, self.ef_search, self.chunk_rows = use_faiss, nprobe, ef_search, chunk_rows
        if use_faiss:
            index.faiss_index()  # check it loads before the first query
        kind = (index.manifest.get("faiss") or {}).get("type") if use_faiss else None
        self.description = f"faiss {kind}" if kind else "exact inner product"

    def search(self, queries: Sequence[str], k: int) -> list[Hits]:
        vectors = self.model.encode(list(queries), "query")
        if self.use_faiss:
            faiss_index = self.index.faiss_index()
            kind = self.index.manifest["faiss"]["type"]
            if kind == "hnsw":
                faiss_index.hnsw.efSearch = max(self.ef_search, k)
            elif kind == "ivf":
                faiss_index.nprobe = self.nprobe
            scores, rows = faiss_index.search(np.ascontiguousarray(vectors.numpy(), dtype=np.float32),
                                              min(k, len(self.index)))
            return [[(int(r), float(s)) for r, s in zip(row, score, strict=True) if r >= 0]
                    for row, score in zip(rows, scores, strict=True)]
        scores, rows = exact_search(self.index.vectors, vectors, k, self.chunk_rows, self.device)
        return [list(zip(r.tolist(), s.tolist(), strict=True)) for r, s in zip(rows, scores, strict=True)]


class BM25Searcher:
    """BM25 over the index's own collection, so its hits are the same rows as the two-tower's."""

    name = "bm25"
    description = "bm25s, k1 0.9, b 0.4"

    def __init__(self, index: PassageIndex):
        from .bm25 import BM25Index

        started = time.perf_counter()
        self.bm25 = BM25Index(range(len(index)), index.texts())
        info(f"Built BM25 over {len(index):,} passages in {time.perf_counter() - started:.1f} s")

    def search(self, queries: Sequence[str], k: int) -> list[Hits]:
        rows, scores = self.bm25.search(list(queries), k)
        # bm25s pads with zero-score rows when fewer passages match; those are not hits
        return [[(int(r), float(s)) for r, s in zip(row, score, strict=True) if s > 0]
                for row, score in zip(rows, scores, strict=True)]


class HybridSearcher:
    """Fuse the top ``depth`` of two-tower and BM25: reciprocal rank fusion, or a weighted score mix."""

    name = "hybrid"

    def __init__(self, dense: TwoTowerSearcher, bm25: BM25Searcher, fusion: str = "rrf", weight: float = 0.5,
                 depth: int = 100, rrf_k: int = 60):
        if fusion not in FUSIONS:
            raise PipelineError(f"unknown fusion {fusion!r} (use {', '.join(FUSIONS)})")
        if not 0.0 <= weight <= 1.0:
            raise PipelineError(f"the two-tower weight must be between 0 and 1, got {weight}")
        self.dense, self.bm25, self.fusion, self.weight, self.depth, self.rrf_k = (dense, bm25, fusion, weight,
                                                                                    depth, rrf_k)
        self.description = (f"{fusion} of two-tower ({dense.description}) and bm25, two-tower weight {weight}"
                            + (f", k {rrf_k}" if fusion == "rrf" else ""))

    def search(self, queries: Sequence[str], k: int) -> list[Hits]:
        depth = max(self.depth, k)
        runs = zip(self.dense.search(queries, depth), self.bm25.search(queries, depth), strict=True)
        weights = (self.weight, 1.0 - self.weight)
        fused = []
        for dense, lexical in runs:
            lists = (dict(dense), dict(lexical))
            if self.fusion == "rrf":
                fused.append(reciprocal_rank_fusion(lists, k=self.rrf_k, weights=weights, limit=k))
            else:
                fused.append(linear_fusion(lists, weights=weights, limit=k))
        return fused


def reciprocal_rank_fusion(runs: Sequence[Mapping[T, float]], k: int = 60, weights: Sequence[float] | None = None,
                           limit: int | None = None) -> list[tuple[T, float]]:
    """Reciprocal rank fusion (Cormack et al. 2009): ``score(d) = sum_i w_i / (k + rank_i(d))``.

    Each run maps a document id to its score (higher is better; only the order matters). Returns
    ``(id, fused score)`` best first, at most ``limit`` of them; ties keep the first run's order.
    """
    weights = _check_weights(runs, weights)
    fused: dict[T, float] = {}
    first_seen: dict[T, tuple[int, int]] = {}
    for run_number, (run, weight) in enumerate(zip(runs, weights, strict=True)):
        for rank, doc in enumerate(sorted(run, key=lambda d: -run[d]), 1):
            fused[doc] = fused.get(doc, 0.0) + weight / (k + rank)
            first_seen.setdefault(doc, (rank, run_number))
    ranked = sorted(fused.items(), key=lambda item: (-item[1], first_seen[item[0]]))
    return ranked[:limit] if limit is not None else ranked


def linear_fusion(runs: Sequence[Mapping[T, float]], weights: Sequence[float] | None = None,
                  limit: int | None = None) -> list[tuple[T, float]]:
    """A weighted sum of each run's min-max-normalised scores (a document missing from a run gets 0 there).

    Normalising puts cosine scores (about -1..1) and BM25 scores (0..tens) on one 0..1 scale first.
    """
    weights = _check_weights(runs, weights)
    fused: dict[T, float] = {}
    for run, weight in zip(runs, weights, strict=True):
        if not run:
            continue
        low, high = min(run.values()), max(run.values())
        spread = high - low
        for doc, score in run.items():
            normalised = (score - low) / spread if spread > 0 else 1.0
            fused[doc] = fused.get(doc, 0.0) + weight * normalised
    ranked = sorted(fused.items(), key=lambda item: -item[1])
    return ranked[:limit] if limit is not None else ranked


def _check_weights(runs: Sequence[Mapping[Any, float]], weights: Sequence[float] | None) -> Sequence[float]:
    if weights is None:
        return [1.0] * len(runs)
    if len(weights) != len(runs):
        raise ValueError(f"{len(weights)} weights for {len(runs)} runs")
    return weights


# ---------------------------------------------------------------------------------------------- output


def write_trec_run(path: str | Path, results: Sequence[tuple[str, Sequence[tuple[str, float]]]],
                   tag: str) -> Path:
    """A TREC run file, ``qid Q0 docid rank score tag`` per line, read by trec_eval and ir_measures.

    Scores are written in full (``repr``), so tools that re-sort by score see the same ties as we did.
    """
    tag = "_".join(tag.split()) or "run"

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            for qid, hits in results:
                for rank, (docid, score) in enumerate(hits, 1):
                    handle.write(f"{qid} Q0 {docid} {rank} {float(score)!r} {tag}\n")

    return atomic_write(path, write)


def snippet(text: str, width: int) -> str:
    """The start of ``text`` on one line, cut at ``width`` characters (0: all of it)."""
    text = " ".join(text.split())
    if width and len(text) > width:
        return text[:max(width - 1, 0)].rstrip() + "…"
    return text


__all__ = [
    "BM25Searcher", "HybridSearcher", "IndexSettings", "PassageIndex", "TwoTowerSearcher", "build_index",
    "build_faiss_index", "count_passages", "default_index_dir", "exact_search", "faiss_available", "import_faiss",
    "iter_collection", "linear_fusion", "load_index", "reciprocal_rank_fusion", "snippet", "source_collection",
    "write_source_passages", "write_trec_run",
]
