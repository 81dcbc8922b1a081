"""Export a trained two-tower model to a sentence-transformers folder: see msmarco_search/cli/export.py.

    uv run --extra st training/export_sentence_transformers.py MODEL.pt --output-dir DIR
"""

from msmarco_search.cli import run
from msmarco_search.cli.export import main
from msmarco_search.core.commands import SCRIPT

if __name__ == "__main__":
    run(main, form=SCRIPT)
