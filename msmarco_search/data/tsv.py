"""The official passage-ranking TSVs as a source, and how a folder's files are sorted by kind and split.

Official TSV layout: ``collection.tsv`` (pid, text), ``queries.<split>.tsv`` (qid, text), qrels in TREC form
(``qid 0 pid rel``) and optionally a candidates file in the ``top1000`` layout (qid, pid, query, passage).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from msmarco_search.core.errors import PipelineError, short
from msmarco_search.data.records import Passage, QueryRecord, Source, check_max_samples
from msmarco_search.io.atomic import file_identity
from msmarco_search.io.msmarco_files import read_candidates, read_collection, read_qrels, read_queries

TSV_SUFFIXES = (".tsv", ".txt", ".trec", "")


@dataclass
class TsvFiles:
    collection: Path | None = None
    queries: Path | None = None
    qrels: Path | None = None
    candidates: Path | None = None


class TsvSource(Source):
    """The official passage-ranking files. Relevant = qrels grade >= ``min_relevance``.

    Records are the judged queries with at least one relevant passage. Their passages are the candidates
    (when a candidates file is given) plus the relevant passages; without candidates they hold the relevant
    passages only, and ``has_candidates`` is False.
    """

    def __init__(self, files: TsvFiles, min_relevance: int = 1):
        self.files = files
        self.min_relevance = min_relevance
        self.has_candidates = files.candidates is not None
        named = [f"{k}={v}" for k, v in vars(files).items() if v is not None]
        self.description = "TSV files: " + ", ".join(named)

    def identity(self) -> str:
        parts = [file_identity(p) for p in vars(self.files).values() if p is not None]
        return f"tsv|{self.min_relevance}|" + "|".join(parts)

    def passages(self, max_passages: int | None = None) -> Iterator[tuple[str, str]]:
        """The collection as it is (the first ``max_passages``), or the records' passages without one."""
        if self.files.collection is None:
            yield from super().passages(max_passages)
            return
        for number, pair in enumerate(read_collection(self.files.collection), 1):
            yield pair
            if max_passages is not None and number >= max_passages:
                return

    def corpus_texts(self, max_samples: int | None = None) -> Iterator[str]:
        """The collection's passages (the first ``max_samples``) and every query text."""
        check_max_samples(max_samples)
        if self.files.collection is None:
            yield from super().corpus_texts(max_samples)
            return
        if self.files.queries is not None:
            yield from read_queries(self.files.queries).values()
        for number, (_, text) in enumerate(read_collection(self.files.collection), 1):
            yield text
            if max_samples is not None and number >= max_samples:
                return

    def records(self, max_samples: int | None = None) -> Iterator[QueryRecord]:
        check_max_samples(max_samples)
        if self.files.qrels is None:
            raise PipelineError("the TSV source has no qrels file, so no query has a relevant passage; "
                                "name a qrels file (qrels.<split>.tsv) too")
        qrels = read_qrels(self.files.qrels)
        queries = read_queries(self.files.queries) if self.files.queries else {}
        candidates: dict[str, list[tuple[str, str]]] = {}
        if self.files.candidates is not None:
            for qid, pid, query, passage in read_candidates(self.files.candidates):
                queries.setdefault(qid, query)
                candidates.setdefault(qid, []).append((pid, passage))
        order = [qid for qid in queries if any(r >= self.min_relevance for r in qrels.get(qid, {}).values())]
        if max_samples is not None:
            order = order[:max_samples]
        known_text = {pid: text for pairs in candidates.values() for pid, text in pairs}
        wanted = {pid for qid in order for pid, rel in qrels[qid].items()
                  if rel >= self.min_relevance and pid not in known_text}
        if wanted:
            if self.files.collection is None:
                raise PipelineError("relevant passages are not in the candidates file and no collection.tsv "
                                    "was given to look them up")
            for pid, text in read_collection(self.files.collection):
                if pid in wanted:
                    if pid in known_text:  # which text would be the relevant one is arbitrary
                        raise PipelineError(f"passage id {short(pid)} repeats in the collection; ids must be "
                                            "unique", self.files.collection)
                    known_text[pid] = text
        for qid in order:
            relevant = {pid for pid, rel in qrels[qid].items() if rel >= self.min_relevance}
            passages = [Passage(pid, text, pid in relevant) for pid, text in candidates.get(qid, [])]
            listed = {p.pid for p in passages}
            passages += [Passage(pid, known_text[pid], True) for pid in sorted(relevant - listed)
                         if pid in known_text]
            if any(p.is_selected for p in passages):
                yield QueryRecord(qid, queries[qid], passages)


def _classify_tsv(path: Path) -> str | None:
    name = path.name.lower()
    if "qrels" in name:
        return "qrels"
    if "topics" in name:  # before top*: topics.dl21.txt holds queries, not candidates
        return "queries"
    if name.startswith("top") or "candidates" in name or "top1000" in name or "top100" in name:
        return "candidates"
    if "collection" in name or name.startswith("corpus"):
        return "collection"
    if "queries" in name:
        return "queries"
    return None


SPLIT_KINDS = ("queries", "qrels", "candidates")  # a collection serves every split, so its name rarely has one
_VARIANT_SEPARATORS = ".-_"


def names_split(name: str, split: str) -> bool:
    """Whether a file name holds ``split`` as a whole word (case aside): ``dl21`` is in ``queries.dl21.tsv`` and
    ``qrels.dl21-passage.txt``, not in ``queries.dl2021.tsv``; ``dl2`` is in none of them."""
    pattern = rf"(?<![a-z0-9]){re.escape(split.lower())}(?![a-z0-9])"
    return bool(split) and re.search(pattern, name.lower()) is not None


def _stem(path: Path) -> str:
    name = path.name.lower()
    return name[: -len(path.suffix)] if path.suffix and path.suffix.lower() in TSV_SUFFIXES else name


def _plain(paths: list[Path]) -> Path | None:
    """The file of which the others are variants: its name, less the suffix, starts each other's name, followed
    by ``.``, ``-`` or ``_`` (``qrels.dl19-passage.txt`` beside ``qrels.dl19-passage.in-collection.txt``)."""
    for path in sorted(paths, key=lambda p: (len(p.name), p.name)):
        stem = _stem(path)
        if all(other == path or (_stem(other).startswith(stem)
                                 and _stem(other)[len(stem):len(stem) + 1] in tuple(_VARIANT_SEPARATORS))
               for other in paths):
            return path
    return None


def listing(paths: list[Path], limit: int = 8) -> str:
    names = [p.name for p in paths]
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _choose(kind: str, paths: list[Path], split: str | None, split_applies: bool, place: str, flag: str
            ) -> Path | None:
    """The one file of ``kind`` among ``paths`` (see ``tsv_files_from``), or a one-line error listing them."""
    if not paths:
        return None
    naming = [p for p in paths if split and names_split(p.name, split)]
    if not naming and split_applies and kind in SPLIT_KINDS:
        raise PipelineError(f"{flag} {split} names none of the {kind} files {place} ({listing(paths)}): give a "
                            f"{flag} that their names hold, or name the files one by one")
    chosen = naming or paths
    plain = chosen[0] if len(chosen) == 1 else _plain(chosen)
    if plain is None:
        if naming:
            found, remedy = f"name {flag} {split}", f"give a {flag} that only one of them holds"
        else:
            found = (f"and no {flag} was given to choose one" if kind in SPLIT_KINDS
                     else "and none is the plain name of the others")
            remedy = f"give the {flag} that one of their names holds" if kind in SPLIT_KINDS else "name one"
        raise PipelineError(f"{len(chosen)} {kind} files {place} {found} ({listing(chosen)}), so which one to read "
                            f"cannot be told: {remedy}, or name the files one by one")
    return plain


def tsv_files_from(paths: list[Path], split: str | None, *, split_given: bool = True, flag: str = "--split"
                   ) -> TsvFiles:
    """Sort the official TSV files (named one by one, or folders holding them) by kind, and choose one per kind.

    A split (``queries.<split>.tsv``) is a whole word of a name (``names_split``). Per kind, the files whose
    names hold ``split``; none of them, the kind's files whatever their names. Among several, the plain one
    (``_plain``: ``qrels.dl19-passage.txt`` before ``qrels.dl19-passage.in-collection.txt``); without a
    plain one, a one-line error listing them. A split the user gave (``split_given``), or a default split
    that some file's name holds, must name a file of each kind that is tied to a split (queries, qrels,
    candidates) present: ``--split dl2021`` beside ``queries.dl21.tsv`` is an error listing the files, never
    a fallback to another split. A default split no name holds leaves the files as they are: a folder with one
    file of each kind needs no ``--split``. ``flag``: the option the messages name.
    """
    found: dict[str, list[Path]] = {"collection": [], "queries": [], "qrels": [], "candidates": []}
    for path in paths:
        entries = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
        for entry in entries:
            kind = _classify_tsv(entry)
            if kind is None and not path.is_dir():
                raise PipelineError("cannot tell what this file is: name it collection*.tsv, queries*.tsv, "
                                    "qrels*, or top*/candidates* (top1000 layout)", entry)
            if kind is not None and entry.suffix in TSV_SUFFIXES:
                found[kind].append(entry)
            elif kind is not None and not path.is_dir():
                what = "is compressed; decompress it first" if entry.suffix in (".gz", ".bz2", ".xz", ".zst",
                                                                                ".zip", ".tar") else \
                    f"has suffix {entry.suffix!r}; the {kind} file must be .tsv, .txt or .trec"
                raise PipelineError(what, entry)
    place = f"in {paths[0]}" if len(paths) == 1 and paths[0].is_dir() else "given"
    named = any(names_split(p.name, split) for kind in SPLIT_KINDS for p in found[kind]) if split else False
    applies = bool(split) and (split_given or named)
    return TsvFiles(**{kind: _choose(kind, found[kind], split, applies, place, flag) for kind in found})
