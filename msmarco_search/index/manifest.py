"""An index's records read and checked: its manifest, its shards' records, and its files' sizes."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from msmarco_search.core.commands import command
from msmarco_search.core.errors import PipelineError, short
from msmarco_search.data.vocab import vocabulary_fingerprint
from msmarco_search.index.layout import (
    ARRAY_FILES,
    FAISS_FILE,
    FAISS_KINDS,
    INDEX_FORMAT_VERSION,
    KIND_INDEX,
    KIND_SHARD,
    MANIFEST,
    PASSAGES,
    VECTOR_DTYPES,
)
from msmarco_search.index.opened import Missing, OpenedFolder
from msmarco_search.io.safe_load import decode_json

if TYPE_CHECKING:  # the model's type only: the index is read without torch
    from msmarco_search.training.model import TwoTowerModel

SHARD_MISMATCH = {"model_id": "another model", "vocabulary_fingerprint": "another vocabulary",
                   "collection": "another collection", "collection_size": "another collection",
                   "collection_sample": "another collection", "format_version": "another format version"}


def check_shard_record(record: Any, path: Path, identity: dict[str, Any], rows: tuple[int, int]) -> dict[str, Any]:
    """``record`` (a shard's ``shard.json``), after checking it is one built with ``identity`` for ``rows``."""
    if not isinstance(record, dict) or record.get("kind") != KIND_SHARD:
        raise PipelineError(f"not a {KIND_SHARD} record", path)
    for key, wanted in identity.items():
        if record.get(key) != wanted:
            what = SHARD_MISMATCH.get(key, f"another {key}")
            raise PipelineError(f"shard built by {what} ({key} {short(record.get(key), 40)}, this index: "
                                f"{short(wanted, 40)}); rebuild the index", path)
    if (record.get("start"), record.get("stop")) != rows:
        raise PipelineError(f"shard holds passages {record.get('start')}-{record.get('stop')}, expected "
                            f"{rows[0]}-{rows[1]}; rebuild the index", path)
    files = record.get("files")
    if not isinstance(files, dict) or set(files) != set(ARRAY_FILES):
        raise PipelineError(f"shard record lists files {short(files)}, not {', '.join(ARRAY_FILES)}; rebuild the index",
                            path)
    return record


def json_of(file: io.FileIO, path: Path) -> Any:
    try:
        file.seek(0)
        data = file.readall()
    except OSError as error:
        raise PipelineError(f"cannot read ({error.strerror or error})", path) from error
    return decode_json(data, path)


def read_manifest(folder: OpenedFolder) -> dict[str, Any]:
    path = folder.path / MANIFEST
    try:
        file = folder.open(MANIFEST)
    except Missing as error:
        raise PipelineError(f"not a complete index (no {MANIFEST}: its build never finished); rebuild it with "
                            f"`{command('search')} index MODEL`", folder.path) from error
    opened = os.fstat(file.fileno())
    folder.manifest_identity = (opened.st_dev, opened.st_ino)
    return check_manifest(json_of(file, path), path)


def check_manifest(manifest: Any, path: Path) -> dict[str, Any]:
    """``manifest`` with its fields checked: kind, this format version, types, and names that stay in the index."""
    if not isinstance(manifest, dict) or manifest.get("kind") != KIND_INDEX:
        raise PipelineError(f"not a {KIND_INDEX} manifest", path)
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > INDEX_FORMAT_VERSION:
        raise PipelineError(f"index format version {version} is newer than this program reads "
                            f"({INDEX_FORMAT_VERSION}); upgrade msmarco-search", path)
    if version < INDEX_FORMAT_VERSION:
        raise PipelineError(f"index format version {version} is older than this program reads ({INDEX_FORMAT_VERSION}: "
                            "ids stored at their own length, the collection's content recorded); rebuild it with "
                            f"`{command('search')} index MODEL`", path)
    try:
        manifest["files"], manifest["count"], manifest["dim"] = (dict(manifest["files"]), int(manifest["count"]),
                                                                 int(manifest["dim"]))
        if manifest["dtype"] not in VECTOR_DTYPES:
            raise ValueError(f"unknown dtype {manifest['dtype']!r}")
        manifest["collection"] = str(manifest["collection"])
        sizes = [manifest.get("collection_size"), *manifest["files"].values()]
        if not all(type(size) is int for size in sizes):  # an edited manifest: a size as text
            raise ValueError(f"file sizes are not whole numbers ({sizes})")
        samples = manifest["samples"] = dict(manifest.get("samples") or {})
        if not all(isinstance(sample, str) for sample in [manifest["collection_sample"], *samples.values()]):
            raise ValueError("content samples are not text")
        faiss = manifest.get("faiss")
        if faiss and (not isinstance(faiss, dict) or faiss.get("type") not in FAISS_KINDS):
            raise ValueError(f"faiss entry {short(faiss, 60)} is none of {', '.join(FAISS_KINDS)}")
    except (KeyError, TypeError, ValueError) as error:
        raise PipelineError(f"manifest is incomplete ({error})", path) from error
    _check_manifest_names(manifest, path)
    return manifest


def _check_manifest_names(manifest: dict[str, Any], path: Path) -> None:
    """Every file the manifest names is one of an index's files, in its folder; the collection is either the
    passages file inside it or an absolute path (checked against its recorded sample when it is opened)."""
    known = {*ARRAY_FILES, FAISS_FILE, PASSAGES}
    odd = sorted(name for name in manifest["files"] if name not in known)
    if odd:
        raise PipelineError(f"manifest lists {short(odd[0], 60)!r}, which is none of an index's files "
                            f"({', '.join(sorted(known))}); rebuild the index", path)
    collection = manifest["collection"]
    if not Path(collection).is_absolute() and (collection != PASSAGES or PASSAGES not in manifest["files"]):
        raise PipelineError(f"manifest's collection {short(collection, 60)!r} is neither the index's own {PASSAGES} "
                            "nor the absolute path of the collection it was built from; rebuild the index", path)
    unsampled = set(manifest["samples"]) - set(manifest["files"])
    if unsampled:
        raise PipelineError(f"manifest has a sample of {short(sorted(unsampled)[0], 60)!r}, a file it does not list; "
                            "rebuild the index", path)
    if manifest.get("faiss") and not {FAISS_FILE} <= set(manifest["files"]) & set(manifest["samples"]):
        raise PipelineError(f"manifest names a faiss index without the size and sample of {FAISS_FILE}; add it again "
                            f"with `{command('search')} faiss MODEL`", path)


def check_model(manifest: dict[str, Any], path: Path, model: TwoTowerModel, model_path: str | Path | None) -> None:
    built_by, this = manifest.get("model_id"), model.metadata.get("model_id")
    if built_by != this:
        raise PipelineError(
            f"index was built by another model (model_id {str(built_by)[:12]}, {manifest.get('model_path')}), "
            f"not by {model_path or 'this model'} (model_id {str(this)[:12]}); index it with this model, or "
            "pass the --index-dir of its own index", path)
    if manifest.get("vocabulary_fingerprint") != vocabulary_fingerprint(model.vocab):
        raise PipelineError("index was built with another vocabulary than this model's; rebuild it", path)


def check_file_sizes(index_dir: Path, files: dict[str, int]) -> None:
    """Each of ``files`` is in ``index_dir`` at its recorded size (a build checking the shards it wrote)."""
    for name, size in files.items():
        path = index_dir / name
        if not path.is_file():
            raise PipelineError("missing from the index; rebuild it", path)
        check_size(path.stat().st_size, size, path)


def check_size(actual: int, size: int, path: Path) -> None:
    if actual != size:
        raise PipelineError(f"truncated or changed since the index was built ({actual:,} bytes, expected "
                            f"{size:,}); rebuild the index", path)
