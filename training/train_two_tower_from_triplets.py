"""Stage 3: train a two-tower model from triplets (``msmarco_search.cli.train``; ``--help`` for the flags).

    uv run training/train_two_tower_from_triplets.py TRIPLETS.pkl [--output FILE | --output-dir DIR] ...
    torchrun --nproc-per-node N training/train_two_tower_from_triplets.py TRIPLETS.pkl ...
"""

from msmarco_search.cli.train import main
from msmarco_search.core.errors import run_cli

if __name__ == "__main__":
    run_cli(main)
