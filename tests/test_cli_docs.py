"""docs/cli.md is every command's --help as the commands print it today (``scripts/cli_docs.py`` rewrites it)."""

import importlib.util
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_docs_cli_md_equals_every_commands_help() -> None:
    spec = importlib.util.spec_from_file_location("cli_docs", ROOT / "scripts" / "cli_docs.py")
    cli_docs = importlib.util.module_from_spec(spec)
    sys.modules["cli_docs"] = cli_docs
    spec.loader.exec_module(cli_docs)
    written = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    now = cli_docs.render()
    if f"Written with Python {cli_docs.PYTHON}." in written:
        assert written == now, "docs/cli.md differs from --help: run `uv run python scripts/cli_docs.py`"
    else:  # another Python's argparse: the same commands and flags, worded its way
        assert flags(written) == flags(now), "docs/cli.md differs from --help: run `uv run python scripts/cli_docs.py`"


def flags(text: str) -> list[str]:
    """Every heading and long flag of the reference, in order."""
    return re.findall(r"^#+ .*$|--[a-z][a-z0-9-]*", text, flags=re.MULTILINE)
