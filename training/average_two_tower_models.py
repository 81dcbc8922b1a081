"""Average two-tower models into one model soup (``msmarco_search.cli.average``; ``--help`` for the flags).

    uv run training/average_two_tower_models.py MODEL.pt MODEL.pt [MODEL.pt ...] [--output FILE | --output-dir DIR]
"""

from msmarco_search.cli import run
from msmarco_search.cli.average import main
from msmarco_search.core.commands import SCRIPT

if __name__ == "__main__":
    run(main, form=SCRIPT)
