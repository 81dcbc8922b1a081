"""General file I/O: atomic writes, a kind and format version in each file the project writes, safe loading.

Loading never runs code from a file: ``torch.load`` always uses ``weights_only=True`` and pickles go through
an unpickler that refuses every global, so only plain lists, dicts, strings and numbers come out. Parquet
tables (the Hugging Face world's format) carry their kind and format version in the schema's metadata.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import math
import os
import pickle
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import torch

from .errors import PipelineError, first_line, short

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
    except RuntimeError as error:
        # torch's zip writer reports a failed write (a full disk, a quota, a lost network share) as a
        # RuntimeError such as "[enforce fail at inline_container.cc:671] . unexpected pos 704 vs 598" or
        # "PytorchStreamWriter failed writing file data/0: file write failed", with no errno; a failure while
        # it ends the file comes from the C++ stream as "basic_ios::clear: iostream error". Only those
        # become the one-line error; any other RuntimeError is a bug and keeps its traceback.
        if not re.search(r"inline_container|PytorchStreamWriter|file write failed|unexpected pos|basic_ios::clear",
                         str(error)):
            raise
        import shutil  # here, not at the top: this handler is the only user

        try:
            free = f"; {shutil.disk_usage(directory).free / 2**20:,.0f} MiB free there"
        except OSError:
            free = ""
        detail = short(re.sub(r"^\[enforce fail at [^\]]*\][ .]*", "", first_line(error, 300)))  # C++ location
        raise PipelineError(f"cannot write (torch's file writer failed: {detail}; most often the disk is full"
                            f"{free}): free some space or choose another folder, then run again", path) from error
    finally:
        tmp.unlink(missing_ok=True)
    return path


class PendingFile:
    """A file written bit by bit (token arrays appended chunk after chunk), that appears under ``path`` only
    on ``commit()``: the streaming counterpart of ``atomic_write``, with the same temporary name beside the
    final one, the same permissions and the same one-line error. ``abort()`` removes the temporary file.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        except OSError as error:
            raise PipelineError(f"cannot write here ({error.strerror or error})", self.path.parent) from error
        self.tmp = Path(tmp_name)
        self.handle: IO[bytes] = os.fdopen(fd, "wb")

    def commit(self) -> Path:
        """Close the file and rename it into place."""
        try:
            self.handle.close()
            os.chmod(self.tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
            os.replace(self.tmp, self.path)
        except OSError as error:
            self.abort()
            raise PipelineError(f"cannot write ({error.strerror or error})", self.path) from error
        return self.path

    def abort(self) -> None:
        self.handle.close()
        self.tmp.unlink(missing_ok=True)


class StagedFolder:
    """A folder (an index) rebuilt beside the one in use and swapped in whole, so the old one keeps answering
    until the new one is complete; the folder counterpart of ``atomic_write``.

    ``acquire()`` takes an exclusive lock (``lock()`` alone takes just it: ``.NAME.lock``, held as
    ``hold_marker`` holds a claim, so a SIGKILLed build never blocks the next one), puts back an old folder
    that a swap killed half-way left aside, checks that what is at ``path`` is ``kind`` (``check_output``:
    an earlier folder of that kind, an empty folder or nothing, and no input of the run inside) and returns
    the staging folder ``.NAME.new``. A killed build's staging folder is kept for the next build, which reuses
    what it can prove complete and removes the rest. ``commit()`` checks ``path`` again and swaps the staging
    folder in (two renames; the old folder is removed after), ``discard()`` removes it, ``release()`` drops
    the lock.
    """

    def __init__(self, path: str | Path, kind: OutputKind | None = None, inputs: Iterable[str | Path] = (),
                 flag: str = "the output folder"):
        self.path = output_path(path)
        self.staging = self.path.with_name(f".{self.path.name}.new")
        self.old = self.path.with_name(f".{self.path.name}.old")
        self.lock_path = self.path.with_name(f".{self.path.name}.lock")
        self.kind, self.inputs, self.flag = kind, list(inputs), flag
        self._lock: int | None = None

    def acquire(self) -> Path:
        self.lock()
        if not self.path.exists() and self.old.is_dir():
            os.replace(self.old, self.path)  # killed between the two renames of a swap: the old one is whole
        shutil.rmtree(self.old, ignore_errors=True)
        self._check()
        self.staging.mkdir(exist_ok=True)
        return self.staging

    def _check(self) -> None:
        if self.kind is not None:
            check_output(self.path, self.kind, self.inputs, replace=True, flag=self.flag)

    def lock(self) -> None:
        """The exclusive lock alone, for a change made in place (a faiss index added to a complete folder)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise PipelineError(f"cannot write here ({error.strerror or error})", self.path.parent) from error
        self._lock = hold_marker(self.lock_path)
        if self._lock is None:
            raise PipelineError("another build is writing this folder now; wait for it to finish", self.path)

    def commit(self) -> None:
        self._check()  # again: files may have been put there while the folder was built
        try:
            if self.path.exists() or self.path.is_symlink():
                os.replace(self.path, self.old)
            os.replace(self.staging, self.path)
        except OSError as error:
            raise PipelineError(f"cannot put the new folder in place ({error.strerror or error})", self.path) from error
        shutil.rmtree(self.old, ignore_errors=True)

    def discard(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)

    def release(self) -> None:
        if self._lock is not None:
            drop_marker(self.lock_path, self._lock)
            self._lock = None


def file_identity(path: str | Path) -> str:
    """Where a file is, its size and its modification time: changes whenever the file is replaced or edited."""
    path = Path(path)
    stat = path.stat()
    return f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def content_sample(path: str | Path | IO[bytes], block: int = 1 << 20) -> str:
    """A digest of a file's size and its first and last ``block`` bytes: what it holds, wherever it lies, in
    milliseconds even for a 27 GB triples TSV (a whole-file hash would cost minutes there). ``path`` may be an
    open file, read with ``os.pread`` (its position is left alone)."""
    if isinstance(path, (str, Path)):
        with open(path, "rb") as handle:
            return content_sample(handle, block)
    descriptor = path.fileno()
    size = os.fstat(descriptor).st_size
    digest = hashlib.sha256()
    digest.update(str(size).encode())
    digest.update(os.pread(descriptor, block, 0))
    if size > block:
        digest.update(os.pread(descriptor, block, max(block, size - block)))
    return digest.hexdigest()[:16]


def cache_key(*parts: object) -> str:
    """The one cache key: a short hash of everything a derived file depends on (a source's or file's
    identity, the vocabulary fingerprint, the tokeniser version, length limits, sample sizes).

    Callers pass every part that changes the derived file, so a cache is reused exactly when all match.
    """
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:16]


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


def save_json(data: Any, path: str | Path) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, default=str) + "\n"))


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
    path = _existing_file(path)
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
    payload = {"kind": kind, "format_version": FORMAT_VERSION, **data}
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_torch(path: str | Path, kind: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a file written by ``save_torch`` with ``weights_only=True`` and check that it is a ``kind``.

    Any failure (truncated zip, random bytes, a pickle that names a global) is a ``PipelineError``.
    """
    path = _existing_file(path)
    magic = _read_magic(path)
    if magic != _ZIP_MAGIC:
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


def check_vocabulary(found: Any, path: str | Path, expected: str, expected_from: str | Path) -> None:
    """Refuse a file whose vocabulary fingerprint differs from the one it is used with.

    Token ids only mean something against the vocabulary that made them: a model used with other
    embeddings, or an index built by another model, would silently score garbage.
    """
    if found != expected:
        raise PipelineError(f"its vocabulary (fingerprint {short(found)}) does not match the vocabulary of "
                            f"{expected_from} ({expected}); use the files made together", path)


def check_own_vocabulary(stored: Any, computed: str, path: str | Path) -> None:
    """Refuse a file whose word list no longer matches the fingerprint written with it (edited or damaged)."""
    if stored != computed:
        raise PipelineError(f"its word list (fingerprint {computed}) does not match the fingerprint stored with it "
                            f"({short(stored)}): the file was changed after it was written", path)


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle named a global (a function or class) that the loader does not allow: it could run code."""

    def __init__(self, module: str, name: str):
        super().__init__(f"{module}.{name}")


class _NoGlobalsUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # noqa: D401 - pickle's hook
        raise RefusedGlobal(module, name)


class _AllowListUnpickler(pickle.Unpickler):
    """Resolves only the named globals; classes in ``bare`` come back as instances built without ``__init__``."""

    def __init__(self, file: Any, allowed: frozenset[tuple[str, str]], bare: dict[tuple[str, str], type]):
        super().__init__(file, encoding="latin1")  # latin1: how numpy arrays from Python 2 era pickles decode
        self._allowed, self._bare = allowed, bare

    def find_class(self, module: str, name: str):  # noqa: D401 - pickle's hook
        if (module, name) in self._bare:
            return _bare_instance_factory(self._bare[(module, name)])
        if (module, name) in self._allowed:
            return super().find_class(module, name)
        raise RefusedGlobal(module, name)


def _bare_instance_factory(cls: type) -> type:
    class Bare:
        # Called for NEWOBJ (cls.__new__(cls)) and for REDUCE (cls(*args)) alike: either way the result is
        # an empty instance whose state the pickle then sets, so a pickle cannot run the constructor (which
        # for a gensim model trains on any file it names).
        def __new__(factory, *args: Any, **kwargs: Any):
            return object.__new__(cls)

    Bare.__name__ = Bare.__qualname__ = f"Bare{cls.__name__}"
    return Bare


def load_third_party_pickle(path: str | Path, allowed: frozenset[tuple[str, str]],
                            bare: dict[tuple[str, str], type], what: str) -> Any:
    """Unpickle another library's file (a gensim model) resolving only an allow-list of harmless globals.

    Like ``torch.load(weights_only=True)``: data types and plain constructors pass, anything else
    (``os.system``, ``builtins.eval``, ...) is refused before it can run.
    """
    path = _existing_file(path)
    try:
        with open(path, "rb") as handle:
            return _AllowListUnpickler(io.BufferedReader(handle), allowed, bare).load()
    except RefusedGlobal as error:
        raise PipelineError(f"unsafe {what} refused: it names {error}, which could run code", path) from error
    except OSError as error:
        raise PipelineError(f"cannot read ({error.strerror or error})", path) from error
    except Exception as error:  # noqa: BLE001 - damaged pickles raise many types; all mean "cannot load"
        raise PipelineError(f"not a readable {what} ({type(error).__name__}: {first_line(error, 80)})",
                            path) from error


def save_pickle(data: dict[str, Any], path: str | Path, kind: str) -> Path:
    """Pickle plain containers only, so that ``load_pickle`` (which refuses all globals) can read them back."""
    payload = {"kind": kind, "format_version": FORMAT_VERSION, **data}
    return atomic_write(path, lambda tmp: tmp.write_bytes(pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)))


def load_pickle(path: str | Path, kind: str) -> dict[str, Any]:
    """Unpickle with an unpickler that refuses every global: a pickle that would run code is rejected."""
    path = _existing_file(path)
    if _read_magic(path) == _ZIP_MAGIC:
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
        magic = _read_magic(Path(path))
    except PipelineError:
        return False
    return magic[:1] == _PICKLE_MAGIC or magic == _PARQUET_MAGIC


def is_parquet(path: str | Path) -> bool:
    path = Path(path)
    return path.suffix.lower() == ".parquet" or (path.is_file() and _read_magic(path) == _PARQUET_MAGIC)


def load_parquet(path: str | Path, kind: str) -> tuple[Any, dict[str, Any] | None]:
    """A parquet file's table (``pyarrow.Table``) and, when the project wrote it, its header (checked to be of
    ``kind`` and a format version this program reads); a parquet file from elsewhere has no header (None)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = _existing_file(path)
    if _read_magic(path) != _PARQUET_MAGIC:
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


_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_MAGIC = b"\x80"  # the PROTO opcode that starts every pickle of protocol 2 or later


def _read_magic(path: Path) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(4)
    except OSError as error:
        raise PipelineError(f"cannot read ({error.strerror or error})", path) from error


def _existing_file(path: str | Path) -> Path:
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


def ensure_writable_dir(directory: str | Path, what: str = "output folder") -> Path:
    """Create ``directory`` if needed and prove a file can be written there, before any long work starts.

    Found out at the end of a run, an unwritable folder would cost the whole run.
    """
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        raise PipelineError(f"cannot write to this {what} ({error.strerror or error})", directory) from error
    return directory


def timestamped_path(directory: str | Path, prefix: str, suffix: str) -> Path:
    """``{directory}/{prefix}_{YYYYmmdd_HHMMSS}{suffix}``, made unique even for two runs in the same second.

    Uniqueness is claimed (``claim``), and the caller drops the claim with ``release``.
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
        if not claim(path):
            continue
        # Checked only once the claim is held: checked before, another run could write and release this
        # name in between, and both runs would take it.
        if path.exists():
            release(path)
            continue
        return path
    raise PipelineError("could not find a free output name", directory)


# ---------------------------------------------------------------------------------------------- claims
#
# A claim is a marker file (``.NAME.claim`` beside ``NAME``) holding the claiming process's id, on which that
# process holds an exclusive ``flock`` for as long as it writes ``NAME``. The kernel drops the lock when the
# process ends, however it ends: the marker of a run killed with SIGKILL stays behind, but nothing holds it,
# so the next run takes it over instead of being blocked until someone deletes it by hand.

_HELD: dict[Path, int] = {}  # this process's claims: marker -> its locked descriptor


def hold_marker(marker: str | Path) -> int | None:
    """Lock ``marker`` (created if missing) for this process and write its id in it; the locked descriptor, or
    None when another process holds it. ``drop_marker`` gives it back."""
    marker = Path(marker)
    while True:
        try:
            fd = os.open(marker, os.O_CREAT | os.O_RDWR, 0o666 & ~_UMASK)
        except OSError as error:
            raise PipelineError(f"cannot write here ({error.strerror or error})", marker.parent) from error
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            same = os.stat(marker).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # its holder dropped (and removed) it between our open and our lock: open it again
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def drop_marker(marker: str | Path, fd: int) -> None:
    """Remove a marker that ``hold_marker`` locked, then unlock it (removed while still locked, so no other
    process locks a marker on its way out)."""
    Path(marker).unlink(missing_ok=True)
    os.close(fd)


def marker_holder(marker: str | Path) -> str:
    """The process id written in a marker, for messages ("unknown" when it cannot be read)."""
    try:
        text = Path(marker).read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        text = ""
    return text if text.isdigit() else "unknown"


def claim(path: str | Path) -> bool:
    """Claim ``path`` for this run (the marker ``.NAME.claim`` beside it, locked); False when another live
    process holds it. A marker that no process holds (its run was killed) is taken over. ``release`` drops
    the claim."""
    marker = claim_marker(Path(path))
    if marker in _HELD:
        return False  # one claim per path, in this process too
    fd = hold_marker(marker)
    if fd is None:
        return False
    _HELD[marker] = fd
    return True


def release(path: str | Path) -> None:
    """Drop this process's claim on ``path`` (``claim``, ``timestamped_path``); nothing if it holds none."""
    marker = claim_marker(Path(path))
    fd = _HELD.pop(marker, None)
    if fd is not None:
        drop_marker(marker, fd)


def claim_marker(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(f".{path.name}.claim")


def claimed_elsewhere(path: str | Path, what: str, hint: str) -> PipelineError:
    """The error for a ``path`` that another run has claimed: which process, and what to do."""
    holder = marker_holder(claim_marker(path))
    return PipelineError(f"another run (process {holder}) is writing this {what} now; wait for it to finish, "
                         f"or {hint}", path)


# ---------------------------------------------------------------------------------------------- outputs
#
# The one rule for every output: a command replaces only what it recognises as its own kind of output (a
# model by its kind, an index folder by its manifest, a run by its TREC lines, ...), never one of its own
# inputs, and claims it against a concurrent run. ``check_output`` is the rule; ``claim_output`` claims, then
# checks; ``StagedFolder`` checks a folder it is about to replace.


@dataclass(frozen=True)
class OutputKind:
    """What a command writes: its name in messages, whether it is a folder, and ``recognise(path)``, which says
    why an existing ``path`` is not of this kind (None when it is)."""

    name: str
    recognise: Callable[[Path], str | None]
    folder: bool = False


def output_path(path: str | Path) -> Path:
    """``path`` as an output is written there: a name of its own (``.``, ``..`` and an empty path become the
    folder they mean), and through a symbolic link, to what the link points at (checked and replaced there;
    the link stays). The root of the file system is refused."""
    path = Path(path)
    if path.name in ("", ".", ".."):
        path = Path(os.path.abspath(path))
    try:
        os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        pass  # nothing there yet (or a file where a folder of the path should be: found when it is created)
    except OSError as error:  # a name too long, a loop of links, no permission to look
        raise PipelineError(f"cannot write here ({error.strerror or error})", path) from error
    else:
        if path.is_symlink():
            path = Path(os.path.realpath(path))
    if not path.name:
        raise PipelineError("is the root of the file system; name a folder of its own", path)
    return path


def check_output(path: str | Path, kind: OutputKind, inputs: Iterable[str | Path] = (), replace: bool = True,
                 flag: str = "the output") -> Path:
    """Refuse to write ``kind`` at ``path`` where that would destroy something that is not this command's own
    earlier output: an input of this run (or, for a folder, an input inside it), a folder where a file goes
    (or a file where a folder goes), anything ``kind`` does not recognise, and, without ``replace``
    (``--overwrite``), even an earlier output of the kind. Nothing there, an empty file and an empty folder
    are free. ``flag`` names the option that chose ``path``."""
    path = Path(path)
    _refuse_inputs(path, kind, inputs)
    try:
        if not (path.exists() or path.is_symlink()):
            return path
        if kind.folder:
            if not path.is_dir():
                raise PipelineError(f"exists and is not a folder; {flag} names the folder to write (a {kind.name})",
                                    path)
            if not any(path.iterdir()):
                return path
        else:
            if path.is_dir():
                raise PipelineError(f"is a folder; {flag} names the file to write (a {kind.name})", path)
            if not path.is_file():
                raise PipelineError(f"exists and is not a regular file; {flag} names the file to write (a "
                                    f"{kind.name})", path)
            if path.stat().st_size == 0:
                return path
        why = kind.recognise(path)
    except OSError as error:
        raise PipelineError(f"cannot read what is there ({error.strerror or error})", path) from error
    if why is not None:
        raise PipelineError(f"exists and is not an earlier {kind.name} ({why}); {flag} replaces only an earlier "
                            f"{kind.name}, so choose another name, or move it away", path)
    if not replace:
        raise PipelineError(f"already exists; pass --overwrite to replace it, or choose another {flag}", path)
    return path


def _refuse_inputs(path: Path, kind: OutputKind, inputs: Iterable[str | Path]) -> None:
    target = path.resolve()
    for given in inputs:
        if given is None or not (Path(given).exists() or Path(given).is_symlink()):
            continue
        resolved = Path(given).resolve()
        if resolved == target:
            raise PipelineError(f"is an input of this run ({given}); write the {kind.name} elsewhere", path)
        if kind.folder and resolved.is_relative_to(target):
            raise PipelineError(f"holds an input of this run ({given}); write the {kind.name} elsewhere", path)


def claim_output(path: str | Path, kind: OutputKind, inputs: Iterable[str | Path] = (), replace: bool = True,
                 flag: str = "the output") -> Path:
    """``check_output``, holding ``path``'s claim (refused while another run holds it); ``release`` drops it.
    Returns the path to write (``output_path``: through a symbolic link, to what it points at)."""
    path = output_path(path)
    inputs = list(inputs)
    _refuse_inputs(path, kind, inputs)  # first: being an input is the clearest message
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PipelineError(f"cannot write here ({error.strerror or error})", path.parent) from error
    if not claim(path):
        raise claimed_elsewhere(path, kind.name, f"choose another {flag}")
    try:
        check_output(path, kind, inputs, replace, flag)
    except BaseException:
        release(path)
        raise
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
            if raw.read(4) == _ZIP_MAGIC:
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
        if _read_magic(path) == _PARQUET_MAGIC:
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
