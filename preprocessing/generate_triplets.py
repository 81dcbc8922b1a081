"""Stage 2: triplets from MS MARCO. The command is ``msmarco_search.cli.triplets`` (also ``msmarco-triplets``,
``python -m msmarco_search triplets``); ``--help`` lists the flags."""

from msmarco_search.cli import run
from msmarco_search.cli.triplets import main
from msmarco_search.core.commands import SCRIPT

if __name__ == "__main__":
    run(main, form=SCRIPT)
