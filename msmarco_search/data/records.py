"""What every source yields: query records (``QueryRecord``: a query and its passages) and the ``Source``
interface.

Every source yields the same records to the stages: ``QueryRecord(query_id, query, passages)`` where each
passage has an id, a text and whether it was judged relevant (``is_selected``). A source also yields the raw
texts a CBOW model learns from (``corpus_texts``) and a fingerprint (``identity``) that caches are keyed on.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice

from msmarco_search.core.errors import PipelineError
from msmarco_search.core.text import tokenize


@dataclass
class Passage:
    pid: str
    text: str
    is_selected: bool


@dataclass
class QueryRecord:
    query_id: str
    query: str
    passages: list[Passage] = field(default_factory=list)

    @property
    def positives(self) -> list[Passage]:
        return [p for p in self.passages if p.is_selected]

    @property
    def non_selected(self) -> list[Passage]:
        return [p for p in self.passages if not p.is_selected]


def text_id(text: str) -> str:
    """A stable passage id for sources that give none (hub rows): identical texts share it."""
    return "h" + hashlib.blake2b(text.encode("utf-8"), digest_size=8).hexdigest()


class Source(ABC):
    """A readable MS MARCO source. ``has_candidates``: whether records carry non-relevant passages."""

    description: str
    has_candidates: bool = True

    @abstractmethod
    def records(self, max_samples: int | None = None) -> Iterator[QueryRecord]:
        """Query records in source order, at most ``max_samples`` of them."""

    def passages(self, max_passages: int | None = None) -> Iterator[tuple[str, str]]:
        """``(pid, text)`` of each distinct passage of the records, at most ``max_passages`` of them; passages
        none of which holds a word are refused once they are all read."""
        count, worded = 0, False
        for pid, text in islice(self._distinct_passages(), max_passages):
            count += 1
            worded = worded or bool(tokenize(text))
            yield pid, text
        if count and not worded:
            raise PipelineError(f"{self.description}: holds no word: none of its {count:,} passage(s) has a letter "
                                "or digit (every text is empty, punctuation or symbols)")

    def _distinct_passages(self) -> Iterator[tuple[str, str]]:
        seen: set[str] = set()
        for record in self.records():
            for passage in record.passages:
                if passage.pid not in seen:
                    seen.add(passage.pid)
                    yield passage.pid, passage.text

    def corpus_texts(self, max_samples: int | None = None) -> Iterator[str]:
        """Texts to learn word vectors from: each query, and each distinct passage once."""
        seen: set[str] = set()
        for record in self.records(max_samples):
            yield record.query
            for passage in record.passages:
                if passage.pid not in seen:
                    seen.add(passage.pid)
                    yield passage.text

    @abstractmethod
    def identity(self) -> str:
        """A string that changes whenever the data behind the source changes (cache keys use it)."""


def check_max_samples(max_samples: int | None) -> None:
    if max_samples is not None and max_samples <= 0:
        raise PipelineError(f"--max-samples must be a positive number, got {max_samples}")
