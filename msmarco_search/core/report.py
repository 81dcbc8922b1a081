"""The one place the library talks to the user: plain lines on stdout and tqdm progress bars on stderr."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def info(message: str = "") -> None:
    print(message, flush=True)


IN_PIPELINE = "MSMARCO_SEARCH_IN_PIPELINE"


def next_commands(*commands: str) -> None:
    """End a stage with the exact command(s) of the next one, each on its own line; not when the main job runs
    the stage (``IN_PIPELINE=1``), since the job runs the next one itself."""
    if commands and os.environ.get(IN_PIPELINE) != "1":
        info("\nNext:\n" + "\n".join(f"  {line}" for line in commands))


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def progress(iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "it", **kwargs) -> Iterator[T]:
    """A tqdm bar; ``MSMARCO_SEARCH_NO_PROGRESS=1`` silences it (handy in logs and tests)."""
    from tqdm.auto import tqdm  # here, not at the top: --help and the commands that print no bar need none

    disable = os.environ.get("MSMARCO_SEARCH_NO_PROGRESS") == "1"
    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=disable, dynamic_ncols=True, **kwargs)
