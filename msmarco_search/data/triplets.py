"""Stage 2's output: (query, relevant passage, non-relevant passage) triplets, a teacher's vectors of them, and
their file (how they are made is ``generation``).

The file is a pickle of plain lists of strings (columns), so it loads through ``safe_load.load_pickle``,
which refuses every global; or (``.parquet``) a parquet table with the columns the Hugging Face world names
them by, ``anchor``, ``positive``, ``negative`` (what sentence-transformers' losses take, in that order), then
``query_id``, ``positive_id``, ``negative_id``, which ``datasets.load_dataset("parquet", ...)`` reads as it is.
A parquet file from elsewhere needs only the three text columns: missing ids are derived from the texts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from msmarco_search.core.errors import PipelineError
from msmarco_search.data.records import Passage, QueryRecord, text_id
from msmarco_search.io.outputs import OutputKind
from msmarco_search.io.safe_load import (
    KIND_TRIPLETS,
    is_parquet,
    load_parquet,
    load_pickle,
    recognise_json,
    recognise_tagged,
    save_parquet,
    save_pickle,
)

if TYPE_CHECKING:
    import numpy as np

COLUMNS = ("query_ids", "queries", "positive_ids", "positives", "negative_ids", "negatives")
TRIPLET_FORMATS = ("pkl", "parquet")
# parquet column -> Triplets field: the three texts first (sentence-transformers' order), then the ids
PARQUET_TEXTS = {"anchor": "queries", "positive": "positives", "negative": "negatives"}
PARQUET_IDS = {"query_id": "query_ids", "positive_id": "positive_ids", "negative_id": "negative_ids"}


@dataclass
class TeacherLabels:
    """A teacher's vectors of the triplets' texts (``generate_triplets.py --teacher``), for distillation.

    One row per distinct query and per distinct passage (float16: cosines to 1e-3), and for each triplet the rows
    of its query, positive and negative. A passage's row is the teacher's vector of the whole passage, also where
    the triplet's positive is a cut of it (an inverse-cloze positive lacks its pseudo-query sentence).
    """

    name: str  # as given (a folder or a hub name)
    identity: str  # the digest of the teacher's files (teacher.folder_identity)
    queries: np.ndarray  # (distinct queries, dim) float16
    passages: np.ndarray  # (distinct passages, dim) float16
    query_rows: np.ndarray  # (triplets,) int32, rows of ``queries``
    positive_rows: np.ndarray  # (triplets,) int32, rows of ``passages``
    negative_rows: np.ndarray  # (triplets,) int32, rows of ``passages``

    def __len__(self) -> int:
        return len(self.query_rows)

    def subset(self, indices: list[int]) -> TeacherLabels:
        import numpy as np

        rows = np.asarray(indices, dtype=np.int64)
        return TeacherLabels(self.name, self.identity, self.queries, self.passages, self.query_rows[rows],
                             self.positive_rows[rows], self.negative_rows[rows])

    def batch(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The teacher's float32 vectors of the queries, positives and negatives of triplets ``indices``."""
        return (self.queries[self.query_rows[indices]].astype("float32"),
                self.passages[self.positive_rows[indices]].astype("float32"),
                self.passages[self.negative_rows[indices]].astype("float32"))

    def to_plain(self) -> dict[str, Any]:
        """Plain values (bytes, not arrays) for the pickle, which ``safe_load.load_pickle`` reads without globals."""
        import numpy as np

        return {"name": self.name, "identity": self.identity, "dim": int(self.queries.shape[1]),
                **{name: np.ascontiguousarray(getattr(self, name), dtype=dtype).tobytes()
                   for name, dtype in _TEACHER_ARRAYS.items()}}

    @classmethod
    def from_plain(cls, data: Any, count: int, path: str | Path) -> TeacherLabels:
        """Checked: the arrays' sizes fit the dimension and the triplets, every row exists, every value is finite."""
        import numpy as np

        try:
            dim = data["dim"]
            if type(dim) is not int or not 0 < dim <= 65536:
                raise ValueError(f"dimension {dim!r}")
            arrays = {name: np.frombuffer(data[name], dtype=dtype) for name, dtype in _TEACHER_ARRAYS.items()}
            queries, passages = arrays["queries"].reshape(-1, dim), arrays["passages"].reshape(-1, dim)
            labels = cls(str(data["name"]), str(data["identity"]), queries, passages, arrays["query_rows"],
                         arrays["positive_rows"], arrays["negative_rows"])
        except (KeyError, TypeError, ValueError) as error:
            raise PipelineError(f"the triplets' teacher labels are damaged ({error})", path) from error
        for name, matrix in (("query_rows", queries), ("positive_rows", passages), ("negative_rows", passages)):
            rows = getattr(labels, name)
            if len(rows) != count or (count and (rows.min() < 0 or rows.max() >= len(matrix))):
                raise PipelineError(f"the triplets' teacher labels are damaged ({name} do not fit {count:,} "
                                    f"triplets and {len(matrix):,} vectors)", path)
        if not (np.isfinite(queries).all() and np.isfinite(passages).all()):
            raise PipelineError("the triplets' teacher vectors hold NaN or infinite values", path)
        return labels


# numpy's names of the arrays' types: the triplets command's --help reads this module, and needs no numpy
_TEACHER_ARRAYS = {"queries": "float16", "passages": "float16", "query_rows": "int32", "positive_rows": "int32",
                   "negative_rows": "int32"}


@dataclass
class Triplets:
    query_ids: list[str] = field(default_factory=list)
    queries: list[str] = field(default_factory=list)
    positive_ids: list[str] = field(default_factory=list)
    positives: list[str] = field(default_factory=list)
    negative_ids: list[str] = field(default_factory=list)
    negatives: list[str] = field(default_factory=list)
    teacher: TeacherLabels | None = None  # the teacher's vectors of these texts, when made with one

    def __len__(self) -> int:
        return len(self.queries)

    def append(self, record: QueryRecord, positive: Passage, negative: Passage) -> None:
        self.add(record.query_id, record.query, positive.pid, positive.text, negative.pid, negative.text)

    def add(self, query_id: str, query: str, positive_id: str, positive: str, negative_id: str,
            negative: str) -> None:
        self.query_ids.append(query_id)
        self.queries.append(query)
        self.positive_ids.append(positive_id)
        self.positives.append(positive)
        self.negative_ids.append(negative_id)
        self.negatives.append(negative)

    def extend(self, other: Triplets) -> None:
        """Append ``other``'s triplets; teacher labels, which index rows of each file's own vectors, are dropped
        (``teacher_labels.label_triplets`` labels the whole set again)."""
        for name in COLUMNS:
            getattr(self, name).extend(getattr(other, name))
        self.teacher = None

    def subset(self, indices: Iterable[int]) -> Triplets:
        indices = list(indices)
        teacher = self.teacher.subset(indices) if self.teacher is not None else None
        return Triplets(**{name: [getattr(self, name)[i] for i in indices] for name in COLUMNS}, teacher=teacher)

    def without_queries(self, texts: Iterable[str]) -> Triplets:
        """The triplets whose query is none of ``texts`` (compared as tokens: case and punctuation aside), so
        that queries kept for evaluation are never trained on, not even as an inverse-cloze pseudo-query cut
        from a passage that quotes them."""
        from msmarco_search.data.provenance import query_fingerprint

        excluded = {query_fingerprint(text) for text in texts}
        return self.subset(i for i, query in enumerate(self.queries) if query_fingerprint(query) not in excluded)

    def columns(self) -> dict[str, list[str]]:
        return {name: getattr(self, name) for name in COLUMNS}


def triplets_prefix(sample_size: int) -> str:
    """``msmarco_triplets_<N>k``: N is the sample size in thousands, rounded to the nearest, and at least 1.

    The name says the scale (``1k`` for 53 queries as for 1,200; ``50k`` for 50,000), not the count: that is in
    the metadata (``queries_read``, ``num_triplets``). A fraction like ``0.053k`` read as a typo.
    """
    return f"msmarco_triplets_{max(1, (sample_size + 500) // 1000)}k"


TRIPLETS_OUTPUT = OutputKind("triplets file", recognise_tagged(KIND_TRIPLETS))
# the fields every triplets metadata JSON holds (``cli.triplets.make_and_save``)
TRIPLETS_METADATA_OUTPUT = OutputKind("triplets metadata", recognise_json("mode", "source", "num_triplets"))


def metadata_path(triplets_path: str | Path) -> Path:
    """``<stem>_metadata.json`` beside the triplets file."""
    path = Path(triplets_path)
    return path.with_name(f"{path.stem}_metadata.json")


def save_triplets(triplets: Triplets, path: str | Path, metadata: dict[str, Any]) -> Path:
    """Write ``triplets`` atomically: a parquet table when ``path`` ends in ``.parquet``, else the pickle (with
    the teacher's labels, when there are some)."""
    if Path(path).suffix.lower() == ".parquet":
        if triplets.teacher is not None:
            raise PipelineError("teacher labels are kept in the pickle format only; write a .pkl", path)
        columns = {name: getattr(triplets, field) for name, field in (PARQUET_TEXTS | PARQUET_IDS).items()}
        return save_parquet(columns, path, KIND_TRIPLETS, metadata)
    teacher = {} if triplets.teacher is None else {"teacher": triplets.teacher.to_plain()}
    return save_pickle({**triplets.columns(), "metadata": metadata, **teacher}, path, KIND_TRIPLETS)


def load_triplets(path: str | Path) -> Triplets:
    """Read a triplets ``.pkl`` or ``.parquet`` (by suffix or content), checked column by column."""
    if is_parquet(path):
        return _check_columns(_parquet_columns(path), path)
    data = load_pickle(path, KIND_TRIPLETS)
    columns = {}
    for name in COLUMNS:
        column = data.get(name)
        if not isinstance(column, list) or not all(isinstance(x, str) for x in column):
            raise PipelineError(f"triplets file has no list of strings {name!r}", path)
        columns[name] = column
    triplets = _check_columns(columns, path)
    if data.get("teacher") is not None:
        triplets.teacher = TeacherLabels.from_plain(data["teacher"], len(triplets), path)
    return triplets


def _check_columns(columns: dict[str, list[str]], path: str | Path) -> Triplets:
    if len({len(c) for c in columns.values()}) != 1:
        raise PipelineError("triplets file columns differ in length", path)
    if not columns["queries"]:
        raise PipelineError("triplets file holds no triplets", path)
    return Triplets(**columns)


def _parquet_columns(path: str | Path) -> dict[str, list[str]]:
    import pyarrow as pa

    table, _ = load_parquet(path, KIND_TRIPLETS)
    missing = [name for name in PARQUET_TEXTS if name not in table.column_names]
    if missing:
        raise PipelineError(f"parquet triplets need the columns anchor, positive, negative; missing "
                            f"{', '.join(missing)} (it has {', '.join(table.column_names) or 'none'})", path)
    columns: dict[str, list[str]] = {}
    for name, field_name in (PARQUET_TEXTS | PARQUET_IDS).items():
        if name not in table.column_names:
            continue
        column = table.column(name)
        kind = column.type
        if name in PARQUET_IDS and pa.types.is_integer(kind):  # numeric ids (MS MARCO's are) read as text
            column = column.cast(pa.string())
        elif not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            raise PipelineError(f"parquet column {name!r} holds {kind}, not strings", path)
        if column.null_count:
            raise PipelineError(f"parquet column {name!r} has {column.null_count:,} empty (null) values", path)
        columns[field_name] = column.to_pylist()
    for ids, texts in zip(PARQUET_IDS.values(), PARQUET_TEXTS.values(), strict=True):
        if ids not in columns:  # a file from elsewhere: ids from the texts, so equal texts share one
            columns[ids] = [text_id(text) for text in columns[texts]]
    return {name: columns[name] for name in COLUMNS}
