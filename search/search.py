"""Search passages with a trained two-tower model, BM25, or a hybrid of the two (``search/search.py --help``).

A thin wrapper: the command is ``msmarco_search.cli.search.main``.
"""

from msmarco_search.cli.search import main
from msmarco_search.core.errors import run_cli

if __name__ == "__main__":
    run_cli(main)
