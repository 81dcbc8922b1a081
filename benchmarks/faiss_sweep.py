"""The recall / speed trade-off of a saved index's faiss search: recall@10 against exact search and queries/s
for each --nprobe x --refine (IVF, IVF-PQ) or --ef-search (HNSW), through ``retrieval.faiss_recall`` (what
``search.py index`` and ``search.py faiss`` print for their own settings at build time); exact search runs once.

    uv run benchmarks/faiss_sweep.py MODEL INDEX_DIR --queries FILE [--nprobe 16,32,64] [--refine 10,20]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from msmarco_search.arguments import positive_int
from msmarco_search.errors import run_cli
from msmarco_search.index import load_index
from msmarco_search.model import load_model
from msmarco_search.retrieval import DEFAULT_REFINE, exact_kth_scores, faiss_recall, sampled_queries
from msmarco_search.sources import read_queries


def numbers(text: str) -> list[int]:
    """argparse type: a comma list of counts (``positive_int`` each: faiss takes C ints)."""
    return [positive_int(part) for part in text.split(",")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("index_dir", type=Path)
    parser.add_argument("--queries", type=Path, default=None,
                        help="queries TSV (default: --max-queries pseudo-queries sampled from the passages)")
    parser.add_argument("--max-queries", type=positive_int, default=200,
                        help="the first N queries of --queries, or N sampled ones (200)")
    parser.add_argument("--nprobe", type=numbers, default=[16, 32, 64, 128])
    parser.add_argument("--refine", type=numbers, default=[DEFAULT_REFINE])
    parser.add_argument("--ef-search", type=numbers, default=[128])
    args = parser.parse_args(argv)
    model = load_model(args.model)
    index = load_index(args.index_dir, model, args.model)
    if args.queries is not None:
        queries = list(read_queries(args.queries).values())[:args.max_queries]
    else:
        queries = sampled_queries(index, args.max_queries)
    started = time.perf_counter()
    kth = exact_kth_scores(index, model, queries)  # exact search once, for every setting
    print(f"exact search: {len(queries)} queries over {len(index):,} passages in {time.perf_counter() - started:.1f} s")
    print(f"{'nprobe':>7} {'refine':>7} {'ef':>5} {'recall@10':>10} {'queries/s':>10}")
    for nprobe in args.nprobe:
        for refine in args.refine:
            for ef_search in args.ef_search:
                measured = faiss_recall(index, model, queries, kth=kth, nprobe=nprobe, refine=refine,
                                        ef_search=ef_search)
                print(f"{nprobe:>7} {refine:>7} {ef_search:>5} {measured['recall@10']:>10.3f} "
                      f"{measured['queries_per_s']:>10,.0f}", flush=True)
    return 0


if __name__ == "__main__":
    run_cli(main)
