"""An index folder opened once (a directory descriptor), and its files read through their open descriptors,
never again by name."""

from __future__ import annotations

import errno
import io
import os
import stat
import weakref
from pathlib import Path
from typing import Any

from msmarco_search.core.commands import command
from msmarco_search.core.errors import PipelineError
from msmarco_search.index.layout import MANIFEST

# never through a link (an index's files lie in its folder); a FIFO put in a file's place does not block the open
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK


class Missing(PipelineError):
    """A file of the index is not there (the caller may say more about what that means)."""


class OpenedFolder:
    """An index folder opened once (a directory descriptor) and the files opened through it, each once and kept
    open: whatever renames happen at the folder's path, all of them come from this one folder."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except (FileNotFoundError, NotADirectoryError) as error:
            raise PipelineError(f"no index here; build one with `{command('search')} index MODEL` (without --index-dir "
                                "it is <model stem>_index/ beside the model)", path) from error
        except OSError as error:
            raise PipelineError(f"cannot read ({error.strerror or error})", path) from error
        folder = os.fstat(self.fd)
        self.identity = (folder.st_dev, folder.st_ino)
        self.manifest_identity: tuple[int, int] | None = None
        self.files: dict[str, io.FileIO] = {}  # by name inside the folder ("shards/0-of-2/vectors.npy")
        self.collection: io.FileIO | None = None  # the collection, when it lies outside the folder
        self._outside: list[io.FileIO] = []
        self._closer = weakref.finalize(self, _close_all, self.fd, self.files, self._outside)

    def open(self, name: str) -> io.FileIO:
        """The regular file ``name`` ('/'-separated, no part of it a link) inside the folder, opened once."""
        if name in self.files:
            return self.files[name]
        *folders, last = name.split("/")
        directory, opened = self.fd, []
        try:
            for part in folders:
                directory = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=directory)
                opened.append(directory)
            descriptor = os.open(last, READ_FLAGS, dir_fd=directory)
        except FileNotFoundError as error:
            raise Missing("missing from the index; rebuild it", self.path / name) from error
        except OSError as error:
            link = "; an index's files are plain files in its folder, not links" if error.errno in (
                errno.ELOOP, errno.ENOTDIR) else ""
            raise PipelineError(f"cannot read ({error.strerror or error}{link})", self.path / name) from error
        finally:
            for descriptor_of_folder in opened:
                os.close(descriptor_of_folder)
        file = io.FileIO(descriptor, "rb")
        self.files[name] = file
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise PipelineError("not a plain file; rebuild the index", self.path / name)
        return file

    def has_folder(self, name: str) -> bool:
        try:
            return stat.S_ISDIR(os.stat(name, dir_fd=self.fd, follow_symlinks=False).st_mode)
        except OSError:
            return False

    def size(self, name: str) -> int:
        return os.fstat(self.files[name].fileno()).st_size

    def moved(self) -> bool:
        """Whether the folder at the path is no longer the one opened (a rebuild swapped another one in)."""
        try:
            now = os.stat(self.path)
        except OSError:
            return True
        return (now.st_dev, now.st_ino) != self.identity

    def changed(self) -> bool:
        """Whether the folder was swapped, or its manifest replaced, since it was opened."""
        if self.moved():
            return True
        try:
            manifest = os.stat(MANIFEST, dir_fd=self.fd, follow_symlinks=False)
        except OSError:
            return True
        return self.manifest_identity is not None and (manifest.st_dev, manifest.st_ino) != self.manifest_identity

    def open_outside(self, path: Path) -> io.FileIO:
        """The file at the absolute ``path`` (the collection), opened and kept with the folder's files."""
        file = io.FileIO(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb")
        self._outside.append(file)
        self.collection = file
        return file

    def close(self) -> None:
        self._closer()


def _close_all(folder: int, files: dict[str, io.FileIO], others: list[io.FileIO]) -> None:
    for file in [*files.values(), *others]:
        file.close()
    os.close(folder)


def read_line(descriptor: int, offset: int, block: int = 8192) -> bytes:
    """The line that starts at ``offset`` of the open file (without its line end), by ``os.pread``."""
    parts = []
    while True:
        chunk = os.pread(descriptor, block, offset)
        end = chunk.find(b"\n")
        if end >= 0:
            parts.append(chunk[:end])
            break
        parts.append(chunk)
        if len(chunk) < block:  # the end of the file
            break
        offset += len(chunk)
        block = min(block * 2, 1 << 24)
    return b"".join(parts)


class PositionedReader(io.RawIOBase):
    """An open file read by ``os.pread`` from a position of its own, so that a sequential pass shares no file
    position with any other reader of the same descriptor."""

    def __init__(self, descriptor: int):
        super().__init__()
        self.descriptor, self.position = descriptor, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        got = os.preadv(self.descriptor, [buffer], self.position)
        self.position += got
        return got

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: os.fstat(self.descriptor).st_size}[whence]
        self.position = base + offset
        return self.position

    def tell(self) -> int:
        return self.position
