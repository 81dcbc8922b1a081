"""Why faiss recall@10 stalls on the cycled 8.8M collection: each DL 2019 passage is there ~309 times, so
exact search's top 10 are 10 copies of one passage, and a faiss hit counts only if it is a copy of that
passage. IVF-PQ's re-scoring fetches refine x k candidates, all copies of the few passages its codes rank
first, so recall@10 is the chance that those few passages hold the exact best one.

This measures that chance on the distinct passages alone (one cycle of the index's vectors), with the 8.8M
index's geometry: as many lists as the 8.8M build (k-means sees each passage 10 times, as the 8.8M sample
sees its copies), so a list holds the same ~7 distinct passages. For each faiss index kind (IVF flat: the
lists' own ceiling; IVF-SQ8; IVF-PQ at several code sizes), nprobe and number of distinct candidates
(1 is refine 10 at 8.8M: 100 candidates < 309 copies), the share of queries whose exact best passage is
among the candidates.

    uv run benchmarks/faiss_copies.py MODEL INDEX_DIR --queries FILE [--distinct 28602] [--lists 4096]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from msmarco_search.arguments import positive_int
from msmarco_search.errors import run_cli
from msmarco_search.index import import_faiss, load_index, vector_rows
from msmarco_search.model import load_model
from msmarco_search.sources import read_queries


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("index_dir", type=Path)
    parser.add_argument("--queries", type=Path, required=True, help="queries TSV (qid<TAB>text)")
    parser.add_argument("--max-queries", type=positive_int, default=1000, help="the first N queries (1000)")
    parser.add_argument("--distinct", type=positive_int, default=28602, help="rows of one cycle: the distinct passages")
    parser.add_argument("--lists", type=positive_int, default=4096, help="IVF lists of the 8.8M index (4096)")
    parser.add_argument("--nprobe", type=lambda text: [positive_int(part) for part in text.split(",")],
                        default=[16, 64, 256])
    parser.add_argument("--kinds", default="flat,sq8,pq50,pq100,pq150")
    args = parser.parse_args(argv)
    faiss = import_faiss()
    model = load_model(args.model)
    index = load_index(args.index_dir, model, args.model)
    passages = np.ascontiguousarray(vector_rows(index.vectors, 0, args.distinct), dtype=np.float32)
    queries = list(read_queries(args.queries).values())[:args.max_queries]
    query_vectors = np.ascontiguousarray(model.encode(queries, "query").numpy(), dtype=np.float32)
    scores = query_vectors @ passages.T
    best = scores.max(axis=1)
    dim = passages.shape[1]
    print(f"{len(queries)} queries, {len(passages):,} distinct passages, {args.lists} lists")
    print(f"{'kind':>6} {'nprobe':>7} {'distinct 1':>11} {'2':>6} {'4':>6}")
    for kind in args.kinds.split(","):
        coarse = faiss.IndexFlatIP(dim)
        if kind == "flat":
            ivf = faiss.IndexIVFFlat(coarse, dim, args.lists, faiss.METRIC_INNER_PRODUCT)
        elif kind == "sq8":
            ivf = faiss.IndexIVFScalarQuantizer(coarse, dim, args.lists, faiss.ScalarQuantizer.QT_8bit,
                                                faiss.METRIC_INNER_PRODUCT)
        else:
            ivf = faiss.IndexIVFPQ(coarse, dim, args.lists, int(kind[2:]), 8, faiss.METRIC_INNER_PRODUCT)
        ivf.cp.min_points_per_centroid = 1
        ivf.train(np.repeat(passages, 10, axis=0))
        ivf.add(passages)
        for nprobe in args.nprobe:
            ivf.nprobe = nprobe
            shares = []
            for distinct in (1, 2, 4):
                _, rows = ivf.search(query_vectors, distinct)
                found = [bool(len(r[r >= 0])) and scores[q, r[r >= 0]].max() >= best[q] - 1e-4
                         for q, r in enumerate(rows)]
                shares.append(float(np.mean(found)))
            print(f"{kind:>6} {nprobe:>7} {shares[0]:>11.3f} {shares[1]:>6.3f} {shares[2]:>6.3f}", flush=True)
    return 0


if __name__ == "__main__":
    run_cli(main)
