"""Search speed: index a collection (optionally grown by repeating it), then time exact and faiss search.

Prints one line per measurement: indexing throughput and peak memory, then queries/second and recall@k
against exact search for exact inner product and each faiss kind. Timings are medians of --repeats runs.

  uv run benchmarks/bench_search.py checkpoints/two_tower_model_X.pt \
      --collection ../shared/data/msmarco-trec-dl-2019/collection.tsv \
      --queries ../shared/data/msmarco-queries/queries.dev.small.tsv --passages 1000000 --work-dir /tmp/bench
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from msmarco_search.arguments import positive_int
from msmarco_search.errors import PipelineError, run_cli
from msmarco_search.fileio import atomic_write
from msmarco_search.index import (
    FAISS_FILE,
    IndexSettings,
    build_faiss_index,
    build_index,
    count_passages,
    import_faiss,
    iter_collection,
    load_index,
)
from msmarco_search.model import load_model
from msmarco_search.report import info
from msmarco_search.resources import check_disk
from msmarco_search.retrieval import exact_search
from msmarco_search.sources import open_source, read_queries


def grow_collection(source: Path, target: Path, passages: int) -> None:
    """``passages`` lines cycled from ``source`` with fresh ids: a bigger collection with real texts."""
    lines = count_passages(source)
    if not lines:
        raise PipelineError("holds no passages to cycle", source)
    check_disk(passages / lines * source.stat().st_size * 1.05, target.parent, f"a collection of {passages:,} "
               "passages", "lower the passages")

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            written = 0
            while written < passages:
                for _, _, text in iter_collection(source):
                    handle.write(f"{written}\t{text}\n")
                    written += 1
                    if written == passages:
                        return
    atomic_write(target, write)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def median_seconds(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("--collection", type=Path, required=True, help="collection.tsv to index (or to repeat)")
    parser.add_argument("--queries", type=Path, required=True, help="queries TSV (qid<TAB>text)")
    parser.add_argument("--passages", type=positive_int, default=None,
                        help="grow the collection to this many passages by cycling it (default: as it is)")
    parser.add_argument("--max-queries", type=positive_int, default=1000)
    parser.add_argument("--work-dir", type=Path, default=Path("outputs/bench_search"))
    parser.add_argument("--faiss", nargs="*", default=["flat", "hnsw", "ivf"])
    parser.add_argument("--k", type=positive_int, default=10)
    parser.add_argument("--repeats", type=positive_int, default=3)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--reuse-index", action="store_true", help="search an index this script built before")
    args = parser.parse_args()

    info(f"torch threads: {torch.get_num_threads()}")
    collection = args.collection
    base = None  # a grown collection repeats the original: row i holds the text of row i % base
    if args.passages:
        base = sum(1 for _ in iter_collection(args.collection))
        collection = args.work_dir / f"collection_{args.passages}.tsv"
        if not collection.exists():
            started = time.perf_counter()
            grow_collection(args.collection, collection, args.passages)
            info(f"grew {args.collection} to {args.passages:,} passages in {time.perf_counter() - started:.1f} s")
    model = load_model(args.model)
    rss_before = peak_rss_mib()
    index_dir = args.work_dir / f"index_{collection.stem}_{args.dtype}"
    if args.reuse_index and (index_dir / "manifest.json").exists():
        info(f"reusing {index_dir}")
    else:
        started = time.perf_counter()
        manifest = build_index(model, args.model, open_source([collection]), index_dir, IndexSettings(dtype=args.dtype))
        seconds = time.perf_counter() - started
        size = manifest["files"]["vectors.npy"] / 2**20
        info(f"index: {manifest['count']:,} passages x {manifest['dim']} in {seconds:.1f} s "
             f"({manifest['count'] / seconds:,.0f} passages/s); vectors {size:,.0f} MiB; "
             f"peak RSS {rss_before:,.0f} MiB before, {peak_rss_mib():,.0f} MiB after")

    index = load_index(index_dir, model)
    queries = list(read_queries(args.queries).values())[:args.max_queries]
    vectors = model.encode(queries, "query")
    encode = median_seconds(lambda: model.encode(queries, "query"), args.repeats)
    info(f"query encoding: {len(queries):,} queries in {encode:.3f} s ({len(queries) / encode:,.0f} queries/s)")
    exact = exact_search(index.vectors, vectors, args.k)[1].numpy()
    took = median_seconds(lambda: exact_search(index.vectors, vectors, args.k), args.repeats)
    info(f"exact (torch, memory-mapped, chunks of 65536): {len(queries) / took:,.0f} queries/s "
         f"({took:.3f} s for {len(queries):,})")
    faiss = import_faiss() if args.faiss else None
    matrix = np.ascontiguousarray(vectors.numpy(), dtype=np.float32)
    for kind in args.faiss:
        started = time.perf_counter()
        build_faiss_index(index.vectors, kind, index_dir / f"{kind}.{FAISS_FILE}")
        built = time.perf_counter() - started
        approx = faiss.read_index(str(index_dir / f"{kind}.{FAISS_FILE}"))
        settings = [None]
        if kind == "hnsw":
            settings = [64, 128, 256]
        elif kind == "ivf":
            settings = [8, 16, 64]
        for setting in settings:
            if kind == "hnsw":
                approx.hnsw.efSearch = setting
            elif kind == "ivf":
                approx.nprobe = setting
            found = approx.search(matrix, args.k)[1]
            took = median_seconds(lambda: approx.search(matrix, args.k), args.repeats)  # noqa: B023
            if base:  # copies of one passage tie, and either copy is a right answer
                found, expected = found % base, exact % base
            else:
                expected = exact
            recall = np.mean([len(set(f) & set(e)) / len(set(e)) for f, e in zip(found, expected, strict=True)])
            label = ""
            if kind == "hnsw":
                label = f" efSearch {setting}"
            elif kind == "ivf":
                label = f" nprobe {setting} of {approx.nlist}"
            info(f"faiss {kind}{label}: build {built:.1f} s; {len(queries) / took:,.0f} queries/s; "
                 f"recall@{args.k} vs exact {recall:.3f}")
    index.close()
    return 0


if __name__ == "__main__":
    run_cli(main)
