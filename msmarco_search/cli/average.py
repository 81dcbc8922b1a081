"""Average two-tower models into one (a uniform "model soup"): the mean of their weights.

Train the same recipe with a few seeds (--seed), then average them; the soup searches as fast as one model and
is usually better than the typical one of its parts (measured in docs/experiments.md). The models must have the same
settings and vocabulary.

    uv run training/average_two_tower_models.py MODEL.pt MODEL.pt [MODEL.pt ...] [--output FILE | --output-dir DIR]

Writes {output_dir}/two_tower_model_<timestamp>.pt (or exactly --output FILE), loadable wherever a trained model is.
"""

from __future__ import annotations

import argparse
from datetime import datetime
from pathlib import Path

from msmarco_search.cli.output import claim_model_path
from msmarco_search.core.commands import command_line, program, with_commands
from msmarco_search.core.errors import PipelineError
from msmarco_search.core.report import info, next_commands
from msmarco_search.io.outputs import release


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=program("average"), description=with_commands(__doc__),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", type=Path, nargs="+", help="two-tower models (.pt) from training")
    parser.add_argument("--output-dir", type=Path, default=None,
                        help="where the averaged model goes, under a timestamped name (default: the first "
                             "model's folder)")
    parser.add_argument("--output", type=Path, default=None, metavar="FILE",
                        help="write the averaged model to exactly this file instead")
    parser.add_argument("--overwrite", action="store_true",
                        help="let --output replace an existing file (never one another run is writing)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from msmarco_search.training.model_file import average_two_towers, save_two_tower

    if len(args.models) < 2:
        raise PipelineError("give at least two models to average")
    if args.output is not None and args.output_dir is not None:
        raise PipelineError("give --output FILE or --output-dir DIR, not both")
    # --output replaces only an earlier model, and never one of the models averaged
    path = claim_model_path(args.output, args.output_dir or args.models[0].parent, args.overwrite, args.models)
    try:
        model = average_two_towers(args.models)
        meta = model.metadata
        save_two_tower(path, model, {
            "training": meta.get("training"), "embeddings_file": meta.get("embeddings_file"),
            "trained_on": meta.get("trained_on"),
            "averaged_from": [str(p) for p in args.models],
            "averaged": datetime.now().isoformat(timespec="seconds")})
    finally:
        release(path)
    info(f"💾 Saved the average of {len(args.models)} models to {path}")
    next_commands(command_line("search", "index", path))
    return 0
