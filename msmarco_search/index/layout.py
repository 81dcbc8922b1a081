"""The on-disk passage index of a two-tower model: its folder, its files and their names, its settings.

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
  file, and a content sample (``atomic.content_sample``) of the collection and of the faiss index, so an index
  built by another model, one whose files were truncated or replaced, and one whose manifest names another
  collection than the one it was built from are refused.

Building is ``build``, loading ``load``; searching an index is ``msmarco_search.search``'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from msmarco_search.core.errors import PipelineError
from msmarco_search.io.outputs import OutputKind
from msmarco_search.io.safe_load import load_json

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
# the vectors' types, by numpy's names (numpy takes the name wherever it takes a type; named here without
# numpy, so that the search command's --help offers them without importing it)
VECTOR_DTYPES = ("float32", "float16")
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


def shard_name(rank: int, world_size: int) -> str:
    return f"{SHARDS_DIR}/{rank}-of-{world_size}"


# what build_index writes into an index folder (besides the files its manifest lists)
INDEX_ENTRIES = frozenset({MANIFEST, VECTORS, IDS, ID_OFFSETS, OFFSETS, PASSAGES, FAISS_FILE, BM25_DIR, SHARDS_DIR,
                           SHARD_RECORD})


def recognise_index_folder(path: Path) -> str | None:
    """``outputs.OutputKind`` recogniser of an index folder: a manifest of an index, and nothing but the files an
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
