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
import os
import pickle
import re
import shutil
import tempfile
from collections.abc import Callable
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

    ``acquire()`` takes an exclusive lock (``lock()`` alone takes just it: ``.NAME.lock``, an ``flock``; the
    kernel drops it when a build is killed, so a SIGKILLed build never blocks the next one), puts back an
    old folder that a swap killed half-way left aside, and returns the staging folder ``.NAME.new``. A killed
    build's staging folder is kept for the next build, which reuses what it can prove complete and removes
    the rest. ``commit()`` swaps the staging folder in (two renames; the old folder is removed after),
    ``discard()`` removes it, ``release()`` drops the lock.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.staging = self.path.with_name(f".{self.path.name}.new")
        self.old = self.path.with_name(f".{self.path.name}.old")
        self.lock_path = self.path.with_name(f".{self.path.name}.lock")
        self._lock: IO[str] | None = None

    def acquire(self) -> Path:
        self.lock()
        if not self.path.exists() and self.old.is_dir():
            os.replace(self.old, self.path)  # killed between the two renames of a swap: the old one is whole
        shutil.rmtree(self.old, ignore_errors=True)
        self.staging.mkdir(exist_ok=True)
        return self.staging

    def lock(self) -> None:
        """The exclusive lock alone, for a change made in place (a faiss index added to a complete folder)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock = open(self.lock_path, "a")
        except OSError as error:
            raise PipelineError(f"cannot write here ({error.strerror or error})", self.path.parent) from error
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as error:
            self._lock.close()
            self._lock = None
            raise PipelineError("another build is writing this folder now; wait for it to finish",
                                self.path) from error

    def commit(self) -> None:
        try:
            if self.path.exists():
                os.replace(self.path, self.old)
            os.replace(self.staging, self.path)
        except OSError as error:
            raise PipelineError(f"cannot put the new folder in place ({error.strerror or error})", self.path) from error
        shutil.rmtree(self.old, ignore_errors=True)

    def discard(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)

    def release(self) -> None:
        if self._lock is not None:
            self.lock_path.unlink(missing_ok=True)
            self._lock.close()
            self._lock = None


def file_identity(path: str | Path) -> str:
    """Where a file is, its size and its modification time: changes whenever the file is replaced or edited."""
    path = Path(path)
    stat = path.stat()
    return f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def content_sample(path: str | Path, block: int = 1 << 20) -> str:
    """A digest of a file's size and its first and last ``block`` bytes: what it holds, wherever it lies, in
    milliseconds even for a 27 GB triples TSV (a whole-file hash would cost minutes there)."""
    path = Path(path)
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        digest.update(str(size).encode())
        digest.update(handle.read(block))
        if size > block:
            handle.seek(max(block, size - block))
            digest.update(handle.read(block))
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
    """Record a cached file just written (its size, with ``fields``), after the file itself: a later run trusts
    the cache only while the record is there and the size still matches (``cached_record``)."""
    return save_json({**fields, "bytes": Path(path).stat().st_size}, cache_record_path(path))


def cached_record(path: str | Path) -> dict[str, Any] | None:
    """The record of the cached file at ``path``, or None when the file or its record is missing, or the record
    is damaged or does not match the file (cut short, edited, replaced): then the cache is rebuilt, not used."""
    path, record_path = Path(path), cache_record_path(path)
    if not path.is_file() or not record_path.is_file():
        return None
    try:
        record = load_json(record_path)
    except PipelineError:
        return None
    if not isinstance(record, dict) or record.get("bytes") != path.stat().st_size:
        return None
    return record


def save_json(data: Any, path: str | Path) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, default=str) + "\n"))


def load_json(path: str | Path) -> Any:
    path = _existing_file(path)
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise PipelineError(f"not valid JSON ({first_line(error, 80)})", path) from error
    except OSError as error:
        raise PipelineError(f"cannot read ({error.strerror or error})", path) from error


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
        header = json.loads(stored)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
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
        if not claim(path):
            continue
        # Checked only once the claim is held: checked before, another run could write and release this
        # name in between, and both runs would take it.
        if path.exists():
            release(path)
            continue
        return path
    raise PipelineError("could not find a free output name", directory)


def claim(path: str | Path) -> bool:
    """Claim ``path`` for this run with an exclusive-create marker beside it (``.NAME.claim``); False when
    another run holds it. ``release`` drops the claim."""
    path = Path(path)
    try:
        os.close(os.open(_claim_marker(path), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    except OSError as error:
        raise PipelineError(f"cannot write here ({error.strerror or error})", path.parent) from error
    return True


def release(path: str | Path) -> None:
    """Drop the claim marker that ``timestamped_path`` made for ``path``."""
    _claim_marker(Path(path)).unlink(missing_ok=True)


def _claim_marker(path: Path) -> Path:
    return path.with_name(f".{path.name}.claim")
