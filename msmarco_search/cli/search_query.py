"""The search command's ``query``: the systems asked for, their hits printed, or written as TREC runs."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from msmarco_search.core.device import pick_device
from msmarco_search.core.errors import PipelineError
from msmarco_search.core.report import info
from msmarco_search.core.resources import HIT_BYTES, check_memory
from msmarco_search.index.layout import (
    default_index_dir,
)
from msmarco_search.io.atomic import ensure_writable_dir
from msmarco_search.io.msmarco_files import queries_with_words, read_queries
from msmarco_search.io.outputs import claim_output, output_path, release
from msmarco_search.io.runs import TREC_RUN_OUTPUT, check_trec_ids, write_trec_run
from msmarco_search.search.options import SYSTEMS, SearchOptions

if TYPE_CHECKING:
    from msmarco_search.index.load import PassageIndex


def make_searchers(args: argparse.Namespace, index: PassageIndex, model) -> list:
    from msmarco_search.search.session import make_retrievers

    systems = list(SYSTEMS) if args.system == "all" else [args.system]
    options = SearchOptions(search=args.search, nprobe=args.nprobe, ef_search=args.ef_search, refine=args.refine,
                            chunk_rows=args.chunk_rows, fusion=args.fusion, fusion_weight=args.fusion_weight,
                            rrf_k=args.rrf_k, fusion_depth=args.fusion_depth, bm25_k1=args.bm25_k1,
                            bm25_b=args.bm25_b, bm25_stemmer=args.bm25_stemmer,
                            feedback_depth=args.feedback_depth, feedback_weight=args.feedback_weight)
    return make_retrievers(systems, index, model, args.model, options)


def print_hits(index: PassageIndex, searcher, query: str, hits, width: int, label: str = "") -> None:
    from msmarco_search.search.session import known_words, snippet

    info(f"[{searcher.name}] {label}{query}")
    if not known_words(searcher, query):
        info("   (no known words in the query: the model has never seen any of them)")
        return
    if not hits:
        info("   (no hits)")
    pids = [index.pid(position) for position, _ in hits]
    id_width = max((len(p) for p in pids), default=0)
    for rank, ((position, score), pid) in enumerate(zip(hits, pids, strict=True), 1):
        info(f"{rank:4d}  {pid:<{id_width}}  {score:9.4f}  {snippet(index.text(position), width)}")


def check_search_memory(args: argparse.Namespace, index: PassageIndex, queries: int) -> None:
    """The memory a batch search holds, checked before the first query: every query's top -k until the listing
    or run is written, and per batch of queries a --chunk-rows block of scores, the deepest candidate lists (the
    hybrid's --fusion-depth, IV-PQ's -k x --refine re-scored vectors). Each is capped by the passages, but their
    product with the queries is not."""
    count, systems = len(index), SYSTEMS if args.system == "all" else (args.system,)
    depth = max(args.top_k, args.fusion_depth if {"hybrid", "hybrid-prf"} & set(systems) else 0)
    batch = min(args.batch_size, queries)
    needed = queries * min(args.top_k, count) * HIT_BYTES
    needed += batch * (min(args.chunk_rows, count) * 4 + min(depth, count) * HIT_BYTES)
    faiss = index.manifest.get("faiss") or {}
    if faiss.get("type") == "ivfpq" and args.search != "exact":
        needed += batch * min(args.top_k * args.refine, count) * (index.manifest["dim"] * 4 + 12)
    check_memory(needed, f"searching {queries:,} queries for their top {args.top_k:,} ({batch:,} at a time, "
                         f"over {count:,} passages)", "lower -k, --batch-size, --chunk-rows, --fusion-depth or "
                                                        "--refine, or split the queries file")


def batch_mode(args: argparse.Namespace, index: PassageIndex, searchers: list, run_files: dict[str, Path]) -> None:
    from msmarco_search.search.session import known_words

    queries = read_queries(args.queries)
    if not queries:
        raise PipelineError("holds no queries", args.queries)
    queries = queries_with_words(queries, args.queries)
    if args.run_file is not None:
        check_trec_ids(queries, "query", args.queries)
    check_search_memory(args, index, len(queries))
    qids, texts = list(queries), list(queries.values())
    for searcher in searchers:
        started = time.perf_counter()
        results = []
        # a query of words the model never saw is one vector (<unk>'s) for all such queries: its hits are the
        # same arbitrary passages, listed with a note (print_hits), and left out of a run
        known = [known_words(searcher, text) for text in texts]
        for start in range(0, len(texts), args.batch_size):
            rows = [i for i in range(start, min(start + args.batch_size, len(texts))) if known[i]]
            found = dict(zip(rows, searcher.search([texts[i] for i in rows], args.top_k), strict=True)) if rows else {}
            for i in range(start, min(start + args.batch_size, len(texts))):
                hits = found.get(i, [])
                if args.run_file is None:
                    print_hits(index, searcher, texts[i], hits, args.snippet, label=f"{qids[i]}: ")
                if i in found:
                    results.append((qids[i], [(index.pid(position), score) for position, score in hits]))
        seconds = time.perf_counter() - started
        unknown = known.count(False)
        info(f"{searcher.name}: {len(texts):,} queries in {seconds:.2f} s "
             f"({len(texts) / max(seconds, 1e-9):,.0f} queries/s; {searcher.description})"
             + (f"; skipped {unknown:,} with no word the model knows" if unknown else ""))
        if args.run_file is not None:
            path = run_files[searcher.name]
            write_trec_run(path, results, args.tag or searcher.name)
            info(f"💾 Wrote TREC run to {path}")


def interactive(args: argparse.Namespace, index: PassageIndex, searchers: list) -> None:
    tty = sys.stdin.isatty()
    if tty:
        print("Type a query and press Enter; Ctrl-D ends.", file=sys.stderr)
    while True:
        try:
            line = input("query> ") if tty else sys.stdin.readline()
        except EOFError:
            break
        if not tty and not line:
            break
        query = line.strip()
        if not query:
            continue
        for searcher in searchers:
            print_hits(index, searcher, query, searcher.search([query], args.top_k)[0], args.snippet)
        info()


def run_file_paths(args: argparse.Namespace, index_dir: Path) -> dict[str, Path]:
    """The run files ``--run-file`` names, claimed before the search (``outputs.claim_output``): each replaces
    only an earlier TREC run, never the model, the queries or any other file, nor a run another query is
    writing; a folder there, or one that cannot be written, is found before every query has been searched.
    The caller releases them. ``{system: its run file}``."""
    if args.run_file is None:
        return {}
    systems = list(SYSTEMS) if args.system == "all" else [args.system]
    paths = [args.run_file if len(systems) == 1 else
             args.run_file.with_name(f"{args.run_file.stem}.{system}{args.run_file.suffix}") for system in systems]
    claimed: dict[str, Path] = {}
    try:
        for system, given in zip(systems, paths, strict=True):
            path = output_path(given)
            if path.is_dir():
                raise PipelineError("is a folder; --run-file names the TREC run file to write", path)
            ensure_writable_dir(path.parent, "run file's folder")
            claimed[system] = claim_output(path, TREC_RUN_OUTPUT, [args.model, args.queries, index_dir],
                                           flag="--run-file")
    except PipelineError:
        for path in claimed.values():
            release(path)
        raise
    return claimed


def run_query(args: argparse.Namespace) -> int:
    from msmarco_search.index.load import load_index
    from msmarco_search.training.model_file import load_model

    index_dir = args.index_dir or default_index_dir(args.model)
    run_files = run_file_paths(args, index_dir)
    try:
        device = pick_device(args.device)
        model = load_model(args.model, device)
        index = load_index(index_dir, model, args.model)
        try:
            searchers = make_searchers(args, index, model)
            info(f"Index: {len(index):,} passages in {index_dir}; "
                 + "; ".join(f"{s.name}: {s.description}" for s in searchers))
            if args.queries is not None:
                batch_mode(args, index, searchers, run_files)
            elif args.query:
                query = " ".join(args.query)
                for searcher in searchers:
                    print_hits(index, searcher, query, searcher.search([query], args.top_k)[0], args.snippet)
            else:
                interactive(args, index, searchers)
        finally:
            index.close()
    finally:
        for path in run_files.values():
            release(path)
    return 0
