"""The project's one error type, and the wrapper that turns it into a one-line message at the CLI."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path


class PipelineError(Exception):
    """A problem the user can fix (bad input, missing file, unreachable hub): shown as one line, no traceback."""

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = None if path is None else Path(path)
        message = " ".join(message.split())  # always one line, whatever a library put in its message
        super().__init__(f"{path}: {message}" if path is not None else message)


def run_cli(main: Callable[[], int | None]) -> None:
    """Run a script's ``main`` and exit with its status; a ``PipelineError`` becomes ``error: ...`` and exit 2."""
    try:
        status = main()
    except PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except MemoryError:
        # a setting too large for this machine (--batch-size, --vector-size, a huge --max-samples)
        print("error: out of memory; lower --batch-size, --vector-size or --max-samples", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(status or 0)
