"""hybrid-linear's dense share swept on the DL 2021 split: a lever's 3 seeds, each fused with BM25 at each weight.

The fusion weight is one setting for evaluation, search and the page (``--fusion-weight``, 0.5). This trains a
lever of ``benchmarks/levers_dl21.py`` (seeds 42, 1 and 2, saved as WORK/levers/<lever>-s<seed>.pt), ranks the
split's 26 held-out queries over the DL 2021 pool with the linear hybrid of its two-tower and BM25 at each weight,
and prints nDCG@10, mean (min-max) over the seeds, with the paired t-test against weight 0.5:

    uv run benchmarks/hybrid_weight_dl21.py --work /tmp/q teacher-kl-train-queries-t40
    uv run benchmarks/hybrid_weight_dl21.py --work /tmp/q control --weights 0.5,0.7

The row and its reading: docs/experiments.md, "A teacher".
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.stats import ttest_rel

sys.path.insert(0, str(Path(__file__).resolve().parent))
import levers_dl21 as levers  # noqa: E402 - the lever definitions and the split live there

from msmarco_search.search.dense import ModelRetriever  # noqa: E402
from msmarco_search.search.hybrid import HybridRetriever  # noqa: E402
from msmarco_search.search.retrieval import BM25Retriever  # noqa: E402
from msmarco_search.training.model_file import save_two_tower  # noqa: E402


def weights(text: str) -> list[float]:
    values = [float(part) for part in text.split(",")]
    if not values or any(not 0.0 <= value <= 1.0 for value in values):
        raise argparse.ArgumentTypeError(f"weights are dense shares from 0 to 1, got {text!r}")
    return values


def sweep(split: levers.Split, name: str, shares: list[float]) -> np.ndarray:
    """nDCG@10 of each (seed, weight, held-out query)."""
    held_out = levers.HeldOut.read(split)
    table = np.zeros((len(levers.SEEDS), len(shares), len(held_out.queries)))
    for s, seed in enumerate(levers.SEEDS):
        model, _ = levers.train_seed(split, levers.LEVERS[name], seed)
        save_two_tower(split.out / f"{name}-s{seed}.pt", model, {})
        for w, share in enumerate(shares):
            hybrid = HybridRetriever(ModelRetriever(model), BM25Retriever(), "linear", weight=share, depth=1000)
            table[s, w] = held_out.scores(hybrid, ("nDCG@10",))[0]
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="the quality script's WORK (see levers_dl21.py)")
    parser.add_argument("--weights", type=weights, default=[0.3, 0.4, 0.5, 0.6, 0.7, 0.8],
                        help="the two-tower's shares to sweep, comma-separated (0.3,0.4,0.5,0.6,0.7,0.8)")
    parser.add_argument("lever", help="a trained lever of levers_dl21.py (see its --list)")
    args = parser.parse_args(argv)
    if levers.LEVERS.get(args.lever) is None:
        parser.error(f"not a trained lever: {args.lever} (see benchmarks/levers_dl21.py --list)")
    split = levers.Split(args.work)
    if not split.dev("queries.dl21.tsv").is_file() or not split.embeddings.is_file():
        parser.error(f"{args.work}: run the quality script's levers step there first (see levers_dl21.py --help)")
    shares = sorted(set(args.weights) | {0.5})
    split.out.mkdir(exist_ok=True)
    torch.set_num_threads(1)
    table = sweep(split, args.lever, shares)
    base = table[:, shares.index(0.5)].mean(axis=0)
    for w, share in enumerate(shares):
        means = table[:, w].mean(axis=1)
        mine = table[:, w].mean(axis=0)
        versus = "" if share == 0.5 else f" {mine.mean() - base.mean():+.4f} (p {ttest_rel(mine, base).pvalue:.3f})"
        print(f"{args.lever} hybrid-linear weight {share:g}: nDCG@10 {means.mean():.4f} "
              f"({means.min():.3f}-{means.max():.3f}){versus}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
