"""Export a trained two-tower model to a sentence-transformers folder: see msmarco_search/driver/export.py.

    uv run --extra st training/export_sentence_transformers.py MODEL.pt --output-dir DIR
"""

from msmarco_search.cli.export import main
from msmarco_search.core.errors import run_cli

if __name__ == "__main__":
    run_cli(main)
