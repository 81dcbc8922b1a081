"""Every file the project writes or reads back: atomic writes, a kind and format version in each, safe loading.

Loading never runs code from a file: ``torch.load`` always uses ``weights_only=True`` and pickles go through
an unpickler that refuses every global, so only plain lists, dicts, strings and numbers come out.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import tempfile
import zipfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from .errors import PipelineError

FORMAT_VERSION = 1
KIND_EMBEDDINGS = "cbow-embeddings"
KIND_TWO_TOWER = "two-tower-model"
KIND_TRAINING_STATE = "two-tower-training-state"
KIND_TRIPLETS = "msmarco-triplets"

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it into place.

    An interrupted run leaves at worst a stray temporary file, never a half-written file under the final name.
    """
    path = Path(path)
    directory = path.parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as error:
        raise PipelineError(f"cannot write here ({error.strerror or error})", directory) from error
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except OSError as error:
        raise PipelineError(f"cannot write ({error.strerror or error})", path) from error
    finally:
        tmp.unlink(missing_ok=True)
    return path


def save_json(data: Any, path: str | Path) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, default=str) + "\n"))


def load_json(path: str | Path) -> Any:
    path = _existing_file(path)
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PipelineError(f"not valid JSON ({error})", path) from error


def save_torch(data: dict[str, Any], path: str | Path, kind: str) -> Path:
    """Save a dict of tensors and plain values, tagged with its ``kind`` and the format version."""
    payload = {"kind": kind, "format_version": FORMAT_VERSION, **data}
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_torch(path: str | Path, kind: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a file written by ``save_torch`` with ``weights_only=True`` and check that it is a ``kind``."""
    path = _existing_file(path)
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, TypeError,
            AttributeError, KeyError, IndexError, OSError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise PipelineError(f"cannot load as a {kind} file (truncated, corrupt or unsafe): {first_line}",
                            path) from error
    return check_kind(data, path, kind)


def check_kind(data: Any, path: str | Path, kind: str) -> dict[str, Any]:
    if not isinstance(data, dict) or "kind" not in data:
        raise PipelineError(f"not a file written by msmarco-search (expected a {kind} file)", path)
    if data["kind"] != kind:
        raise PipelineError(f"this is a {data['kind']} file, expected a {kind} file", path)
    version = data.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise PipelineError(f"format version {version} is newer than this program reads ({FORMAT_VERSION}); "
                            "upgrade msmarco-search", path)
    return data


class _NoGlobalsUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # noqa: D401 - pickle's hook
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")


def save_pickle(data: dict[str, Any], path: str | Path, kind: str) -> Path:
    """Pickle plain containers only, so that ``load_pickle`` (which refuses all globals) can read them back."""
    payload = {"kind": kind, "format_version": FORMAT_VERSION, **data}
    return atomic_write(path, lambda tmp: tmp.write_bytes(pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)))


def load_pickle(path: str | Path, kind: str) -> dict[str, Any]:
    """Unpickle with an unpickler that refuses every global: a pickle that would run code is rejected."""
    path = _existing_file(path)
    with open(path, "rb") as handle:
        if handle.read(4) == b"PK\x03\x04":
            raise PipelineError(f"this is a torch/zip file, not a pickle (expected a {kind} .pkl file)", path)
    try:
        with open(path, "rb") as handle:
            data = _NoGlobalsUnpickler(io.BufferedReader(handle)).load()
    except pickle.UnpicklingError as error:
        raise PipelineError(f"unsafe or corrupt pickle, refused ({error})", path) from error
    except (EOFError, ValueError, TypeError, IndexError, KeyError, MemoryError, UnicodeDecodeError,
            AttributeError, OverflowError) as error:
        raise PipelineError(f"truncated or corrupt pickle ({type(error).__name__}: {error})", path) from error
    return check_kind(data, path, kind)


def _existing_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise PipelineError("file not found", path)
    if not path.is_file():
        raise PipelineError("not a file", path)
    if path.stat().st_size == 0:
        raise PipelineError("file is empty", path)
    return path


def timestamped_path(directory: str | Path, prefix: str, suffix: str) -> Path:
    """``{directory}/{prefix}_{YYYYmmdd_HHMMSS}{suffix}``, made unique even for two runs in the same second.

    Uniqueness is claimed with an exclusive-create marker file, which the caller removes with ``release``.
    """
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PipelineError(f"cannot create output folder ({error.strerror or error})", directory) from error
    stamp = datetime.now().strftime("%Y%m%d_%H%M%S")
    for attempt in range(1000):
        name = f"{prefix}_{stamp}{'' if attempt == 0 else f'_{attempt}'}"
        path = directory / f"{name}{suffix}"
        marker = _claim_marker(path)
        if path.exists():
            continue
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            continue
        except OSError as error:
            raise PipelineError(f"cannot write here ({error.strerror or error})", directory) from error
        return path
    raise PipelineError("could not find a free output name", directory)


def release(path: str | Path) -> None:
    """Drop the claim marker that ``timestamped_path`` made for ``path``."""
    _claim_marker(Path(path)).unlink(missing_ok=True)


def _claim_marker(path: Path) -> Path:
    return path.with_name(f".{path.name}.claim")
