"""Search passages with a trained two-tower model, BM25, or a hybrid of the two (``search/search.py --help``).

A thin wrapper: the command is ``msmarco_search.driver.search.main``.
"""

from msmarco_search.driver.search import main
from msmarco_search.errors import run_cli

if __name__ == "__main__":
    run_cli(main)
