"""Evaluate retrieval systems side by side (``evaluation/evaluate.py --help``).

The command is ``msmarco_search.cli.evaluate`` (also ``msmarco-evaluate``, ``python -m msmarco_search evaluate``).
"""

from msmarco_search.cli import run
from msmarco_search.cli.evaluate import main
from msmarco_search.core.commands import SCRIPT

if __name__ == "__main__":
    run(main, form=SCRIPT)
