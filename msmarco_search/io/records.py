"""Side records: the JSON that describes another file, written after it and naming it by its content.

A cache and its record, triplets and their metadata, a model and its training log: the record is trusted only
while it describes the file as it is (``load_side_record``, ``cached_record``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from msmarco_search.core.errors import PipelineError
from msmarco_search.io.atomic import content_sample, save_json
from msmarco_search.io.safe_load import load_json


def cache_record_path(path: str | Path) -> Path:
    """Where the record of a cached derived file lies: beside it, ``NAME.json`` for ``NAME.txt``/``NAME.tsv``."""
    return Path(path).with_suffix(".json")


def save_cache_record(path: str | Path, **fields: Any) -> Path:
    """Record a cached file just written (its size, with ``fields``), after the file itself and naming it
    (``save_side_record``): a later run trusts the cache only while the record describes the file as it is
    (``cached_record``)."""
    return save_side_record({**fields, "bytes": Path(path).stat().st_size}, cache_record_path(path), path)


def cached_record(path: str | Path) -> dict[str, Any] | None:
    """The record of the cached file at ``path``, or None when the file or its record is missing, or the record
    is damaged or does not describe the file as it is (cut short, edited, replaced, or written by a run killed
    before its record): then the cache is rebuilt, not used."""
    path = Path(path)
    if not path.is_file():
        return None
    record, _ = load_side_record(cache_record_path(path), path)
    if record is None or record.get("bytes") != path.stat().st_size:
        return None
    return record


# ---------------------------------------------------------------------------------------------- side records
#
# A JSON record that describes another file (triplets and their metadata, a model and its training log, a
# gensim model and its stemmer, a cache and its record) is written after that file, and names it by its
# ``content_sample``. A run killed between the two writes leaves the new file beside the old record; the
# reader sees that the record describes another file and does not trust it.


def save_side_record(data: dict[str, Any], path: str | Path, main: str | Path) -> Path:
    """Write ``data`` as the JSON record ``path`` of the file ``main`` (already written)."""
    main = Path(main)
    return save_json({**data, "describes": {"file": main.name, "sample": content_sample(main)}}, path)


def load_side_record(path: str | Path, main: str | Path) -> tuple[dict[str, Any] | None, str | None]:
    """``(record, None)`` when the JSON record ``path`` describes ``main`` as it is now; else ``(None, why)``:
    missing, damaged, not an object, naming no file, or describing another file (``main`` replaced since)."""
    path, main = Path(path), Path(main)
    if not path.is_file():
        return None, f"no {path.name} beside it"
    try:
        record = load_json(path)
    except PipelineError as error:
        return None, str(error)
    if not isinstance(record, dict):
        return None, f"{path}: not a JSON object"
    described = record.get("describes")
    if not isinstance(described, dict) or not isinstance(described.get("sample"), str):
        return None, f"{path}: does not say which file it describes"
    try:
        sample = content_sample(main)
    except OSError as error:
        return None, f"{main}: cannot read ({error.strerror or error})"
    if described["sample"] != sample:
        return None, (f"{path}: describes another {main.name} than the one there (it was replaced after the record "
                      "was written)")
    return record, None
