"""The optional faiss index of a search index: building it, its search parameters, and reading it back checked
against the index it belongs to."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from msmarco_search.core.commands import command
from msmarco_search.core.errors import PipelineError, first_line
from msmarco_search.core.report import info, progress
from msmarco_search.index.vectors import vector_row_list, vector_rows
from msmarco_search.io.atomic import atomic_write

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


# ---------------------------------------------------------------------------------------------- faiss checks

_FAISS_CLASSES = {"flat": "IndexFlatIP", "hnsw": "IndexHNSWFlat", "ivf": "IndexIVFFlat", "ivfpq": "IndexIVFPQ"}


def read_faiss(faiss: Any, file: io.FileIO, path: Path) -> Any:
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


def check_faiss(faiss: Any, index: Any, kind: str, count: int, dim: int, path: Path) -> None:
    """A faiss index of the manifest's ``kind`` over these ``count`` x ``dim`` vectors, ranking by inner product,
    whose answers can only be rows of the index; a one-line error otherwise."""
    found = type(index).__name__
    if found != _FAISS_CLASSES[kind]:
        raise PipelineError(f"holds a faiss {found}, not the {_FAISS_CLASSES[kind]} of a {kind} index the manifest "
                            f"names; rebuild it with `{command('search')} faiss MODEL --faiss {kind}`", path)
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
