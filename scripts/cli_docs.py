"""Writes ``docs/cli.md``: every command's ``--help`` as the installed console commands print it.

``uv run python scripts/cli_docs.py`` rewrites the file; ``tests/test_cli_docs.py`` fails when the file and the
commands' ``--help`` differ, so the reference never drifts from the code. The text is argparse's, at a fixed
width (``COLUMNS``), so it reads the same on every machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "cli.md"
WIDTH = "100"
PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"

# (console command, its subcommands, what it is): the order of the README's stages
COMMANDS: list[tuple[str, tuple[str, ...], str]] = [
    ("msmarco-pipeline", (), "The main job: every stage, the scoreboard and a searchable index "
                             "(`scripts/run_pipeline.sh`)."),
    ("msmarco-cbow", (), "Stage 1: CBOW word vectors (`text_embeddings/train_text_embeddings_cbow_msmarco.py`)."),
    ("msmarco-triplets", (), "Stage 2: triplets (`preprocessing/generate_triplets.py`)."),
    ("msmarco-train", (), "Stage 3: the two-tower model (`training/train_two_tower_from_triplets.py`)."),
    ("msmarco-average", (), "The average of models of one recipe (`training/average_two_tower_models.py`)."),
    ("msmarco-export", (), "A model as a sentence-transformers folder (`training/export_sentence_transformers.py`)."),
    ("msmarco-search", ("index", "query", "faiss", "serve"), "Index, search, serve (`search/search.py`)."),
    ("msmarco-evaluate", (), "Systems side by side against BM25, with p-values (`evaluation/evaluate.py`)."),
]


def help_text(command: str, *subcommand: str) -> str:
    """``command [subcommand] --help`` as it prints, from this interpreter's environment."""
    executable = shutil.which(command, path=str(Path(sys.executable).parent)) or command
    result = subprocess.run([executable, *subcommand, "--help"], capture_output=True, text=True, check=True,
                            env={**os.environ, "COLUMNS": WIDTH, "NO_COLOR": "1"})
    return result.stdout.rstrip() + "\n"


def render() -> str:
    """The whole of ``docs/cli.md``."""
    parts = ["# Commands\n\n",
             "Every command and flag, as `--help` prints it (`python scripts/cli_docs.py` writes this file from the\n"
             "commands; a test keeps the two equal). Each command also runs as `python -m msmarco_search NAME`\n"
             "(`msmarco-cbow` is `python -m msmarco_search cbow`) and through the repository script named beside it.\n"
             f"Written with Python {PYTHON} (argparse words its help its own way in each version).\n"]
    for command, subcommands, about in COMMANDS:
        parts.append(f"\n## `{command}`\n\n{about}\n\n```text\n{help_text(command)}```\n")
        for sub in subcommands:
            parts.append(f"\n### `{command} {sub}`\n\n```text\n{help_text(command, sub)}```\n")
    return "".join(parts)


def main() -> int:
    text = render()
    temporary = DOC.with_name(f".{DOC.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    temporary.replace(DOC)
    print(f"wrote {DOC.relative_to(ROOT)} ({len(text.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
