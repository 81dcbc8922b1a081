"""Search passages with a trained two-tower model, BM25, or a hybrid of the two.

  index  encode a collection with the model's passage tower and save the index beside the model
         (<model stem>_index/: vectors.npy, ids.npy, id_offsets.npy, offsets.npy, bm25/, manifest.json
         [, faiss.index]);
         built in .<name>.new and swapped in when complete; under torchrun each process encodes a shard
  faiss  add a faiss index (flat, hnsw, ivf, ivfpq) to a built index from its stored vectors, no encoding,
         and measure its recall against exact search
  query  top-k passages for a query on the command line, for each line read from stdin (interactive or
         a pipe), or for each query of a queries TSV (qid<TAB>text), optionally written as a TREC run
  serve  a search page and a JSON API (GET /api/search?q=...&system=...&k=...) over the index, on
         http://127.0.0.1:8000/ by default (needs the serve extra: uv sync --extra serve)

Examples:
  uv run search/search.py index checkpoints/two_tower_model_X.pt --dataset-path ../shared/data/cacm/collection.tsv
  uv run torchrun --standalone --nproc-per-node 2 search/search.py index \\
      checkpoints/two_tower_model_X.pt --dataset-path collection.tsv
  uv run search/search.py faiss checkpoints/two_tower_model_X.pt --faiss ivfpq --ivf-lists 4096
  uv run search/search.py query checkpoints/two_tower_model_X.pt "what is a compiler"
  uv run search/search.py query checkpoints/two_tower_model_X.pt --system all "what is a compiler"
  uv run search/search.py query checkpoints/two_tower_model_X.pt --queries queries.tsv --run-file run.trec
  uv run search/search.py serve checkpoints/two_tower_model_X.pt --port 8000
"""

from __future__ import annotations

import argparse
import socket
from dataclasses import replace
from pathlib import Path

from msmarco_search.cli.arguments import (
    DEVICE_HELP,
    add_bm25_arguments,
    add_feedback_arguments,
    add_fusion_arguments,
    add_source_arguments,
    available_cores,
    batch_rows,
    hnsw_links,
    non_negative_int,
    positive_int,
    source_from_args,
    whole_number,
)
from msmarco_search.cli.search_query import make_searchers, run_query
from msmarco_search.core.commands import DEMO_QUERY, command, command_line, program, with_commands
from msmarco_search.core.device import pick_device
from msmarco_search.core.errors import PipelineError
from msmarco_search.core.report import info, next_commands
from msmarco_search.index.bm25 import BM25Settings
from msmarco_search.index.layout import (
    BM25_DIR,
    FAISS_FILE,
    FAISS_KINDS,
    FLOAT16_FROM,
    VECTOR_DTYPES,
    IndexSettings,
    default_index_dir,
)
from msmarco_search.io.msmarco_files import queries_with_words, read_queries
from msmarco_search.search.options import DEFAULT_QUEUE, DEFAULT_REFINE, MAX_PARALLEL, MAX_QUEUE, SYSTEMS


def port_number(text: str) -> int:
    """argparse type for a TCP port: 0 (any free port, printed at start) to 65535."""
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 0 to 65535, got {text!r}")
    return port


def add_search_arguments(parser: argparse.ArgumentParser) -> None:
    """How the systems search: the flags ``query`` and ``serve`` share."""
    parser.add_argument("--search", choices=("auto", "exact", "faiss"), default="auto",
                        help="two-tower search: exact inner product on the memory-mapped matrix, or the index's "
                             "faiss index (auto: faiss when the index has one)")
    add_faiss_search_arguments(parser)
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    add_bm25_arguments(parser, saved=True)
    add_fusion_arguments(parser, several=False)
    add_feedback_arguments(parser)
    parser.add_argument("--chunk-rows", type=positive_int, default=65536,
                        help="exact search: passage rows scored at once (65536)")


def add_serve_parser(commands) -> None:
    serve = commands.add_parser("serve", help="a search page and JSON API over an index",
                                description="Serve a search page (GET /) and a JSON API (GET /api/search?q=..."
                                            "&system=two-tower|bm25|hybrid|two-tower-prf|hybrid-prf&k=10) over a "
                                            "model's index, with the rankings of `query`. Needs the serve extra "
                                            "(uv sync --extra serve).")
    serve.add_argument("model", type=Path, help="the two-tower model the index was built with")
    serve.add_argument("--index-dir", type=Path, default=None,
                       help="the index (default: <model stem>_index/ beside the model)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (127.0.0.1: this machine only; 0.0.0.0: every interface)")
    serve.add_argument("--port", type=port_number, default=8000, help="port (8000; 0: any free one, printed)")
    serve.add_argument("--parallel", type=whole_number(1, MAX_PARALLEL, "each search holds a thread and its memory"),
                       default=None, help=f"searches run at once, each on its share of the cores (default: the "
                                          f"cores, {available_cores()} here)")
    serve.add_argument("--queue", type=whole_number(0, MAX_QUEUE, "each waiting request holds a connection"),
                       default=DEFAULT_QUEUE,
                       help=f"requests that may wait for a search beyond those running ({DEFAULT_QUEUE}); more are "
                            "answered 503 at once")
    add_search_arguments(serve)


def add_faiss_parser(commands) -> None:
    faiss = commands.add_parser("faiss", help="add a faiss index to a built index (no encoding)",
                                description="Build a faiss index from a built index's stored vectors, add it to "
                                            "the index (or replace the one it has) and measure its recall "
                                            "against exact search. No passage is encoded again.")
    faiss.add_argument("model", type=Path, help="the two-tower model the index was built with")
    faiss.add_argument("--index-dir", type=Path, default=None,
                       help="the index (default: <model stem>_index/ beside the model)")
    add_faiss_build_arguments(faiss, required=True)


def add_faiss_build_arguments(parser: argparse.ArgumentParser, required: bool) -> None:
    """The faiss index to build and how its recall is measured: the flags ``index`` and ``faiss`` share."""
    parser.add_argument("--faiss", choices=FAISS_KINDS, default=None, required=required,
                        help=("the" if required else "also build a") + " faiss index: flat (exact), hnsw "
                             "(graph), ivf (clustered) or ivfpq (clustered, product-quantised: the one that fits "
                             "8.8M passages in memory); its recall against exact search is measured and printed")
    parser.add_argument("--hnsw-m", type=hnsw_links, default=32, help="HNSW links per node (32)")
    parser.add_argument("--ivf-lists", type=positive_int, default=None,
                        help="IVF clusters (default: about 4 x sqrt(passages); at most passages / 39, which faiss "
                             "needs to train them)")
    parser.add_argument("--pq-m", type=positive_int, default=None,
                        help="IVF-PQ bytes per vector; must divide the dimensions (default: about dimensions / 6)")
    parser.add_argument("--recall-queries", type=Path, default=None,
                        help="queries TSV for the faiss recall measurement (default: 200 pseudo-queries made "
                             "from sampled passages)")
    add_faiss_search_arguments(parser)


def add_faiss_search_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nprobe", type=positive_int, default=16, help="faiss IVF clusters visited (16)")
    parser.add_argument("--ef-search", type=positive_int, default=128, help="faiss HNSW search breadth (128)")
    parser.add_argument("--refine", type=positive_int, default=DEFAULT_REFINE,
                        help=f"faiss IVF-PQ candidates per hit, re-scored exactly ({DEFAULT_REFINE})")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=program("search"), description=with_commands(__doc__),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="{index,query,faiss,serve}")

    index = commands.add_parser("index", help="encode a passage collection and save its index",
                                description="Encode a passage collection with the model's passage tower.")
    index.add_argument("model", type=Path, help=f"two-tower model file ({command('train')})")
    index.add_argument("--index-dir", type=Path, default=None,
                       help="where the index goes (default: <model stem>_index/ beside the model)")
    index.add_argument("--max-passages", type=positive_int, default=None,
                       help="index only the first N passages")
    index.add_argument("--batch-size", type=batch_rows, default=1024, help="passages encoded at once (1024)")
    index.add_argument("--dtype", choices=["auto", *sorted(VECTOR_DTYPES)], default="auto",
                       help=f"stored vector type; float16 halves the file (auto: float16 from {FLOAT16_FROM:,} "
                            "passages, else float32)")
    add_faiss_build_arguments(index, required=False)
    index.add_argument("--device", default="auto", help=DEVICE_HELP)
    index.add_argument("--no-bm25", action="store_true",
                       help="do not build and save the BM25 index (search then builds BM25 in memory when asked)")
    add_bm25_arguments(index)
    add_source_arguments(index)

    query = commands.add_parser("query", help="search an index",
                                description="Top-k passages for queries: given here, read from stdin "
                                            "(one per line, until end of input), or read from --queries.")
    query.add_argument("model", type=Path, help="the two-tower model the index was built with")
    query.add_argument("query", nargs="*", help="the query (words are joined); none: read queries from stdin")
    query.add_argument("--index-dir", type=Path, default=None,
                       help="the index (default: <model stem>_index/ beside the model)")
    query.add_argument("--queries", type=Path, default=None, help="queries TSV (qid<TAB>text): batch mode")
    query.add_argument("--run-file", type=Path, default=None,
                       help="with --queries: write a TREC run (qid Q0 docid rank score tag) here instead of "
                            "printing hits; with --system all, one file per system (NAME.<system>.EXT)")
    query.add_argument("--tag", default=None, help="run tag in the TREC run (default: the system name)")
    query.add_argument("-k", "--top-k", type=positive_int, default=10,
                       help="hits shown (or written to the run) per query (10)")
    query.add_argument("--system", choices=[*SYSTEMS, "all"], default="two-tower",
                       help="two-tower (default), bm25, hybrid, two-tower-prf or hybrid-prf (the two-tower "
                            "again after feedback from its own or the hybrid's first hits), or all one after "
                            "the other")
    query.add_argument("--snippet", type=non_negative_int, default=120,
                       help="characters of passage text shown (120; 0: all)")
    query.add_argument("--batch-size", type=batch_rows, default=1024,
                       help="queries encoded and searched at once; exact search reads the matrix once per batch (1024)")
    add_search_arguments(query)
    add_faiss_parser(commands)
    add_serve_parser(commands)
    # argparse cannot match query words that come after options ("query MODEL -k 5 what is x") to the
    # positional; take them from the leftovers, and refuse anything that looks like a flag.
    args, extra = parser.parse_known_args(argv)
    flags = [word for word in extra if word.startswith("-")]
    if flags or (extra and args.command != "query"):
        parser.error(f"unrecognized arguments: {' '.join(flags or extra)}")
    if args.command == "query":
        args.query = [*args.query, *extra]
        if args.queries is not None and args.query:
            parser.error("give a query on the command line or --queries, not both")
        if args.run_file is not None and args.queries is None:
            parser.error("--run-file needs --queries")
    return args


def run_index(args: argparse.Namespace) -> int:
    from msmarco_search.index.build import build_index
    from msmarco_search.training.distributed import context_from_environment, init_distributed, shutdown_distributed
    from msmarco_search.training.model_file import load_model

    context = context_from_environment()
    device = init_distributed(context, pick_device(args.device))
    try:
        model = load_model(args.model, device)
        index_dir = args.index_dir or default_index_dir(args.model)
        source = source_from_args(args)
        settings = replace(faiss_settings(args), batch_size=args.batch_size, dtype=args.dtype,
                           max_passages=args.max_passages)
        bm25 = None if args.no_bm25 else BM25Settings(args.bm25_k1, args.bm25_b, args.bm25_stemmer)
        check_recall_search(args)
        queries = recall_queries(args)  # read before the encoding: a bad file fails first
        manifest = build_index(model, args.model, source, index_dir, settings, bm25, context)
    finally:
        shutdown_distributed(context)
    if manifest is None:  # a sharded build's other processes: rank 0 joins and reports
        return 0
    if manifest["faiss"]:
        manifest = measure_faiss(args, index_dir, model, manifest, queries)
    total = sum(manifest["files"].values())
    extras = f", {manifest['dtype']}" + (f", faiss {manifest['faiss']['type']}" if manifest["faiss"] else "")
    if manifest["shards"]:
        extras += f", {len(manifest['shards'])} shards"
    if bm25 is not None:
        total += sum(p.stat().st_size for p in (Path(index_dir) / BM25_DIR).iterdir())
        extras += f", BM25 ({bm25.describe()})"
    info(f"💾 Saved index of {manifest['count']:,} passages to {index_dir} ({total / 2**20:,.1f} MiB{extras})")
    where = [] if args.index_dir is None else ["--index-dir", str(index_dir)]
    next_commands(command_line("search", "query", args.model, *where, DEMO_QUERY))
    return 0


def faiss_settings(args: argparse.Namespace) -> IndexSettings:
    """The faiss part of the index settings (``add_faiss_build_arguments``' flags), the rest at their defaults."""
    return IndexSettings(faiss=args.faiss, hnsw_m=args.hnsw_m, ivf_lists=args.ivf_lists or 0, pq_m=args.pq_m or 0)


def check_recall_search(args: argparse.Namespace) -> None:
    """The search settings the recall measurement will use (``--nprobe``, ``--ef-search``), checked against what
    faiss can hold before anything is built: found only after the build, they cost the whole build."""
    from msmarco_search.index.faiss import faiss_search_parameters

    if args.faiss is not None:
        faiss_search_parameters(args.faiss, args.nprobe, args.ef_search)


def recall_queries(args: argparse.Namespace) -> list[str] | None:
    if args.recall_queries is None:
        return None
    return list(queries_with_words(read_queries(args.recall_queries), args.recall_queries).values())


def measure_faiss(args: argparse.Namespace, index_dir: Path, model, manifest: dict,
                  queries: list[str] | None) -> dict:
    """The faiss index's recall@10 against exact search on ``queries`` (``None``: sampled pseudo-queries) and
    its speed, printed and added to the manifest."""
    from msmarco_search.index.build import update_manifest
    from msmarco_search.index.load import load_index
    from msmarco_search.search.dense import faiss_recall

    index = load_index(index_dir, model, args.model)
    try:
        measured = faiss_recall(index, model, queries, nprobe=args.nprobe, ef_search=args.ef_search,
                                refine=args.refine)
    finally:
        index.close()
    manifest = update_manifest(index_dir, faiss={**manifest["faiss"], "measured": measured})
    info(f"faiss {manifest['faiss']['type']}: recall@10 {measured['recall@10']:.3f} against exact search on "
         f"{measured['queries']} {'queries' if queries else 'sampled pseudo-queries'}, "
         f"{measured['queries_per_s']:,.0f} queries/s ({measured['search']})")
    return manifest


def run_faiss(args: argparse.Namespace) -> int:
    from msmarco_search.index.build import add_faiss
    from msmarco_search.training.model_file import load_model

    index_dir = args.index_dir or default_index_dir(args.model)
    check_recall_search(args)
    queries = recall_queries(args)  # read before the build: a bad file fails first
    model = load_model(args.model, pick_device("auto"))
    manifest = add_faiss(index_dir, model, args.model, faiss_settings(args))
    manifest = measure_faiss(args, index_dir, model, manifest, queries)
    size = manifest["files"][FAISS_FILE]
    info(f"💾 Added faiss {manifest['faiss']['type']} to the index of {manifest['count']:,} passages in {index_dir} "
         f"({size / 2**20:,.1f} MiB)")
    return 0


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (before the model loads and before uvicorn starts, so a port in use or
    a host that is not this machine's is one line, not uvicorn's log and exit 1)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)  # from here on, a client that connects before uvicorn is up waits in the backlog, not refused
    except OSError as error:
        raise PipelineError(f"cannot listen on {host} port {port}: {error.strerror or error}") from error
    return sock


def run_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from msmarco_search.search.server import SearchGate, create_app
    except ImportError as error:
        raise PipelineError(f"the search page needs FastAPI and uvicorn ({error.name} is missing): "
                            "uv sync --extra serve") from error
    from msmarco_search.index.load import load_index
    from msmarco_search.search.session import SearchSession
    from msmarco_search.training.model_file import load_model

    sock = listening_socket(args.host, args.port)
    gate = SearchGate(args.parallel or available_cores(), args.queue)
    threads = max(1, available_cores() // gate.parallel)  # each search's share of the cores
    index_dir = args.index_dir or default_index_dir(args.model)
    model = load_model(args.model, pick_device(args.device))
    index = load_index(index_dir, model, args.model)
    args.system = "all"
    session = SearchSession(index, make_searchers(args, index, model), threads=threads)
    try:
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        info(f"Index: {len(index):,} passages in {index_dir}; "
             + "; ".join(f"{s.name}: {s.description}" for s in session.retrievers.values()))
        info(f"Searches: {gate.parallel} at once, {threads} thread{'s' * (threads > 1)} each; {gate.queue} more may "
             "wait, and a request beyond those is answered 503 (busy)")
        info(f"Serving the search page on http://{shown}:{port}/ (API: /api/search?q=...); Ctrl-C stops")
        # h11 refuses a request line over 16 KiB with a bare 400 before the app sees it; 256 KiB lets a
        # 100 KB query reach the app, which answers it with its JSON error
        config = uvicorn.Config(create_app(session, gate), http="h11", log_level="warning", access_log=False,
                                h11_max_incomplete_event_size=256 * 1024)
        try:
            uvicorn.Server(config).run(sockets=[sock])
        except KeyboardInterrupt:  # uvicorn shuts down on Ctrl-C, then raises it again: the way a server ends
            info("Stopped.")
    finally:
        session.close()
        sock.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    commands = {"index": run_index, "query": run_query, "faiss": run_faiss, "serve": run_serve}
    return commands[args.command](args)
