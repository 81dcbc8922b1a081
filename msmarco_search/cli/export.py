"""Export a trained two-tower model to a sentence-transformers folder (needs the ``st`` extra).

    uv sync --extra st
    uv run training/export_sentence_transformers.py MODEL.pt --output-dir DIR [--overwrite]

DIR then loads with ``SentenceTransformer(DIR)`` (offline, no custom code): ``encode_query`` gives the model's
query vectors and ``encode_document`` its passage vectors. It holds safetensors weights, the tokenizer and a model
card (README.md). Only ``mean`` towers can be exported; a ``gru`` model is refused.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from msmarco_search.core.commands import program, with_commands
from msmarco_search.core.report import info


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=program("export"), description=with_commands(__doc__),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="two-tower model (.pt) from training or averaging")
    parser.add_argument("--output-dir", type=Path, required=True, help="the sentence-transformers folder to write")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace DIR if it holds an earlier export (a folder of other files is never replaced)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from msmarco_search.training.export import export_sentence_transformers

    folder = export_sentence_transformers(args.model, args.output_dir, overwrite=args.overwrite)
    info(f"💾 Exported {args.model} to {folder}; load it with SentenceTransformer({str(folder)!r}) "
         "(sentence-transformers)")
    return 0
