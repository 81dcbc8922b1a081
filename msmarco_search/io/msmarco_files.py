"""The MS MARCO files read as they are: collection, queries, qrels and candidates, through one TSV reader.

``iter_tsv_lines`` is the one TSV reader of the project; ``read_collection``, ``read_queries``, ``read_qrels`` and
``read_candidates`` read the official passage-ranking files with it (evaluation reads them without any source).

Official TSV layout: ``collection.tsv`` (pid, text), ``queries.<split>.tsv`` (qid, text), qrels in TREC form
(``qid 0 pid rel``) and optionally a candidates file in the ``top1000`` layout (qid, pid, query, passage).
"""

from __future__ import annotations

import difflib
import functools
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, overload

from msmarco_search.core.errors import PipelineError, short
from msmarco_search.core.report import info
from msmarco_search.core.text import tokenize
from msmarco_search.io.textfiles import TEXT_ERRORS, check_text_head, decode_text, nul_error


def check_readable(path: Path) -> None:
    try:
        if not path.is_file():
            raise PipelineError("not a file" if path.exists() else f"file not found{nearby(path)}", path)
        if path.stat().st_size == 0:
            raise PipelineError("file is empty", path)
    except OSError as error:
        raise PipelineError(f"cannot read ({error.strerror or error})", path) from error


# ---------------------------------------------------------------------------------------------- TSV layout


_HEAD_BYTES = 1 << 20  # enough to hold the first line of any MS MARCO file
_BOM = b"\xef\xbb\xbf"


@overload
def iter_tsv_lines(path: str | Path, columns: int, what: str = ..., *, with_offsets: Literal[False] = ...,
                   unique: str | None = ..., key_columns: int = ..., ids: tuple[str, ...] = ...
                   ) -> Iterator[list[str]]: ...
@overload
def iter_tsv_lines(path: str | Path, columns: int, what: str = ..., *, with_offsets: Literal[True],
                   unique: str | None = ..., key_columns: int = ..., ids: tuple[str, ...] = ...
                   ) -> Iterator[tuple[int, list[str]]]: ...


def iter_tsv_lines(path: str | Path, columns: int, what: str = "tab-separated", *, with_offsets: bool = False,
                   unique: str | None = None, key_columns: int = 1, ids: tuple[str, ...] = ()) -> Iterator[Any]:
    """The fields of each line of a tab-separated file, streamed: the one TSV reader of the project.

    One rule for every TSV (collection, queries, candidates, triples):

    - a line has ``columns`` fields; **extra tabs stay in the last field**, which in every MS MARCO layout is
      free text (a passage, a query, a negative), so a tab inside a text can only belong to that text;
      a line with fewer fields is refused (``line N has K tab-separated field(s), a WHAT file needs C``);
    - lines end with LF or CRLF; a CR inside a line stays in its text; a file with CR-only line ends (which
      would read as one line) is refused with the remedy; blank lines are skipped; a UTF-8 byte-order mark
      is dropped; bytes that are not UTF-8 are read as Windows-1252 (``textfiles``: a Latin-1 file reads
      right); a file that is not text (UTF-16, compressed, binary, a NUL byte on any line) is refused;
    - ``ids`` names the leading fields that are ids (``("query id", "passage id")``): an id must be printable
      text, not empty, without control characters or separators other than the plain space;
    - with ``unique`` (what the key is called, e.g. ``"query id"``), a line whose first ``key_columns``
      fields repeat an earlier line's is refused, naming the id and both lines (memory grows with the ids,
      so callers that stream 8.8M passages without keeping them leave it off).

    ``with_offsets=True`` yields ``(byte offset of the line, fields)``: the file is read as bytes, so that a
    seek to the offset and one ``readline()`` get the line back (what a search index stores per passage).
    """
    path = Path(path)
    check_readable(path)  # here, not at the first row: a missing file is named when the reader is made
    bom = _check_tsv_head(path)
    layout = _Layout(path, columns, what, ids)
    # one loop per mode and no wrapper unless repeats are checked: this streams the 8.8M-passage collection
    rows = (_offset_rows if with_offsets else _text_rows)(layout, bom)
    return _refuse_repeats(rows, path, unique, key_columns, with_offsets) if unique else rows


@dataclass
class _Layout:
    """What a TSV's lines must hold: ``columns`` fields, of which the first ``len(ids)`` are ids."""

    path: Path
    columns: int
    what: str
    ids: tuple[str, ...]

    def check(self, number: int, fields: list[str]) -> None:
        """Refuse a line of too few fields; an id that is empty or not printable."""
        if len(fields) < self.columns:
            raise PipelineError(f"line {number} has {len(fields)} tab-separated field(s), a {self.what} file "
                                f"needs {self.columns}", self.path)
        for name, value in zip(self.ids, fields, strict=False):
            if not value or not value.isprintable():
                raise PipelineError(f"line {number}: {bad_id(name, value)}", self.path)


_CHARACTER_NAMES = {"\t": "a tab", "\n": "a line break", "\r": "a carriage return", "\x00": "a NUL byte"}


def bad_id(name: str, value: str) -> str:
    """Why ``value`` is not an id (empty, or holding a tab, line break, NUL or other character that is not
    printable), for a message: a TSV line, a TREC run or a passage file written from it would read it as
    another id."""
    if not value:
        return f"the {name} is empty"
    odd = next(c for c in value if not c.isprintable())
    what = _CHARACTER_NAMES.get(odd) or f"U+{ord(odd):04X} ({unicodedata.name(odd, 'a control character')})"
    return (f"the {name} {short(repr(value), 60)} holds {what}; an id is printable text (no tab, line break or "
            "control character)")


def _open(path: Path, binary: bool) -> Any:
    try:
        return open(path, "rb") if binary else open(path, encoding="utf-8", errors=TEXT_ERRORS, newline="\n")
    except OSError as error:
        raise PipelineError(f"cannot read ({error.strerror or error})", path) from error


# A passage, query or judgment is a few KB (an MS MARCO document under 4 MB): a longer line is no such row, and
# tokenising it takes ~25 times its size in memory (a file without line breaks would be read whole as one line)
MAX_LINE = 16 * 2**20


def bounded_lines(handle: Any, path: Path) -> Iterator[tuple[int, Any]]:
    """``(number, line)`` of each line of ``handle`` (text or bytes), never reading more than ``MAX_LINE`` of
    one: a longer line is refused."""
    for number, line in enumerate(iter(functools.partial(handle.readline, MAX_LINE + 1), handle.read(0)), 1):
        if len(line) > MAX_LINE:
            raise PipelineError(f"line {number} is longer than {MAX_LINE // 2**20} MiB, which no passage, query or "
                                "judgment is (a file without line breaks?)", path)
        yield number, line


def _text_rows(layout: _Layout, bom: bool) -> Iterator[list[str]]:
    columns, first, second = layout.columns, len(layout.ids) > 0, len(layout.ids) > 1  # ids: the checks inline
    with _open(layout.path, binary=False) as handle:
        if bom:  # the mark is not part of the first id
            handle.read(1)
        for number, line in bounded_lines(handle, layout.path):
            line = line.rstrip("\r\n")
            if line:
                if "\x00" in line:
                    raise nul_error(layout.path, number)
                fields = line.split("\t", columns - 1)
                if len(fields) < columns or first and not (fields[0] and fields[0].isprintable()) or \
                        second and not (fields[1] and fields[1].isprintable()):
                    layout.check(number, fields)
                yield fields


def _offset_rows(layout: _Layout, bom: bool) -> Iterator[tuple[int, list[str]]]:
    columns, first, second = layout.columns, len(layout.ids) > 0, len(layout.ids) > 1  # ids: the checks inline
    with _open(layout.path, binary=True) as handle:
        offset = 0
        if bom:  # skipped, but counted: offsets are positions in the file
            offset = len(handle.read(len(_BOM)))
        for number, raw in bounded_lines(handle, layout.path):
            start, offset = offset, offset + len(raw)
            line = raw.rstrip(b"\r\n")
            if line:
                if 0 in line:  # a NUL byte (memchr; faster than a bytes needle)
                    raise nul_error(layout.path, number)
                fields = line.decode("utf-8", TEXT_ERRORS).split("\t", columns - 1)  # textfiles.decode_text
                if len(fields) < columns or first and not (fields[0] and fields[0].isprintable()) or \
                        second and not (fields[1] and fields[1].isprintable()):
                    layout.check(number, fields)
                yield start, fields


def _refuse_repeats(rows: Iterator[Any], path: Path, unique: str, key_columns: int, with_offsets: bool
                    ) -> Iterator[Any]:
    """The rows, until one's key repeats an earlier row's (counted in rows, not lines, to keep the loop lean;
    the lines are found again for the message)."""
    seen: dict[str, int] = {}
    for index, row in enumerate(rows, 1):
        fields = row[1] if with_offsets else row
        key = fields[0] if key_columns == 1 else " ".join(fields[:key_columns])
        first = seen.setdefault(key, index)
        if first != index:
            lines = _line_numbers(path, {index, first})
            raise PipelineError(f"line {lines[index]} repeats the {unique} {short(key)} of line {lines[first]}; "
                                "ids must be unique", path)
        yield row


def _line_numbers(path: Path, rows: set[int]) -> dict[int, int]:
    """The line number of each of the 1-based ``rows`` (non-blank lines): only for an error message."""
    found: dict[int, int] = {}
    index = 0
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            if raw.rstrip(b"\r\n"):
                index += 1
                if index in rows:
                    found[index] = number
                    if len(found) == len(rows):
                        break
    return found


def read_head(path: Path) -> bytes:
    """The first bytes of ``path``, refused if they are not UTF-8 text (``textfiles.check_text_head``)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(_HEAD_BYTES)
    except OSError as error:
        raise PipelineError(f"cannot read ({error.strerror or error})", path) from error
    check_text_head(path, head)
    return head


def _check_tsv_head(path: Path) -> bool:
    """Refuse a file that is not text, or has CR-only line ends (old Mac files would read as one huge line);
    whether the file has a UTF-8 BOM."""
    head = read_head(path)
    if b"\r" in head and b"\n" not in head:
        raise PipelineError("has CR-only line ends (old Mac style), so it would read as one line; convert them "
                            "to LF first (tr '\\r' '\\n' < old > new)", path)
    return head.startswith(_BOM)


def read_collection(path: str | Path, *, with_offsets: bool = False, unique: bool = False) -> Iterator[Any]:
    """``[pid, text]`` of each passage of a ``collection.tsv``, streamed; ``with_offsets``: ``(offset, [pid,
    text])``. ``unique``: refuse a repeated passage id (costs memory for every id: callers that keep the
    passages anyway ask for it). A collection in which no passage holds a word is refused at once."""
    rows = iter_tsv_lines(path, 2, "collection (pid<TAB>text)", with_offsets=with_offsets,
                          unique="passage id" if unique else None, ids=("passage id",))
    _require_a_word(Path(path))
    return rows


def _require_a_word(path: Path) -> None:
    """Refuse a collection in which no passage holds a word (a letter or digit: every text empty, punctuation or
    symbols), before any work: it would be indexed, ranked and evaluated as if it were text. The scan stops at
    the first passage with a word, the first line of any real collection; a line without a tab stops it too
    (the reader names that line)."""
    passages = 0
    with _open(path, binary=True) as handle:
        for raw in handle:
            _, tab, text = raw.partition(b"\t")
            if not tab:
                if raw.strip():
                    return
                continue
            passages += 1
            if tokenize(decode_text(text)):
                return
    raise PipelineError(f"holds no word: none of its {passages:,} passage(s) has a letter or digit (every text is "
                        "empty, punctuation or symbols)", path)


def read_queries(path: str | Path) -> dict[str, str]:
    """``{qid: text}`` of a queries TSV; a repeated query id is refused."""
    return {qid: text for qid, text in iter_tsv_lines(path, 2, "queries (qid<TAB>text)", unique="query id",
                                                      ids=("query id",))}


def queries_with_words(queries: dict[str, str], where: str | Path | None = None) -> dict[str, str]:
    """``queries`` less those without a single token (empty, or only punctuation and symbols): no system can
    rank them, so their hits would be arbitrary passages (a million empty lines would make a run of hundreds of
    MB of them). The count left out is said (``skipped N empty queries``); if none is left, an error."""
    kept = {qid: text for qid, text in queries.items() if tokenize(text)}
    skipped = len(queries) - len(kept)
    if queries and not kept:
        raise PipelineError(f"none of its {len(queries):,} queries has a word to search for", where)
    if skipped:
        prefix = f"{where}: " if where is not None else ""
        info(f"{prefix}skipped {skipped:,} empty {'query' if skipped == 1 else 'queries'} (no word to search for)")
    return kept


_GRADE = re.compile(r"[+-]?[0-9]+")
MAX_GRADE = 2**31 - 1  # pytrec_eval keeps grades in a C int


def read_qrels(path: str | Path) -> dict[str, dict[str, int]]:
    """TREC qrels ``qid 0 pid rel`` (whitespace-separated) as ``{qid: {pid: rel}}``.

    Negative grades (TREC Web tracks: -1 junk, -2 spam) mean judged and not relevant: they are read as 0,
    as trec_eval counts them (pytrec_eval crashes on them). A grade above 2**31 - 1 is refused, and so is a
    second judgment of the same query and passage (which one would count is arbitrary).
    """
    path = Path(path)
    check_readable(path)
    read_head(path)
    qrels: dict[str, dict[str, int]] = {}
    try:  # universal newlines: CR-only files work too; -sig: a byte-order mark is dropped
        handle = open(path, encoding="utf-8-sig", errors=TEXT_ERRORS)
    except OSError as error:
        raise PipelineError(f"cannot read ({error.strerror or error})", path) from error
    with handle:
        for number, line in bounded_lines(handle, path):
            if "\x00" in line:
                raise nul_error(path, number)
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 4:
                raise PipelineError(f"line {number} is not a qrels line (qid 0 pid relevance)", path)
            qid, _, pid, grade = fields
            for name, value in (("query id", qid), ("passage id", pid)):
                if not value.isprintable():
                    raise PipelineError(f"line {number}: {bad_id(name, value)}", path)
            if not _GRADE.fullmatch(grade):
                raise PipelineError(f"line {number}: relevance {short(grade)!r} is not an integer", path)
            if len(grade.lstrip("+-").lstrip("0")) > 12:  # int() refuses over 4,300 digits with a bare ValueError
                value = 0 if grade.startswith("-") else MAX_GRADE + 1
            else:
                value = max(int(grade), 0)
            if value > MAX_GRADE:
                raise PipelineError(f"line {number}: relevance {short(grade)} is too large (at most {MAX_GRADE})",
                                    path)
            judged = qrels.setdefault(qid, {})
            if pid in judged:
                raise PipelineError(f"line {number} judges passage {short(pid)} for query {short(qid)} a second "
                                    "time; each pair must be judged once", path)
            judged[pid] = value
    return qrels


def read_candidates(path: str | Path) -> Iterator[list[str]]:
    """``[qid, pid, query, passage]`` rows of a ``top1000``-layout file, streamed; a repeated (qid, pid) pair
    is refused."""
    return iter_tsv_lines(path, 4, "candidates (qid<TAB>pid<TAB>query<TAB>passage)", unique="query and passage id",
                          key_columns=2, ids=("query id", "passage id"))


def folder_contents(folder: Path, near: str = "", limit: int = 8) -> str:
    """``; FOLDER holds a, b, c`` for a message (the names most like ``near`` first), or that it is empty."""
    try:
        names = [entry.name + ("/" if entry.is_dir() else "") for entry in folder.iterdir()]
    except OSError:
        return ""
    if not names:
        return f"; {folder} is empty"
    names.sort(key=lambda name: (-difflib.SequenceMatcher(None, near, name).ratio(), name) if near else name)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return f"; {folder} holds {', '.join(names[:limit])}{more}"


def nearby(path: Path) -> str:
    """What the folder of a path that is not there holds, the names most like it first, for a message."""
    return folder_contents(path.parent, path.name) if path.parent.is_dir() else ""
