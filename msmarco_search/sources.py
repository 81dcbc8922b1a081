"""Where MS MARCO comes from: the Hugging Face hub, local row files, or the official passage-ranking TSVs.

Every source yields the same records to the stages: ``QueryRecord(query_id, query, passages)`` where each
passage has an id, a text and whether it was judged relevant (``is_selected``). A source also yields the raw
texts a CBOW model learns from (``corpus_texts``) and a fingerprint (``identity``) that caches are keyed on.

Row layout (hub, ``.jsonl``/``.json``/``.parquet``, ``datasets.save_to_disk`` folders)::

    query, query_id, query_type, passages{is_selected, passage_text, url}, answers, wellFormedAnswers

Official TSV layout: ``collection.tsv`` (pid, text), ``queries.<split>.tsv`` (qid, text), qrels in TREC form
(``qid 0 pid rel``) and optionally a candidates file in the ``top1000`` layout (qid, pid, query, passage).
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import http.client
import json
import os
import re
import unicodedata
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Literal, overload

from .errors import PipelineError, first_line, short
from .fileio import JSONNumberError, atomic_write, cached_record, file_identity, parse_json, save_cache_record
from .report import info, progress
from .text import tokenize
from .textfiles import TEXT_ERRORS, check_text_head, decode_text, nul_error

HUB_DATASET = "microsoft/ms_marco"
HUB_CONFIGS = ("v1.1", "v2.1")
HUB_SPLITS = ("train", "validation", "test")  # the same three in both configs
ROW_SUFFIXES = (".jsonl", ".json", ".parquet")
TSV_SUFFIXES = (".tsv", ".txt", ".trec", "")
HUB_PROBE_TIMEOUT = 5.0  # seconds; datasets itself retries for ~25 s before it gives up


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


def _check_max_samples(max_samples: int | None) -> None:
    if max_samples is not None and max_samples <= 0:
        raise PipelineError(f"--max-samples must be a positive number, got {max_samples}")


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


def _records_from_rows(rows: Iterable[tuple[Any, str]], max_samples: int | None) -> Iterator[QueryRecord]:
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
        _check_max_samples(max_samples)
        yield from _records_from_rows((pair for path in self.paths for pair in self._rows(path)), max_samples)

    def _rows(self, path: Path) -> Iterator[tuple[dict[str, Any], str]]:
        _check_readable(path)
        if path.suffix == ".parquet":
            yield from self._parquet_rows(path)
            return
        _read_head(path)
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

        _check_max_samples(max_samples)
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
        yield from _records_from_rows(rows, max_samples)


class HubSource(Source):
    """``microsoft/ms_marco`` from the Hugging Face hub, cached under ``data_dir``.

    Without ``max_samples`` the whole split is downloaded and prepared by ``datasets`` (and cached there).
    With it, and no full copy cached, the first ``max_samples`` rows are streamed (``streaming=True``: v2.1's
    train split is 808K rows, its download gigabytes, where 1,000 rows are a few MB) and kept in
    ``data_dir/<dataset>_stream/<config>/<split>.jsonl``, which serves any later run asking for as many rows or
    fewer, without the network. Either way the records are the split's first rows, in its order.
    """

    def __init__(self, config: str, split: str, data_dir: Path):
        if config not in HUB_CONFIGS:
            raise PipelineError(f"unknown MS MARCO config {config!r} (use one of {', '.join(HUB_CONFIGS)})")
        if split not in HUB_SPLITS:  # before any download: datasets would fail only after reaching the hub
            raise PipelineError(f"{HUB_DATASET} has no split {split!r} (it has {', '.join(HUB_SPLITS)})")
        self.config, self.split, self.data_dir = config, split, Path(data_dir)
        self.description = f"{HUB_DATASET} {config} [{split}] (hub, cached in {data_dir})"

    def identity(self) -> str:
        return f"hub|{HUB_DATASET}|{self.config}|{self.split}"

    def records(self, max_samples: int | None = None) -> Iterator[QueryRecord]:
        _check_max_samples(max_samples)
        if max_samples is not None and not self.cached():
            yield from RowFileSource([self._streamed_rows(max_samples)]).records(max_samples)
            return
        rows = ((row, f"{HUB_DATASET} {self.config} {self.split} (row {number})")
                for number, row in enumerate(self._load(), 1))
        yield from _records_from_rows(rows, max_samples)

    def cached(self) -> bool:
        """Whether ``datasets`` has a copy of this config in ``data_dir`` (usable with HF_HUB_OFFLINE=1)."""
        return (self.data_dir / HUB_DATASET.replace("/", "___") / self.config).is_dir()

    @property
    def stream_cache(self) -> Path:
        """The first rows of the split read by streaming, as JSON lines (``<split>.json`` describes them)."""
        return self.data_dir / f"{HUB_DATASET.replace('/', '___')}_stream" / self.config / f"{self.split}.jsonl"

    def _stream_cache_rows(self) -> tuple[int, bool]:
        """(rows in the stream cache, whether they are the whole split); (0, False) when there is none, or its
        record (``<split>.json``, written after it) does not describe it (``fileio.cached_record``)."""
        record = cached_record(self.stream_cache)
        if record is None or record.get("source") != self.identity():
            return 0, False  # none, damaged, or another split's: stream again, which rewrites both
        try:
            return int(record["rows"]), bool(record["complete"])
        except (KeyError, TypeError, ValueError, OverflowError):
            return 0, False

    def _streamed_rows(self, max_samples: int) -> Path:
        """The stream cache, holding at least the split's first ``max_samples`` rows (streamed if it did not)."""
        rows, complete = self._stream_cache_rows()
        if rows >= max_samples or complete:
            return self.stream_cache
        offline = offline_mode_variable()
        if offline is not None:
            have = f"; {rows:,} are, in {self.stream_cache}" if rows else ""
            raise PipelineError(f"{offline} is set (no network) and {HUB_DATASET} {self.config} is not cached in "
                                f"{self.data_dir} (nor the first {max_samples:,} rows of its {self.split} split"
                                f"{have}); "
                                "use --dataset-path with local files (row .jsonl/.parquet or the official TSVs) "
                                "instead")
        self._check_reachable()
        import datasets

        count = 0

        def write(tmp: Path) -> None:
            nonlocal count
            with self._hub_errors():
                stream = datasets.load_dataset(HUB_DATASET, self.config, split=self.split, streaming=True)
                bar = progress(stream, desc=f"Streaming {HUB_DATASET} {self.config} {self.split}",
                               total=max_samples, unit="row")
                with open(tmp, "w", encoding="utf-8") as handle:
                    for row in bar:
                        handle.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
                        count += 1
                        if count == max_samples:
                            break
                bar.close()

        atomic_write(self.stream_cache, write)
        save_cache_record(self.stream_cache, source=self.identity(), rows=count, complete=count < max_samples)
        info(f"Streamed the first {count:,} rows of {HUB_DATASET} {self.config} [{self.split}] into "
             f"{self.stream_cache}")
        return self.stream_cache

    def _load(self) -> Iterable[dict[str, Any]]:
        self._check_reachable()
        import datasets

        with self._hub_errors():
            return datasets.load_dataset(HUB_DATASET, self.config, split=self.split, cache_dir=str(self.data_dir))

    @contextmanager
    def _hub_errors(self) -> Iterator[None]:
        """``datasets``' many error types (while loading or while streaming) as one line naming the remedy."""
        try:
            yield
        except PipelineError:
            raise
        except Exception as error:  # datasets raises many types when offline
            if _looks_offline(error):
                raise PipelineError(
                    f"cannot reach the Hugging Face hub to download {HUB_DATASET} ({type(error).__name__}); "
                    "use --dataset-path with local files (row .jsonl/.parquet or the official TSVs) instead"
                ) from error
            raise PipelineError(f"cannot load {HUB_DATASET} {self.config} [{self.split}]: "
                                f"{first_line(error)}") from error

    def _check_reachable(self) -> None:
        """Fail in seconds, with the remedy, where ``datasets`` would retry for ~25 s and print a traceback."""
        instead = "use --dataset-path with local files (row .jsonl/.parquet or the official TSVs) instead"
        offline = offline_mode_variable()
        if offline is not None:
            if not self.cached():
                raise PipelineError(f"{offline} is set (no network) and {HUB_DATASET} {self.config} is not cached "
                                    f"in {self.data_dir}; {instead}")
            return  # datasets reads the cached copy without the network
        endpoint = hub_endpoint()
        reason = hub_unreachable_reason(endpoint)
        if reason is not None:
            cached = (f"; or set HF_HUB_OFFLINE=1 to use the copy cached in {self.data_dir}"
                      if self.cached() else "")
            raise PipelineError(f"cannot reach the Hugging Face hub at {endpoint} ({reason}); {instead}{cached}")


def hub_endpoint() -> str:
    """The hub's address: ``HF_ENDPOINT`` (mirrors, tests) or huggingface.co, as huggingface_hub uses it."""
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def offline_mode_variable() -> str | None:
    """The name of the set offline variable (``HF_HUB_OFFLINE``, ``HF_DATASETS_OFFLINE``), if any."""
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE"):
            return name
    return None


def hub_unreachable_reason(endpoint: str, timeout: float = HUB_PROBE_TIMEOUT) -> str | None:
    """``None`` if the hub answers an HTTP request within ``timeout`` seconds, else why it did not.

    Any HTTP answer (even 401 or 404) proves the network path works; proxies set in the environment are
    honoured, as they are by huggingface_hub.
    """
    request = urllib.request.Request(f"{endpoint}/api/datasets/{HUB_DATASET}", method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None
    except urllib.error.URLError as error:
        return first_line(error.reason) if isinstance(error.reason, BaseException) else str(error.reason)
    except (OSError, ValueError, http.client.HTTPException) as error:  # timeouts, resets, a malformed endpoint
        return first_line(error)


def _check_readable(path: Path) -> None:
    try:
        if not path.is_file():
            raise PipelineError("not a file" if path.exists() else f"file not found{_nearby(path)}", path)
        if path.stat().st_size == 0:
            raise PipelineError("file is empty", path)
    except OSError as error:
        raise PipelineError(f"cannot read ({error.strerror or error})", path) from error


def _looks_offline(error: BaseException) -> bool:
    names = {type(e).__name__ for e in _chain(error)}
    text = " ".join(str(e) for e in _chain(error)).lower()
    return bool(names & {"ConnectionError", "OfflineModeIsEnabled", "LocalEntryNotFoundError", "Timeout",
                         "ConnectTimeout", "ReadTimeout", "MaxRetryError", "NameResolutionError"}) or any(
        word in text for word in ("connection", "offline", "resolve", "unreachable", "couldn't reach"))


def _chain(error: BaseException | None) -> Iterator[BaseException]:
    while error is not None:
        yield error
        error = error.__cause__ or error.__context__


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
    _check_readable(path)  # here, not at the first row: a missing file is named when the reader is made
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


def _read_head(path: Path) -> bytes:
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
    head = _read_head(path)
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
    _check_readable(path)
    _read_head(path)
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
        _check_max_samples(max_samples)
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
        _check_max_samples(max_samples)
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


def _listing(paths: list[Path], limit: int = 8) -> str:
    names = [p.name for p in paths]
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _choose(kind: str, paths: list[Path], split: str | None, split_applies: bool, place: str, flag: str
            ) -> Path | None:
    """The one file of ``kind`` among ``paths`` (see ``tsv_files_from``), or a one-line error listing them."""
    if not paths:
        return None
    naming = [p for p in paths if split and names_split(p.name, split)]
    if not naming and split_applies and kind in SPLIT_KINDS:
        raise PipelineError(f"{flag} {split} names none of the {kind} files {place} ({_listing(paths)}): give a "
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
        raise PipelineError(f"{len(chosen)} {kind} files {place} {found} ({_listing(chosen)}), so which one to read "
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


# ---------------------------------------------------------------------------------------------- choosing


def open_source(dataset_paths: list[str | Path] | None, config: str = "v1.1", split: str = "train",
                data_dir: str | Path = "data", min_relevance: int = 1, *, split_given: bool = False) -> Source:
    """The source the user asked for: the hub by default, local files with ``--dataset-path``.

    ``split_given``: the user gave ``split`` (``--split``), so it must name what is read: a hub split, a split of
    a ``datasets`` folder, the row files or the TSVs of a split (``tsv_files_from``); a split that names
    nothing is an error listing what is there. A default split picks what it names and otherwise leaves a
    folder's files as they are.
    """
    if not dataset_paths:
        return HubSource(config, split, Path(data_dir))
    paths = [Path(p) for p in dataset_paths]
    for path in paths:
        if not path.exists():
            raise PipelineError(f"not found{_nearby(path)}", path)
    if len(paths) == 1 and paths[0].is_dir():
        folder = paths[0]
        if (folder / "dataset_info.json").exists() or (folder / "dataset_dict.json").exists():
            return DatasetsDiskSource(folder, split, split_given)
        rows = sorted(p for p in folder.iterdir() if p.suffix in ROW_SUFFIXES and p.is_file())
        if rows:
            return RowFileSource(_row_files_of_split(rows, split, split_given, folder))
        files = tsv_files_from(paths, split, split_given=split_given)
        if not any(vars(files).values()):
            raise PipelineError("holds no MS MARCO data (row .jsonl/.json/.parquet, a datasets folder, or "
                                f"collection/queries/qrels TSVs){_contents(folder)}", folder)
        return TsvSource(files, min_relevance)
    if all(p.is_file() and p.suffix in ROW_SUFFIXES for p in paths):
        if split_given and not any(names_split(p.name, split) for p in paths):
            raise PipelineError(f"--split {split} names none of the row files given ({_listing(paths)}); a row "
                                "file is read whole, so leave --split out, or give the files of that split")
        return RowFileSource(paths)
    if any(p.suffix in ROW_SUFFIXES for p in paths if p.is_file()):
        raise PipelineError("mixes row-layout files with other files; give one kind at a time")
    return TsvSource(tsv_files_from(paths, split, split_given=split_given), min_relevance)


def _row_files_of_split(rows: list[Path], split: str, split_given: bool, folder: Path) -> list[Path]:
    """The row files of a folder that ``split`` names (``train-00000-of-00001.parquet``, ``validation.jsonl``);
    none named: all of them for a default split, an error listing them for a split the user gave."""
    named = [p for p in rows if names_split(p.name, split)]
    if named:
        return named
    if split_given:
        raise PipelineError(f"--split {split} names none of its row files ({_listing(rows)}): give a --split that "
                            "their names hold, or leave --split out to read them all", folder)
    return rows


def _contents(folder: Path, near: str = "", limit: int = 8) -> str:
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


def _nearby(path: Path) -> str:
    """What the folder of a path that is not there holds, the names most like it first, for a message."""
    return _contents(path.parent, path.name) if path.parent.is_dir() else ""


__all__ = [
    "Passage", "QueryRecord", "Source", "RowFileSource", "DatasetsDiskSource", "HubSource", "TsvSource",
    "TsvFiles", "open_source", "iter_tsv_lines", "read_collection", "read_queries", "read_qrels",
    "read_candidates", "text_id",
]
