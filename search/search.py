"""Search passages with a trained two-tower model, BM25, or a hybrid of the two (``search/search.py --help``).

The command is ``msmarco_search.cli.search`` (also ``msmarco-search``, ``python -m msmarco_search search``).
"""

from msmarco_search.cli import run
from msmarco_search.cli.search import main
from msmarco_search.core.commands import SCRIPT

if __name__ == "__main__":
    run(main, form=SCRIPT)
