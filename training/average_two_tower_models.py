"""Average two-tower models into one (a uniform "model soup"): the mean of their weights.

Train the same recipe with a few seeds (--seed), then average them; the soup searches as fast as one model and
is usually better than the typical one of its parts (measured in docs/benchmarks.md). The models must have the same
settings and vocabulary.

    uv run training/average_two_tower_models.py MODEL.pt MODEL.pt [MODEL.pt ...] [--output-dir DIR]

Writes {output_dir}/two_tower_model_<timestamp>.pt, loadable wherever a trained model is.
"""

from __future__ import annotations

import argparse
from datetime import datetime
from pathlib import Path

from msmarco_search.errors import PipelineError, run_cli
from msmarco_search.fileio import ensure_writable_dir, release, timestamped_path
from msmarco_search.model import average_two_towers, save_two_tower
from msmarco_search.report import info


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", type=Path, nargs="+", help="two-tower models (.pt) from training")
    parser.add_argument("--output-dir", type=Path, default=None,
                        help="where the averaged model goes (default: the first model's folder)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if len(args.models) < 2:
        raise PipelineError("give at least two models to average")
    output_dir = args.output_dir or args.models[0].parent
    ensure_writable_dir(output_dir)
    model = average_two_towers(args.models)
    meta = model.metadata
    path = timestamped_path(output_dir, "two_tower_model", ".pt")
    try:
        save_two_tower(path, model, {
            "training": meta.get("training"), "embeddings_file": meta.get("embeddings_file"),
            "averaged_from": [str(p) for p in args.models],
            "averaged": datetime.now().isoformat(timespec="seconds")})
    finally:
        release(path)
    info(f"💾 Saved the average of {len(args.models)} models to {path}")
    return 0


if __name__ == "__main__":
    run_cli(main)
