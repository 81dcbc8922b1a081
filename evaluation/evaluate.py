"""Evaluate retrieval systems side by side (``evaluation/evaluate.py --help``).

A thin wrapper: the command is ``msmarco_search.cli.evaluate.main``.
"""

from msmarco_search.cli.evaluate import main
from msmarco_search.core.errors import run_cli

if __name__ == "__main__":
    run_cli(main)
