"""Stage 2: (query, relevant passage, non-relevant passage) triplets, and their file.

For each query with a selected passage, every selected passage is a positive, paired with one negative:
``hard`` takes an unselected passage of the same query, ``random`` a passage of another query, ``mixed``
either with equal odds. A negative is never a passage whose text equals one of the query's positives.

The file is a pickle of plain lists of strings (columns), so it loads through ``checkpoints.load_pickle``,
which refuses every global.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checkpoints import KIND_TRIPLETS, load_pickle, save_pickle
from .errors import PipelineError
from .report import progress
from .sources import Passage, QueryRecord

NEGATIVE_STRATEGIES = ("hard", "random", "mixed")
COLUMNS = ("query_ids", "queries", "positive_ids", "positives", "negative_ids", "negatives")


@dataclass
class Triplets:
    query_ids: list[str] = field(default_factory=list)
    queries: list[str] = field(default_factory=list)
    positive_ids: list[str] = field(default_factory=list)
    positives: list[str] = field(default_factory=list)
    negative_ids: list[str] = field(default_factory=list)
    negatives: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.queries)

    def append(self, record: QueryRecord, positive: Passage, negative: Passage) -> None:
        self.query_ids.append(record.query_id)
        self.queries.append(record.query)
        self.positive_ids.append(positive.pid)
        self.positives.append(positive.text)
        self.negative_ids.append(negative.pid)
        self.negatives.append(negative.text)

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


def triplets_prefix(sample_size: int) -> str:
    """``msmarco_triplets_<N>k``: N is the sample size in thousands (``0.5k`` below 1,000)."""
    size = f"{sample_size // 1000}k" if sample_size % 1000 == 0 else f"{sample_size / 1000:g}k"
    return f"msmarco_triplets_{size}"


def metadata_path(triplets_path: str | Path) -> Path:
    path = Path(triplets_path)
    return path.with_name(path.name[: -len(".pkl")] + "_metadata.json" if path.name.endswith(".pkl")
                          else path.name + "_metadata.json")


def save_triplets(triplets: Triplets, path: str | Path, metadata: dict[str, Any]) -> Path:
    return save_pickle({**triplets.columns(), "metadata": metadata}, path, KIND_TRIPLETS)


def load_triplets(path: str | Path) -> Triplets:
    data = load_pickle(path, KIND_TRIPLETS)
    columns = {}
    for name in COLUMNS:
        column = data.get(name)
        if not isinstance(column, list) or not all(isinstance(x, str) for x in column):
            raise PipelineError(f"triplets file has no list of strings {name!r}", path)
        columns[name] = column
    if len({len(c) for c in columns.values()}) != 1:
        raise PipelineError("triplets file columns differ in length", path)
    if not columns["queries"]:
        raise PipelineError("triplets file holds no triplets", path)
    return Triplets(**columns)
