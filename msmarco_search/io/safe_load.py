"""Loading what the project reads, safely: JSON, torch files, pickles and parquet tables, each checked.

Loading never runs code from a file: ``torch.load`` always uses ``weights_only=True`` and pickles go through
an unpickler that refuses every global, so only plain lists, dicts, strings and numbers come out. Every file the
project writes carries its kind and a format version (``save_torch``, ``save_pickle``; parquet tables in their
schema's metadata), checked on load (``check_kind``). Another library's pickle (a gensim model) has its own
allow-list loader, ``gensim_safe``.
"""

from __future__ import annotations

import io
import json
import math
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from msmarco_search.core.errors import PipelineError, first_line, short
from msmarco_search.io.atomic import atomic_write

if TYPE_CHECKING:
    import torch

FORMAT_VERSION = 1
KIND_EMBEDDINGS = "cbow-embeddings"
KIND_TWO_TOWER = "two-tower-model"
KIND_TRAINING_STATE = "two-tower-training-state"
KIND_TRIPLETS = "msmarco-triplets"


JSON_INT_LIMIT = 2**63  # every whole number the project writes (sizes, counts, times in ns) fits numpy's int64


class JSONNumberError(ValueError):
    """A number in a JSON file that no field here can take (see ``parse_json``)."""


def _json_int(text: str) -> int:
    # the length first: Python's int() refuses strings of more than 4,300 digits with a bare ValueError
    if len(text.lstrip("-")) > 19 or not -JSON_INT_LIMIT < int(text) < JSON_INT_LIMIT:
        raise JSONNumberError(f"the whole number {short(text, 24)} is out of range (at most 19 digits, a 64-bit "
                              "integer)")
    return int(text)


def _json_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JSONNumberError(f"the number {short(text, 24)} is beyond a 64-bit float")
    return value


def _json_constant(name: str) -> float:
    raise JSONNumberError(f"{name} is not a number (not standard JSON)")


def parse_json(text: str | bytes) -> Any:
    """``json.loads`` for the files the project reads: numbers every reader can hold, or ``JSONNumberError``.

    Python's ``json`` takes ``NaN`` and ``Infinity``, reads ``1e999`` as infinity and any run of digits as an
    int; such values then fail deep in the readers (``int(inf)`` is an OverflowError, numpy and faiss refuse
    ints beyond 64 bits, Python's ``int`` refuses more than 4,300 digits). Refused here, they are one line.
    """
    return json.loads(text, parse_int=_json_int, parse_float=_json_float, parse_constant=_json_constant)


def load_json(path: str | Path) -> Any:
    path = existing_file(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise PipelineError(f"cannot read ({error.strerror or error})", path) from error
    return decode_json(data, path)


def decode_json(data: bytes, path: str | Path) -> Any:
    """The JSON document ``data`` read from ``path`` (``parse_json``), or a one-line error naming the file."""
    try:
        return parse_json(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise PipelineError(f"not valid JSON ({first_line(error, 80)})", path) from error
    except JSONNumberError as error:
        raise PipelineError(f"holds a number out of range: {error}", path) from error


def save_torch(data: dict[str, Any], path: str | Path, kind: str) -> Path:
    """Save a dict of tensors and plain values, tagged with its ``kind`` and the format version."""
    import torch  # here, not at the top: JSON, pickles and parquet need none of its seconds of import

    payload = {"kind": kind, "format_version": FORMAT_VERSION, **data}
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_torch(path: str | Path, kind: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a file written by ``save_torch`` with ``weights_only=True`` and check that it is a ``kind``.

    Any failure (truncated zip, random bytes, a pickle that names a global) is a ``PipelineError``.
    """
    import torch  # here, not at the top: JSON, pickles and parquet need none of its seconds of import

    path = existing_file(path)
    magic = read_magic(path)
    if magic != ZIP_MAGIC:
        # save_torch always writes torch's zip format; anything else is another kind of file. A pickle this
        # project wrote (triplets) is recognised so the message can say what it is.
        other = _safe_unpickle_or_none(path) if magic[:1] == _PICKLE_MAGIC else None
        if isinstance(other, dict) and isinstance(other.get("kind"), str):
            raise PipelineError(f"this is a {short(other['kind'])} file (a pickle), expected a {kind} .pt file",
                                path)
        raise PipelineError(f"not a torch .pt file (expected a {kind} file written by msmarco-search)", path)
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises many types on damaged or hostile files
        refused = _UNSAFE_TORCH_GLOBAL.search(str(error))
        if refused:
            raise PipelineError(f"unsafe torch file refused: it names {refused.group(1)}, which could run code "
                                f"(a {kind} file holds tensors and plain data only)", path) from error
        raise PipelineError(f"cannot load as a {kind} file (truncated, corrupt or unsafe): {first_line(error, 80)}",
                            path) from error
    return check_kind(data, path, kind)


# how torch's weights_only unpickler names the global it refused (its message is a paragraph)
_UNSAFE_TORCH_GLOBAL = re.compile(r"(?:unsupported GLOBAL|Unsupported global: GLOBAL) ([\w.]+)")


def check_kind(data: Any, path: str | Path, kind: str) -> dict[str, Any]:
    """Refuse anything but a ``kind`` dict of a format version this program reads."""
    if not isinstance(data, dict) or "kind" not in data:
        raise PipelineError(f"not a file written by msmarco-search (expected a {kind} file)", path)
    if data["kind"] != kind:
        raise PipelineError(f"this is a {short(data['kind'])} file, expected a {kind} file", path)
    version = data.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise PipelineError(f"has no valid format version ({short(version)}; expected a {kind} file)", path)
    if version > FORMAT_VERSION:
        raise PipelineError(f"{kind} format version {version} is newer than this program reads "
                            f"({FORMAT_VERSION}); upgrade msmarco-search", path)
    return data


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle named a global (a function or class) that the loader does not allow: it could run code."""

    def __init__(self, module: str, name: str):
        super().__init__(f"{module}.{name}")


class _NoGlobalsUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # noqa: D401 - pickle's hook
        raise RefusedGlobal(module, name)


def save_pickle(data: dict[str, Any], path: str | Path, kind: str) -> Path:
    """Pickle plain containers only, so that ``load_pickle`` (which refuses all globals) can read them back."""
    payload = {"kind": kind, "format_version": FORMAT_VERSION, **data}
    return atomic_write(path, lambda tmp: tmp.write_bytes(pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)))


def load_pickle(path: str | Path, kind: str) -> dict[str, Any]:
    """Unpickle with an unpickler that refuses every global: a pickle that would run code is rejected."""
    path = existing_file(path)
    if read_magic(path) == ZIP_MAGIC:
        raise PipelineError(f"this is a torch/zip file, not a pickle (expected a {kind} .pkl file)", path)
    try:
        data = _safe_unpickle(path)
    except RefusedGlobal as error:
        raise PipelineError(f"unsafe pickle refused: it names {error}, which could run code (a {kind} file holds "
                            "plain data only)", path) from error
    except OSError as error:
        raise PipelineError(f"cannot read ({error.strerror or error})", path) from error
    except Exception as error:  # noqa: BLE001 - damaged pickles raise many types; all mean "cannot load"
        raise PipelineError(f"truncated or corrupt pickle ({type(error).__name__}: {first_line(error, 80)})",
                            path) from error
    return check_kind(data, path, kind)


PARQUET_HEADER_KEY = b"msmarco_search"  # schema metadata key of a parquet file the project wrote
_PARQUET_MAGIC = b"PAR1"


def save_parquet(columns: dict[str, list[Any]], path: str | Path, kind: str, metadata: dict[str, Any]) -> Path:
    """A parquet table of ``columns`` (in their order), tagged in its schema metadata with ``kind``, the format
    version and ``metadata``, written atomically. Plain parquet: ``datasets`` and pandas read it as it is."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    header = {"kind": kind, "format_version": FORMAT_VERSION, "metadata": metadata}
    table = pa.table(columns).replace_schema_metadata({PARQUET_HEADER_KEY: json.dumps(header, default=str)})
    return atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def starts_as_pickle_or_parquet(path: str | Path) -> bool:
    """Whether ``path`` begins as ``save_pickle`` (protocol 2 or later) or ``save_parquet`` files do; False when
    it cannot be read."""
    try:
        magic = read_magic(Path(path))
    except PipelineError:
        return False
    return magic[:1] == _PICKLE_MAGIC or magic == _PARQUET_MAGIC


def is_parquet(path: str | Path) -> bool:
    path = Path(path)
    return path.suffix.lower() == ".parquet" or (path.is_file() and read_magic(path) == _PARQUET_MAGIC)


def load_parquet(path: str | Path, kind: str) -> tuple[Any, dict[str, Any] | None]:
    """A parquet file's table (``pyarrow.Table``) and, when the project wrote it, its header (checked to be of
    ``kind`` and a format version this program reads); a parquet file from elsewhere has no header (None)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = existing_file(path)
    if read_magic(path) != _PARQUET_MAGIC:
        raise PipelineError(f"not a parquet file (it does not start with PAR1; expected a {kind} .parquet file)",
                            path)
    try:
        table = pq.read_table(path)
    except OSError as error:
        if getattr(error, "errno", None) is not None:
            raise PipelineError(f"cannot read ({error.strerror or error})", path) from error
        raise PipelineError(f"truncated or corrupt parquet file ({first_line(error, 100)})", path) from error
    except (pa.ArrowException, ValueError) as error:
        raise PipelineError(f"truncated or corrupt parquet file ({first_line(error, 100)})", path) from error
    stored = (table.schema.metadata or {}).get(PARQUET_HEADER_KEY)
    if stored is None:
        return table, None
    try:
        header = parse_json(stored)
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise PipelineError("its msmarco_search schema metadata is not valid JSON", path) from error
    return table, check_kind(header, path, kind)


def _safe_unpickle(path: Path) -> Any:
    with open(path, "rb") as handle:
        return _NoGlobalsUnpickler(io.BufferedReader(handle)).load()


def _safe_unpickle_or_none(path: Path) -> Any:
    try:
        return _safe_unpickle(path)
    except Exception:  # noqa: BLE001 - only used to name a file that is already being refused
        return None


ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_MAGIC = b"\x80"  # the PROTO opcode that starts every pickle of protocol 2 or later


def read_magic(path: Path) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(4)
    except OSError as error:
        raise PipelineError(f"cannot read ({error.strerror or error})", path) from error


def existing_file(path: str | Path) -> Path:
    path = Path(path)
    try:
        if not path.exists():
            raise PipelineError("file not found", path)
        if not path.is_file():
            raise PipelineError("not a file", path)
        if path.stat().st_size == 0:
            raise PipelineError("file is empty", path)
    except OSError as error:
        raise PipelineError(f"cannot read ({error.strerror or error})", path) from error
    return path


def leading_strings(path: str | Path, count: int = 2, limit: int = 64) -> list[str]:
    """The first ``count`` strings a pickle (or a torch file's ``data.pkl``) holds, read opcode by opcode with
    ``pickletools`` (nothing is built or run): ``["kind", KIND]`` for a file ``save_pickle`` or ``save_torch``
    wrote, a class's module and name for a pickled object. Empty when it is not a readable pickle."""
    import pickletools
    import zipfile

    path = Path(path)
    found: list[str] = []
    try:
        with open(path, "rb") as raw:
            if raw.read(4) == ZIP_MAGIC:
                archive = zipfile.ZipFile(raw)
                name = next((n for n in archive.namelist() if n.endswith("/data.pkl")), None)
                if name is None:
                    return []
                handle: IO[bytes] = archive.open(name)
            else:
                raw.seek(0)
                handle = raw
            for number, (opcode, arg, _) in enumerate(pickletools.genops(handle)):
                if opcode.name == "GLOBAL" and isinstance(arg, str):
                    found.extend(arg.split(" ", 1))
                elif isinstance(arg, str) and ("UNICODE" in opcode.name or "STRING" in opcode.name):
                    found.append(arg)
                if len(found) >= count or opcode.name == "STOP" or number >= limit:
                    break
    except Exception:  # noqa: BLE001 - a damaged or foreign file is simply not recognised
        return found[:count] if len(found) >= count else []
    return found[:count]


def recognise_tagged(kind: str) -> Callable[[Path], str | None]:
    """A recogniser for files ``save_torch``/``save_pickle``/``save_parquet`` tag with ``kind``."""

    def recognise(path: Path) -> str | None:
        if read_magic(path) == _PARQUET_MAGIC:
            try:
                import pyarrow.parquet as pq

                stored = (pq.read_schema(path).metadata or {}).get(PARQUET_HEADER_KEY)
                found = json.loads(stored).get("kind") if stored else None
            except Exception:  # noqa: BLE001 - a damaged parquet file is not recognised
                found = None
        else:
            strings = leading_strings(path)
            found = strings[1] if len(strings) == 2 and strings[0] == "kind" else None
        if found == kind:
            return None
        return f"it holds a {short(found)} file" if isinstance(found, str) else "it is not a file this program wrote"

    return recognise


def recognise_json(*fields: str) -> Callable[[Path], str | None]:
    """A recogniser for the JSON records the project writes: an object with every one of ``fields``."""

    def recognise(path: Path) -> str | None:
        try:
            data = load_json(path)
        except PipelineError:
            return "it is not JSON"
        if not isinstance(data, dict) or not set(fields) <= data.keys():
            return f"it lacks the fields of one: {', '.join(fields)}"
        return None

    return recognise
