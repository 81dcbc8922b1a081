"""Sources in the row layout: local ``.jsonl``/``.json``/``.parquet`` files and ``datasets.save_to_disk`` folders.

Row layout (the hub's, ``.jsonl``/``.json``/``.parquet``, ``datasets.save_to_disk`` folders)::

    query, query_id, query_type, passages{is_selected, passage_text, url}, answers, wellFormedAnswers

Each row's values are checked as it is read: a value of the wrong type is refused, never converted.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from msmarco_search.core.errors import PipelineError, first_line, short
from msmarco_search.data.records import Passage, QueryRecord, Source, check_max_samples, text_id
from msmarco_search.io.atomic import file_identity
from msmarco_search.io.msmarco_files import bad_id, bounded_lines, check_readable, read_head
from msmarco_search.io.safe_load import JSONNumberError, parse_json
from msmarco_search.io.textfiles import TEXT_ERRORS

ROW_SUFFIXES = (".jsonl", ".json", ".parquet")


# ---------------------------------------------------------------------------------------------- row layout


_JSON_KIND = {bool: "true/false", int: "number", float: "number", str: "string", list: "list", dict: "object",
              type(None): "null"}


def _kind(value: Any) -> str:
    return _JSON_KIND.get(type(value), type(value).__name__)


def _described(value: Any) -> str:
    """What a value is, for a message: ``string '0'``, ``number 2``, ``null``."""
    return "null" if value is None else f"{_kind(value)} {short(repr(value), 40)}"


def _record_from_row(row: dict[str, Any], where: str) -> QueryRecord:
    """One row as a record, its values checked: a value of the wrong type is refused, never converted (a
    string "0" would be truthy, a null text would become the passage "None")."""
    if not isinstance(row, dict):
        raise PipelineError(f"row is a JSON {_kind(row)}, not an object in the MS MARCO row layout", where)
    try:
        query = row["query"]
        passages = row["passages"]
        selected = passages["is_selected"]
        texts = passages["passage_text"]
    except (KeyError, TypeError) as error:
        raise PipelineError(
            f"row is not in the MS MARCO row layout (needs query and passages{{is_selected, passage_text}}; "
            f"missing {error})", where) from error
    if not isinstance(query, str) or not isinstance(texts, list) or not isinstance(selected, list):
        raise PipelineError("row is not in the MS MARCO row layout (query must be text, passages lists)", where)
    if len(selected) != len(texts):
        raise PipelineError("passages.is_selected and passages.passage_text differ in length", where)
    _check_items(texts, (str,), "passages.passage_text", "text", where)
    # 0/1 as MS MARCO writes them, or true/false; bool is an int, so 1 and True both pass
    _check_items(selected, (int,), "passages.is_selected", "0 or 1", where, allowed=(0, 1))
    ids = row.get("passage_ids") or passages.get("passage_id")
    if not ids:  # none given (or an empty list): identical texts share an id
        ids = [text_id(t) for t in texts]
    elif not isinstance(ids, list) or len(ids) != len(texts):
        raise PipelineError("passage ids must be a list as long as passages.passage_text", where)
    else:
        _check_items(ids, (str, int), "passage ids", "text or a whole number", where)
        for index, pid in enumerate(ids):
            if isinstance(pid, str) and not (pid and pid.isprintable()):
                raise PipelineError(f"passage {index + 1}: {bad_id('passage id', pid)}", where)
    query_id = row.get("query_id")
    if query_id is not None and (isinstance(query_id, bool) or not isinstance(query_id, (str, int))):
        raise PipelineError(f"query_id is {_described(query_id)}, expected text or a whole number", where)
    if isinstance(query_id, str) and not (query_id and query_id.isprintable()):
        raise PipelineError(bad_id("query id", query_id), where)
    return QueryRecord(
        query_id=str(query_id) if query_id is not None else text_id(query),
        query=query,
        passages=[Passage(str(pid), text, bool(sel)) for pid, text, sel in zip(ids, texts, selected, strict=True)],
    )


def records_from_rows(rows: Iterable[tuple[Any, str]], max_samples: int | None) -> Iterator[QueryRecord]:
    """Records of rows, at most ``max_samples``; a repeated query id is refused (keeping either row would
    silently drop the other's passages, and evaluation would score the query once, training twice)."""
    seen: dict[str, str] = {}
    for count, (row, where) in enumerate(rows, 1):
        record = _record_from_row(row, where)
        first = seen.setdefault(record.query_id, where)
        if first != where:
            raise PipelineError(f"repeats query id {short(record.query_id)} of {first}; ids must be unique", where)
        yield record
        if max_samples is not None and count >= max_samples:
            return


def _check_items(values: list[Any], types: tuple[type, ...], name: str, expected: str, where: str,
                 allowed: tuple[Any, ...] | None = None) -> None:
    """Refuse the first item of ``values`` that is not one of ``types`` (bools count only where ints are
    meant to be 0/1), or not in ``allowed``; names the item's position and what it is."""
    try:  # the common case in C, without a Python loop over every passage of every row
        if set(map(type, values)) <= set(types) and (allowed is None or set(values) <= set(allowed)):
            return
    except TypeError:  # an unhashable value (a list or dict where a 0/1 belongs): found below
        pass
    for index, value in enumerate(values):
        good = isinstance(value, types) and (allowed is None or value in allowed) and \
            not (isinstance(value, bool) and allowed is None)
        if not good:
            raise PipelineError(f"{name}[{index}] is {_described(value)}, expected {expected}", where)


class RowFileSource(Source):
    """Local files in the row layout: ``.jsonl``, ``.json`` (lines or one list) or ``.parquet``."""

    def __init__(self, paths: list[Path]):
        self.paths = paths
        self.description = ", ".join(str(p) for p in paths)

    def identity(self) -> str:
        return "rows|" + "|".join(file_identity(p) for p in self.paths)

    def records(self, max_samples: int | None = None) -> Iterator[QueryRecord]:
        check_max_samples(max_samples)
        yield from records_from_rows((pair for path in self.paths for pair in self._rows(path)), max_samples)

    def _rows(self, path: Path) -> Iterator[tuple[dict[str, Any], str]]:
        check_readable(path)
        if path.suffix == ".parquet":
            yield from self._parquet_rows(path)
            return
        read_head(path)
        try:  # -sig: a byte-order mark is dropped; bytes that are not UTF-8 are read as Windows-1252
            handle = open(path, encoding="utf-8-sig", errors=TEXT_ERRORS)
        except OSError as error:
            raise PipelineError(f"cannot read ({error.strerror or error})", path) from error
        with handle:
            first = handle.read(1)
            while first and first.isspace():
                first = handle.read(1)
            handle.seek(0)
            if first == "[":
                try:
                    rows = parse_json(handle.read())
                except (json.JSONDecodeError, RecursionError) as error:
                    raise PipelineError(f"not valid JSON ({first_line(error)})", path) from error
                except JSONNumberError as error:
                    raise PipelineError(f"holds a number out of range: {error}", path) from error
                for number, row in enumerate(rows, 1):
                    yield row, f"{path} (row {number})"
                return
            for number, line in bounded_lines(handle, path):
                if not line.strip():
                    continue
                try:
                    row = parse_json(line)
                except JSONNumberError as error:
                    raise PipelineError(f"line {number} holds a number out of range: {error}", path) from error
                except json.JSONDecodeError as error:
                    raise PipelineError(f"line {number} is not valid JSON ({error.msg}); truncated or not "
                                        "JSON lines?", path) from error
                except RecursionError as error:
                    raise PipelineError(f"line {number} is nested too deeply to be a row", path) from error
                yield row, f"{path} (line {number})"

    @staticmethod
    def _parquet_rows(path: Path) -> Iterator[tuple[dict[str, Any], str]]:
        import pyarrow
        import pyarrow.parquet as pq  # installed with datasets

        number = 0
        try:
            parquet = pq.ParquetFile(path)
            batches = parquet.iter_batches(batch_size=1024)
            while True:
                try:
                    batch = next(batches)
                except StopIteration:
                    return
                rows = batch.to_pylist()
                for row in rows:
                    number += 1
                    yield row, f"{path} (row {number})"
        except (OSError, ValueError, TypeError, NotImplementedError, pyarrow.ArrowException) as error:
            # pyarrow raises ArrowInvalid (a ValueError), ArrowIOError (an OSError) and others on bad files
            raise PipelineError(f"not a readable parquet file ({first_line(error)})", path) from error


class DatasetsDiskSource(Source):
    """A folder written by ``datasets.Dataset.save_to_disk`` (or a ``DatasetDict`` of splits)."""

    def __init__(self, path: Path, split: str, split_given: bool = False):
        self.path = path
        self.split, self.split_given = split, split_given
        self.description = f"{path} (datasets folder)"

    def identity(self) -> str:
        files = sorted(p for p in self.path.rglob("*") if p.is_file())
        return "disk|" + self.split + "|" + "|".join(file_identity(p) for p in files)

    def records(self, max_samples: int | None = None) -> Iterator[QueryRecord]:
        import datasets

        check_max_samples(max_samples)
        try:
            data = datasets.load_from_disk(str(self.path))
        except Exception as error:  # noqa: BLE001 - a damaged folder fails in arrow, json or fsspec code
            raise PipelineError(f"not a readable datasets folder ({first_line(error)})", self.path) from error
        if isinstance(data, datasets.DatasetDict):
            if self.split in data:
                data = data[self.split]
            elif len(data) == 1 and not self.split_given:  # a default split: the folder's one split is meant
                data = next(iter(data.values()))
            else:
                raise PipelineError(f"has no split {self.split!r} (it has {', '.join(data)})", self.path)
        elif self.split_given and data.split is not None and str(data.split) != self.split:
            raise PipelineError(f"holds the {data.split} split, not {self.split!r}: leave --split out, or give the "
                                f"folder of the {self.split} split", self.path)
        missing = {"query", "passages"} - set(data.column_names)
        if missing:
            raise PipelineError(f"is not in the MS MARCO row layout (no column {', '.join(sorted(missing))}; it has "
                                f"{', '.join(data.column_names)})", self.path)
        rows = ((row, f"{self.path} (row {number})") for number, row in enumerate(data, 1))
        yield from records_from_rows(rows, max_samples)
