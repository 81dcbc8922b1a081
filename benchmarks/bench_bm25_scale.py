"""BM25 at scale on its own (no model needed): stream a collection into a saved bm25s index, then answer
queries from it memory-mapped, in a fresh process as search does.

    nice -n 10 /usr/bin/time -v uv run benchmarks/bench_bm25_scale.py build COLLECTION OUT_DIR
    nice -n 10 /usr/bin/time -v uv run benchmarks/bench_bm25_scale.py query COLLECTION OUT_DIR --queries Q.tsv

``build`` prints the two passes' seconds and the postings; ``query`` the load time, then one query alone
and the queries file as one batch (bm25s's batched ``retrieve``), top 10 each.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from msmarco_search.index.bm25 import BM25Index, BM25Settings
from msmarco_search.index.bm25_build import build_streamed
from msmarco_search.index.collection import count_passages, iter_collection
from msmarco_search.index.load import collection_identity
from msmarco_search.io.msmarco_files import read_queries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=("build", "query"))
    parser.add_argument("collection", type=Path)
    parser.add_argument("out", type=Path, help="the saved BM25 index's folder (build: must not exist)")
    parser.add_argument("--queries", type=Path, default=None)
    args = parser.parse_args()
    started = time.perf_counter()
    count = count_passages(args.collection)
    identity = collection_identity(args.collection, count)
    print(f"{count:,} passages (counted in {time.perf_counter() - started:.1f} s)")
    if args.step == "build":
        started = time.perf_counter()
        texts = (text for _, _, text in iter_collection(args.collection))
        record = build_streamed(texts, count, BM25Settings(), args.out, identity)
        size = sum(p.stat().st_size for p in args.out.iterdir())
        print(f"built in {time.perf_counter() - started:.1f} s: {record['postings']:,} postings, "
              f"{size / 2**20:,.0f} MiB on disk")
        return
    started = time.perf_counter()
    ids = [str(i) for i in range(count)]  # stand-in ids: the index's own are decoded one at a time
    index = BM25Index.load(args.out, ids, BM25Settings(), identity)
    print(f"loaded (memory-mapped) in {time.perf_counter() - started:.1f} s")
    queries = list(read_queries(args.queries).values())
    for query in ("what is the daily life of thai people", queries[0]):
        started = time.perf_counter()
        index.search([query], 10)
        print(f"one query: {time.perf_counter() - started:.3f} s ({query!r})")
    started = time.perf_counter()
    index.search(queries, 10)
    seconds = time.perf_counter() - started
    print(f"{len(queries)} queries in one batch: {seconds:.2f} s ({seconds / len(queries):.3f} s a query)")


if __name__ == "__main__":
    main()
