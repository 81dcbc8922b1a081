"""The project's one error type, and the functions that keep its messages to one line (``cli.run`` prints it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class PipelineError(Exception):
    """A problem the user can fix (bad input, missing file, unreachable hub): shown as one line, no traceback."""

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = None if path is None else Path(path)
        message = " ".join(message.split())  # always one line, whatever a library put in its message
        super().__init__(f"{path}: {message}" if path is not None else message)


def short(value: Any, limit: int = 80) -> str:
    """``value`` for an error message: itself if a string, else its repr, cut to ``limit`` characters."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def first_line(error: BaseException, limit: int = 200) -> str:
    """The first line of a library's error message (its type name when it has none), cut to ``limit``."""
    text = str(error).strip()
    return short(text.splitlines()[0], limit) if text else type(error).__name__
