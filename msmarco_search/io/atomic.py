"""Writing without loss: a file appears under its name whole or not at all.

``atomic_write`` and ``PendingFile`` write to a temporary file beside the final one and rename it into place, so
an interrupted run leaves at worst a stray temporary file, never a half-written file under the final name. Also
here: the identities and cache keys that derived files are keyed on, and the check that a folder can be written
before long work starts.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from msmarco_search.core.errors import PipelineError, first_line, short

UMASK = os.umask(0)
os.umask(UMASK)


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
        os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp makes 0600 files; give the usual permissions
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
            os.chmod(self.tmp, 0o666 & ~UMASK)  # mkstemp makes 0600 files; give the usual permissions
            os.replace(self.tmp, self.path)
        except OSError as error:
            self.abort()
            raise PipelineError(f"cannot write ({error.strerror or error})", self.path) from error
        return self.path

    def abort(self) -> None:
        self.handle.close()
        self.tmp.unlink(missing_ok=True)


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


def save_json(data: Any, path: str | Path) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, default=str) + "\n"))


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
