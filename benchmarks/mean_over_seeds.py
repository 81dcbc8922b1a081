"""Average an evaluation over training seeds: models named NAME-s<SEED> count as one setting, NAME.

Other models (e.g. NAME-soup) are settings of their own, with one run.

    uv run benchmarks/mean_over_seeds.py EVALUATION_JSON [--task full] [--metrics nDCG@10,R@100] [--baseline NAME]

Reads the evaluation.json that evaluation/evaluate.py writes and prints, per setting, the mean of each
metric over its seeds for the two-tower and the hybrids, with the smallest and largest seed's value; BM25
once. On 43-53 queries one training seed moves nDCG@10 by about 0.01, so settings are compared on means.
``--baseline NAME``: each setting's difference to setting NAME (same system), with the p-values of a paired
t-test and a Wilcoxon test over the queries of the seeds' mean per query.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from msmarco_search.evaluation.metrics import paired_tests, seed_groups, seed_mean_per_query


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("evaluation", type=Path, help="evaluation.json from evaluation/evaluate.py")
    parser.add_argument("--task", default="full", help="task in the file (full)")
    parser.add_argument("--metrics", default="nDCG@10,R@100", help="comma-separated metrics (nDCG@10,R@100)")
    parser.add_argument("--baseline", default=None, metavar="NAME",
                        help="also print each setting's difference to setting NAME, with paired p-values")
    args = parser.parse_args(argv)
    if not args.evaluation.is_file():
        print(f"error: {args.evaluation}: file not found", file=sys.stderr)
        return 2
    try:
        report = json.loads(args.evaluation.read_text())
        metrics_by_system = report["tasks"][args.task]["metrics"]
        per_query = report["tasks"][args.task]["per_query"] if args.baseline else {}
    except (OSError, ValueError, KeyError, TypeError) as error:
        print(f"error: {args.evaluation}: not an evaluation.json with task {args.task!r} ({error})", file=sys.stderr)
        return 2
    metrics = args.metrics.split(",")
    known = sorted({metric for values in metrics_by_system.values() for metric in values})
    if unknown := [metric for metric in metrics if metric not in known]:
        print(f"error: {args.evaluation}: no metric {unknown[0]!r} in it (it has {', '.join(known)})", file=sys.stderr)
        return 2
    grouped = seed_groups(metrics_by_system)
    means = seed_mean_per_query(per_query)
    if args.baseline and not any(setting == args.baseline for setting, _ in means):
        print(f"error: {args.evaluation}: no setting {args.baseline!r} (settings: "
              f"{', '.join(sorted({s for s, _ in means if s}))})", file=sys.stderr)
        return 2
    columns = [f"{m} mean (min-max)" for m in metrics]
    columns += [f"{m} vs {args.baseline} (t / W p)" for m in metrics] if args.baseline else []
    header = f"{'setting':<28} {'system':<18} {'seeds':>5} " + " ".join(f"{c:>24}" for c in columns)
    print(header)
    print("-" * len(header))
    for (setting, system), runs in sorted(grouped.items()):
        cells = []
        for metric in metrics:
            values = [run[metric] for run in runs]
            cells.append(f"{statistics.mean(values):.4f} ({min(values):.3f}-{max(values):.3f})".rjust(24))
        base = means.get((args.baseline, system))
        for metric in metrics if args.baseline else []:
            if setting == args.baseline:
                cells.append("(baseline)".rjust(24))
                continue
            test = paired_tests(means[setting, system][metric], base[metric]) if base and setting else None
            cells.append((f"{test['difference']:+.4f} ({test['t_test_p']:.3f} / {test['wilcoxon_p']:.3f})"
                          if test else "").rjust(24))
        print(f"{setting or '-':<28} {system:<18} {len(runs):>5} " + " ".join(cells))
    bm25 = report.get("systems", {}).get("bm25") if isinstance(report.get("systems"), dict) else None
    if isinstance(bm25, dict) and "k1" in bm25:  # name the BM25 variant (an old file may not say its stemmer)
        print(f"bm25: k1 {bm25['k1']}, b {bm25['b']}, stemmer {bm25.get('stemmer', 'none (not recorded)')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
