"""The collection an index is built over: a ``collection.tsv`` read in place, or the passages of any other
source written as one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from msmarco_search.core.errors import PipelineError
from msmarco_search.core.report import progress
from msmarco_search.data.records import Source
from msmarco_search.data.tsv import TsvSource
from msmarco_search.io.atomic import atomic_write
from msmarco_search.io.msmarco_files import bad_id, bounded_lines, read_collection

# ---------------------------------------------------------------------------------------------- collection


def iter_collection(path: str | Path) -> Iterator[tuple[int, str, str]]:
    """``(byte offset, pid, text)`` of each passage of a ``collection.tsv``, streamed by the one TSV reader
    (``msmarco_files.read_collection``): the byte offset of each line is what lets search fetch a hit's text with
    one seek."""
    for offset, (pid, text) in read_collection(path, with_offsets=True):
        yield offset, pid, text


def count_passages(path: str | Path) -> int:
    """Passage lines in a collection file (a byte-level pass, no decoding: seconds for 8.8M lines)."""
    with open(path, "rb") as handle:
        return sum(1 for _, line in bounded_lines(handle, Path(path)) if line.strip(b"\r\n"))


def write_source_passages(source: Source, path: Path, max_passages: int | None = None) -> int:
    """The passages of a query-record source (row layout, hub, TSV without a collection), deduplicated by
    id, as a collection file; returns how many. Only the ids seen are kept in memory, not the texts."""
    count = 0

    def write(tmp: Path) -> None:
        nonlocal count
        with open(tmp, "w", encoding="utf-8", newline="\n") as handle:
            passages = source.passages(max_passages)
            for pid, text in progress(passages, desc="Reading passages", unit="passage", mininterval=1.0):
                # The sources refuse an id that is empty or holds a tab, a line break or another character
                # that is not printable, so the id is written as it is: changing it (joining its words) could
                # turn two ids into one. Tabs and line breaks inside a text are only spaces between words.
                if not pid or not pid.isprintable():
                    raise PipelineError(f"{source.description}: {bad_id('passage id', pid)}")
                handle.write(f"{pid}\t{' '.join(text.split())}\n")
                count += 1

    atomic_write(path, write)
    if not count:
        raise PipelineError("the source holds no passages to index", path)
    return count


def source_collection(source: Source) -> Path | None:
    """The ``collection.tsv`` behind a source, when it has one (indexed in place, no copy)."""
    if isinstance(source, TsvSource) and source.files.collection is not None:
        return source.files.collection
    return None
