"""Memory and disk checks made before the work: settings whose product outgrows the machine are refused in one
line, not met midway as a killed process or a full disk."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .errors import PipelineError


def available_memory() -> int | None:
    """Bytes of memory the machine can still give (Linux's ``MemAvailable``), or None where it cannot say."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def size(count: float) -> str:
    """Bytes as people read them: ``820 MiB``, ``3.2 GiB``."""
    return f"{count / 2**30:,.1f} GiB" if count >= 2**30 else f"{count / 2**20:,.1f} MiB"


HIT_BYTES = 200  # one search hit held in Python: a (position or id, score) tuple, its id string and its float


def check_memory(needed: float, what: str, remedy: str) -> None:
    """Refuse, in one line and before the work, ``what`` when its ``needed`` bytes exceed the memory available:
    settings whose product outgrows the machine (a depth times the queries, a batch times the rows) would
    otherwise swap or be killed midway."""
    available = available_memory()
    if available is not None and needed > available:
        raise PipelineError(f"{what} would need about {size(needed)} of memory, and {size(available)} are "
                            f"available; {remedy}")


def check_disk(needed: float, folder: str | Path, what: str, remedy: str) -> None:
    """Refuse ``what`` when its ``needed`` bytes exceed the free space of ``folder`` (or of the first of its
    parents that exists)."""
    folder = Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise PipelineError(f"{what} would need about {size(needed)} of disk, and {folder} has {size(free)} "
                            f"free; {remedy}")
