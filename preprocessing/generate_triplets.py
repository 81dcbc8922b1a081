"""Stage 2: triplets from MS MARCO. A thin wrapper: the command is ``msmarco_search.cli.triplets`` (console
command ``msmarco-triplets``); ``--help`` lists the flags."""

import sys

from msmarco_search.cli.triplets import main

if __name__ == "__main__":
    sys.exit(main())
