"""Stage 2: (query, relevant passage, non-relevant passage) triplets, and their file.

For each query with a selected passage, every selected passage is a positive, paired with one negative:
``hard`` takes an unselected passage of the same query, ``random`` a passage of another query, ``mixed``
either with equal odds. A negative is never a passage whose text equals one of the query's positives.

Without queries, ``inverse_cloze_triplets`` makes triplets from bare passages (the inverse cloze task of
Lee et al. 2019, "Latent Retrieval for Weakly Supervised Open Domain QA"): a sentence of a passage (or a
span, when the passage is one sentence) becomes the query, the rest of the passage its positive, and
another passage the negative.

The file is a pickle of plain lists of strings (columns), so it loads through ``fileio.load_pickle``,
which refuses every global; or (``.parquet``) a parquet table with the columns the Hugging Face world names
them by, ``anchor``, ``positive``, ``negative`` (what sentence-transformers' losses take, in that order), then
``query_id``, ``positive_id``, ``negative_id``, which ``datasets.load_dataset("parquet", ...)`` reads as it is.
A parquet file from elsewhere needs only the three text columns: missing ids are derived from the texts.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import PipelineError
from .fileio import (
    KIND_TRIPLETS,
    OutputKind,
    is_parquet,
    load_parquet,
    load_pickle,
    recognise_json,
    recognise_tagged,
    save_parquet,
    save_pickle,
)
from .report import progress
from .resources import check_memory
from .sources import Passage, QueryRecord, text_id
from .text import tokenize

NEGATIVE_STRATEGIES = ("hard", "random", "mixed")
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
        rows = np.asarray(indices, dtype=np.int64)
        return TeacherLabels(self.name, self.identity, self.queries, self.passages, self.query_rows[rows],
                             self.positive_rows[rows], self.negative_rows[rows])

    def batch(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The teacher's float32 vectors of the queries, positives and negatives of triplets ``indices``."""
        return (self.queries[self.query_rows[indices]].astype(np.float32),
                self.passages[self.positive_rows[indices]].astype(np.float32),
                self.passages[self.negative_rows[indices]].astype(np.float32))

    def to_plain(self) -> dict[str, Any]:
        """Plain values (bytes, not arrays) for the pickle, which ``fileio.load_pickle`` reads without globals."""
        return {"name": self.name, "identity": self.identity, "dim": int(self.queries.shape[1]),
                **{name: np.ascontiguousarray(getattr(self, name), dtype=dtype).tobytes()
                   for name, dtype in _TEACHER_ARRAYS.items()}}

    @classmethod
    def from_plain(cls, data: Any, count: int, path: str | Path) -> TeacherLabels:
        """Checked: the arrays' sizes fit the dimension and the triplets, every row exists, every value is finite."""
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


_TEACHER_ARRAYS = {"queries": np.float16, "passages": np.float16, "query_rows": np.int32,
                   "positive_rows": np.int32, "negative_rows": np.int32}


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
        (``teacher.label_triplets`` labels the whole set again)."""
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
        from .provenance import query_fingerprint

        excluded = {query_fingerprint(text) for text in texts}
        return self.subset(i for i, query in enumerate(self.queries) if query_fingerprint(query) not in excluded)

    def columns(self) -> dict[str, list[str]]:
        return {name: getattr(self, name) for name in COLUMNS}


@dataclass
class TripletStats:
    queries_read: int = 0
    queries_without_selected: int = 0
    queries_without_negative: int = 0
    hard_negatives: int = 0
    random_negatives: int = 0
    hard_fallbacks_to_random: int = 0


def _normalised(text: str) -> str:
    return " ".join(text.lower().split())


def generate_triplets(records: Iterable[QueryRecord], negatives: str = "hard", seed: int = 42,
                      has_candidates: bool = True, total: int | None = None) -> tuple[Triplets, TripletStats]:
    """Build triplets from query records; see the module docstring for the strategies."""
    if negatives not in NEGATIVE_STRATEGIES:
        raise PipelineError(f"unknown negative strategy {negatives!r} (use {', '.join(NEGATIVE_STRATEGIES)})")
    if negatives in ("hard", "mixed") and not has_candidates:
        raise PipelineError(f"--negatives {negatives} needs candidate passages per query, and this source has "
                            "none (TSVs without a top1000 candidates file); use --negatives random, or add "
                            "a candidates file")
    stats = TripletStats()
    kept: list[QueryRecord] = []
    for record in progress(records, desc="Reading queries", total=total, unit="query"):
        stats.queries_read += 1
        if record.positives:
            kept.append(record)
        else:
            stats.queries_without_selected += 1
    rng = random.Random(seed)
    triplets = Triplets()
    for index, record in enumerate(progress(kept, desc="Building triplets", unit="query")):
        positives = record.positives
        positive_texts = {_normalised(p.text) for p in positives}
        hard_pool = [p for p in record.non_selected if _normalised(p.text) not in positive_texts]
        made = 0
        for positive in positives:
            want_hard = negatives == "hard" or (negatives == "mixed" and rng.random() < 0.5)
            negative = rng.choice(hard_pool) if want_hard and hard_pool else None
            if negative is not None:
                stats.hard_negatives += 1
            else:
                negative = _random_negative(kept, index, positive_texts, rng)
                if negative is None:
                    continue
                stats.random_negatives += 1
                stats.hard_fallbacks_to_random += int(want_hard)
            triplets.append(record, positive, negative)
            made += 1
        stats.queries_without_negative += int(made == 0)
    return triplets, stats


def _random_negative(records: list[QueryRecord], own: int, positive_texts: set[str],
                     rng: random.Random, tries: int = 20) -> Passage | None:
    if len(records) < 2:
        return None
    for _ in range(tries):
        other = rng.randrange(len(records) - 1)
        other += int(other >= own)  # any record but this query's own
        passage = rng.choice(records[other].passages)
        if _normalised(passage.text) not in positive_texts:
            return passage
    return None


# ------------------------------------------------------------------------------------------ inverse cloze

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=\S)")


@dataclass
class ClozeStats:
    passages_read: int = 0
    passages_too_short: int = 0
    sentence_queries: int = 0
    span_queries: int = 0
    keyword_queries: int = 0
    queries_kept_in_positive: int = 0


CLOZE_TRIPLET_BYTES = 400  # a pseudo-query triplet beside its positive's text: the query, its id, six list slots


def inverse_cloze_triplets(passages: Iterable[tuple[str, str]], seed: int = 42, per_passage: int = 1,
                           max_query_words: int = 16, min_words: int = 8, keep_query_probability: float = 0.1,
                           total: int | None = None, keyword_share: float = 0.0) -> tuple[Triplets, ClozeStats]:
    """Triplets from bare passages by the inverse cloze task (see the module docstring).

    The pseudo-query is a random sentence of the passage (a window of at most ``max_query_words`` words of
    it), or, in a one-sentence passage, a span of a quarter of its words (3 to ``max_query_words``). The
    positive is the passage without that sentence or span, except with probability
    ``keep_query_probability``, where it stays in (Lee et al. keep 10 %, so the model still learns that
    shared words matter). The negative is another passage, never one with the same text.

    With probability ``keyword_share`` a pseudo-query is instead keyword-style, as real search queries are:
    3 to 6 distinct words of the passage drawn with weights ``log(N / df)`` over the passages read (rare,
    telling words first), in the passage's order, and the positive is the whole passage.
    """
    if not 0.0 <= keep_query_probability <= 1.0:
        raise PipelineError(f"the probability of keeping the query in its passage must lie in [0, 1], got "
                            f"{keep_query_probability}")
    if not 0.0 <= keyword_share <= 1.0:
        raise PipelineError(f"the share of keyword pseudo-queries must lie in [0, 1], got {keyword_share}")
    if max_query_words < 3:
        raise PipelineError(f"pseudo-queries need room for at least 3 words, got {max_query_words}")
    stats = ClozeStats()
    kept: list[tuple[str, str]] = []
    for pid, text in progress(passages, desc="Reading passages", total=total, unit="passage"):
        stats.passages_read += 1
        if len(text.split()) >= min_words:
            kept.append((pid, text))
        else:
            stats.passages_too_short += 1
    triplets = Triplets()
    if len(kept) < 2:
        return triplets, stats
    # each pseudo-query's positive is its own copy of the rest of its passage
    check_memory(per_passage * (sum(len(text) for _, text in kept) + len(kept) * CLOZE_TRIPLET_BYTES),
                 f"{per_passage:,} pseudo-queries from each of {len(kept):,} passages",
                 "lower --ict-per-passage or --max-samples")
    rng = random.Random(seed)
    idf = word_idf([text for _, text in kept]) if keyword_share > 0 else {}
    for index, (pid, text) in enumerate(progress(kept, desc="Cutting pseudo-queries", unit="passage")):
        for copy in range(per_passage):
            keywords = keyword_query(text, idf, rng) if keyword_share and rng.random() < keyword_share else None
            if keywords is not None:
                query, rest = keywords, text
                stats.keyword_queries += 1
            else:
                query, rest, from_sentence = _cloze_split(text, rng, max_query_words)
                if rng.random() < keep_query_probability:
                    rest = text
                    stats.queries_kept_in_positive += 1
                stats.sentence_queries += int(from_sentence)
                stats.span_queries += int(not from_sentence)
            own = _normalised(text)
            for _ in range(20):
                other = rng.randrange(len(kept) - 1)
                other += int(other >= index)
                if _normalised(kept[other][1]) != own:
                    break
            triplets.add(f"ict:{pid}:{copy}", query, pid, rest, kept[other][0], kept[other][1])
    return triplets, stats


def word_idf(texts: list[str]) -> dict[str, float]:
    """``log(N / df)`` of every token over ``texts`` (the project's tokens, each counted once a text)."""
    frequency = Counter(token for text in texts for token in set(tokenize(text)))
    return {token: math.log(len(texts) / count) for token, count in frequency.items()}


def keyword_query(text: str, idf: dict[str, float], rng: random.Random) -> str | None:
    """3 to 6 distinct words of ``text`` drawn by IDF weight, in the text's order; None if it has too few."""
    words = list(dict.fromkeys(tokenize(text)))
    weights = [idf.get(word, 0.0) for word in words]
    usable = sum(weight > 0 for weight in weights)
    if usable < 3:
        return None
    count = rng.randint(3, min(6, usable))
    chosen: set[str] = set()
    while len(chosen) < count:  # weighted draws without replacement (a passage has tens of words)
        chosen.add(rng.choices(words, weights)[0])
    return " ".join(word for word in words if word in chosen)


def _cloze_split(text: str, rng: random.Random, max_query_words: int) -> tuple[str, str, bool]:
    """(pseudo-query, the rest of the passage, whether the query is a sentence)."""
    sentences = [s for s in _SENTENCE_END.split(text.strip()) if s]
    if len(sentences) >= 2:
        chosen = rng.randrange(len(sentences))
        words = sentences[chosen].split()
        if len(words) > max_query_words:
            start = rng.randrange(len(words) - max_query_words + 1)
            words = words[start:start + max_query_words]
        rest = " ".join(s for i, s in enumerate(sentences) if i != chosen)
        return " ".join(words), rest, True
    words = text.split()
    length = min(max(3, len(words) // 4), max_query_words)
    start = rng.randrange(len(words) - length + 1)
    return " ".join(words[start:start + length]), " ".join(words[:start] + words[start + length:]), False


def triplets_prefix(sample_size: int) -> str:
    """``msmarco_triplets_<N>k``: N is the sample size in thousands, rounded to the nearest, and at least 1.

    The name says the scale (``1k`` for 53 queries as for 1,200; ``50k`` for 50,000), not the count: that is in
    the metadata (``queries_read``, ``num_triplets``). A fraction like ``0.053k`` read as a typo.
    """
    return f"msmarco_triplets_{max(1, (sample_size + 500) // 1000)}k"


TRIPLETS_OUTPUT = OutputKind("triplets file", recognise_tagged(KIND_TRIPLETS))
# the fields every triplets metadata JSON holds (``driver.triplets.run``)
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
