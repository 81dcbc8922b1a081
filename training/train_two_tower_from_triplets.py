"""Stage 3: train a two-tower model from triplets (``msmarco_search.cli.train``; ``--help`` for the flags).

    uv run training/train_two_tower_from_triplets.py TRIPLETS.pkl [--output FILE | --output-dir DIR] ...
    torchrun --nproc-per-node N training/train_two_tower_from_triplets.py TRIPLETS.pkl ...
"""

from msmarco_search.cli import run
from msmarco_search.cli.train import main
from msmarco_search.core.commands import SCRIPT

if __name__ == "__main__":
    run(main, form=SCRIPT)
