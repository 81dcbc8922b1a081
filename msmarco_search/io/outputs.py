"""Outputs: what a command may replace, claimed against a concurrent run.

A command replaces only what it recognises as its own kind of earlier output (``check_output``), never one of
its own inputs; it claims the path for as long as it writes it (``claim``: a locked marker beside it), and it
rebuilds a folder beside the one in use and swaps it in whole (``StagedFolder``).
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from msmarco_search.core.errors import PipelineError
from msmarco_search.io.atomic import UMASK


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
            fd = os.open(marker, os.O_CREAT | os.O_RDWR, 0o666 & ~UMASK)
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
