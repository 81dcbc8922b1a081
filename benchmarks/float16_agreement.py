"""float16 against float32 index vectors: how much exact search's top-k moves when the stored passage vectors
are float16 (the index's default from ``FLOAT16_FROM`` passages), and what each costs to search.

    uv run benchmarks/float16_agreement.py MODEL --collection ../shared/data/msmarco-trec-dl-2019/collection.tsv \
        --queries ../shared/data/msmarco-queries/queries.dev.small.tsv --max-queries 1000

Prints the mean top-k overlap (ids) and the mean score change of the k-th hit, and the exact-search seconds of
each matrix (a memory-mapped file is read per query batch: float16 reads half the bytes).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from msmarco_search.arguments import positive_int
from msmarco_search.index import iter_collection
from msmarco_search.model import load_model
from msmarco_search.retrieval import exact_search
from msmarco_search.sources import read_queries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("--collection", type=Path, required=True)
    parser.add_argument("--queries", type=Path, required=True)
    parser.add_argument("--max-queries", type=positive_int, default=1000)
    parser.add_argument("-k", type=positive_int, default=10)
    args = parser.parse_args()
    model = load_model(args.model)
    texts = [text for _, _, text in iter_collection(args.collection)]
    vectors = model.encode(texts, "passage", batch_size=1024).numpy()
    queries = model.encode(list(itertools.islice(read_queries(args.queries).values(), args.max_queries)), "query")
    results, seconds = {}, {}
    with tempfile.TemporaryDirectory() as folder:
        for dtype in ("float32", "float16"):
            path = Path(folder) / f"{dtype}.npy"
            np.save(path, vectors.astype(dtype))
            matrix = np.load(path, mmap_mode="r")
            runs = []
            for _ in range(3):
                started = time.perf_counter()
                results[dtype] = exact_search(matrix, queries, args.k)
                runs.append(time.perf_counter() - started)
            seconds[dtype] = statistics.median(runs)
    (s32, r32), (s16, r16) = results["float32"], results["float16"]
    overlap = np.mean([len(set(a.tolist()) & set(b.tolist())) / args.k for a, b in zip(r32, r16, strict=True)])
    print(f"{len(texts):,} passages x {vectors.shape[1]}, {len(queries):,} queries, top {args.k}")
    print(f"top-{args.k} overlap float16 vs float32: {overlap:.4f}")
    print(f"k-th score change: mean {float((s16[:, -1] - s32[:, -1]).abs().mean()):.2e}")
    print(f"exact search (median of 3): float32 {seconds['float32']:.3f} s, float16 {seconds['float16']:.3f} s")


if __name__ == "__main__":
    main()
