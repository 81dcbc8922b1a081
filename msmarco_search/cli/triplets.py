"""Stage 2: generate (query, relevant passage, non-relevant passage) triplets from MS MARCO.

Writes {output_dir}/msmarco_triplets_<N>k_<timestamp>.pkl (N: queries read, in thousands, rounded, at least
1; the exact count is in the metadata), or exactly --output FILE, holding plain lists of strings (loaded by
the project with an unpickler that refuses every global), and beside it <name>_metadata.json (source, split,
counts, strategy, seed, arguments, time). --format parquet writes a .parquet table instead: columns anchor,
positive, negative, query_id, positive_id, negative_id, read by datasets.load_dataset("parquet", ...) and
sentence-transformers' trainer as they are (and by the training script, like the .pkl).

--mode ict needs no queries: from bare passages (a collection.tsv, or the passages of rows; several
--dataset-path sources are read one after the other) it makes inverse-cloze triplets: a sentence or span of a
passage is the query, the rest of the passage the positive, another passage the negative. --include adds the
triplets of earlier files (e.g. judged pairs) to the output, to train on both.

--mode pseudo-labels (self-training) labels real queries that have no judgments (--queries, e.g. the MS MARCO
train queries) over the passages of --dataset-path with a trained model (--label-model) fused with BM25: the
hybrid's first passage is the positive where the model and BM25 both rank it in their top
--pseudo-agree-depth (other queries are dropped), a passage of hybrid ranks --pseudo-negative-ranks the
negative (never a near-duplicate of the positive).

--teacher MODEL (a sentence-transformers folder or hub name; the st extra): once the triplets are made, the
teacher encodes every triplet's query and passages (a passage whole, also where an inverse-cloze positive is a
cut of it) and the triplets file carries its vectors, which the training distils (--distill-weight). The vectors
are cached under --data-dir, so a second run encodes only new texts. --teacher-queries adds unjudged real
queries labelled by the teacher's ranking over the training pool (the --dataset-path passages; for judged
queries, the triplets' own); it never labels an evaluation query, which this command knows through
--exclude-queries.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from msmarco_search.cli.arguments import (
    add_source_arguments,
    fraction,
    ict_per_passage,
    positive_int,
    seed_int,
    source_from_args,
    split_given,
)
from msmarco_search.cli.triplets_teacher import add_teacher_arguments, check_teacher_arguments, open_teacher
from msmarco_search.core.commands import command_line, program
from msmarco_search.core.errors import PipelineError
from msmarco_search.core.report import info, next_commands
from msmarco_search.data.generation import (
    NEGATIVE_STRATEGIES,
    ClozeStats,
    TripletStats,
    generate_triplets,
    inverse_cloze_triplets,
)
from msmarco_search.data.records import Source
from msmarco_search.data.sources import open_source
from msmarco_search.data.triplets import (
    TRIPLET_FORMATS,
    TRIPLETS_METADATA_OUTPUT,
    TRIPLETS_OUTPUT,
    Triplets,
    load_triplets,
    metadata_path,
    save_triplets,
    triplets_prefix,
)
from msmarco_search.io.atomic import ensure_writable_dir
from msmarco_search.io.msmarco_files import queries_with_words, read_queries
from msmarco_search.io.outputs import check_output, claim_output, output_path, release, timestamped_path
from msmarco_search.io.records import save_side_record


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=program("triplets"), description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("queries", "ict", "pseudo-labels"), default="queries",
                        help="queries: judged queries and their passages (default); ict: inverse-cloze "
                             "pseudo-queries cut from bare passages; pseudo-labels: unjudged --queries "
                             "labelled over the passages by --label-model and BM25 (self-training)")
    parser.add_argument("--max-samples", type=positive_int, default=50000,
                        help="number of queries to read (default 50000); --mode ict: passages per source")
    parser.add_argument("--negatives", choices=NEGATIVE_STRATEGIES, default="hard",
                        help="hard: unselected passages of the same query; random: passages of other queries; "
                             "mixed: either, at even odds (default hard)")
    parser.add_argument("--seed", type=seed_int, default=42, help="random seed (42)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--output-dir", default=None,
                       help="folder for the timestamped triplets file (default: --data-dir)")
    where.add_argument("--output", type=Path, default=None, metavar="FILE",
                       help="write the triplets exactly to FILE (an earlier triplets file there is replaced; any "
                            "other file is refused) and the metadata beside it as <stem>_metadata.json, instead "
                            "of a timestamped name in --output-dir")
    parser.add_argument("--format", choices=TRIPLET_FORMATS, default=None,
                        help="pkl: the project's pickle (default); parquet: anchor, positive, negative (+ ids) for "
                             "datasets and sentence-transformers (default with --output: from its suffix)")
    parser.add_argument("--include", type=Path, nargs="+", default=[], metavar="FILE",
                        help="add the triplets of these earlier triplets files to the output")
    parser.add_argument("--exclude-queries", type=Path, nargs="+", default=[], metavar="FILE",
                        help="queries TSVs (qid<TAB>text) of queries kept for evaluation: drop every triplet whose "
                             "query is one of them (compared as tokens), pseudo-queries and included ones too")
    cloze = parser.add_argument_group("inverse cloze (--mode ict)")
    cloze.add_argument("--ict-per-passage", type=ict_per_passage, default=1,
                       help="pseudo-queries cut from each passage (1)")
    cloze.add_argument("--ict-max-query-words", type=positive_int, default=16,
                       help="longest pseudo-query, in words (16)")
    cloze.add_argument("--ict-min-words", type=positive_int, default=8,
                       help="passages shorter than this many words are skipped (8)")
    cloze.add_argument("--ict-keep-query", type=fraction, default=0.1,
                       help="probability that the pseudo-query stays in its positive passage (0.1)")
    cloze.add_argument("--ict-keywords", type=fraction, default=0.0, metavar="SHARE",
                       help="share of pseudo-queries that are keyword-style instead: 3-6 of the passage's rarest "
                            "words, drawn by IDF (0)")
    cloze.add_argument("--ict-mine-negatives", type=Path, default=None, metavar="MODEL",
                       help="negatives mined with this trained two-tower model instead of random passages: one "
                            "of its ranks --pseudo-negative-ranks for the pseudo-query over the passages, never "
                            "the positive's passage or a near-duplicate of it (ANCE-style hard negatives)")
    labels = parser.add_argument_group("self-training (--mode pseudo-labels)")
    labels.add_argument("--queries", type=Path, nargs="+", default=[], metavar="FILE",
                        help="queries TSVs (qid<TAB>text) to label, at most --max-samples of them in all")
    labels.add_argument("--label-model", type=Path, default=None, metavar="MODEL",
                        help="the trained two-tower model whose ranking, fused with BM25's, labels them")
    labels.add_argument("--pseudo-agree-depth", type=positive_int, default=3,
                        help="keep a query only when the model and BM25 both rank the hybrid's first passage "
                             "in their top this many (3)")
    labels.add_argument("--pseudo-negative-ranks", type=positive_int, nargs=2, default=[10, 50],
                        metavar=("FIRST", "LAST"),
                        help="hybrid ranks the negative is drawn from (10 50); with --ict-mine-negatives, the "
                             "model's ranks")
    labels.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, mps (also "
                                                         "the teacher's)")
    add_teacher_arguments(parser)
    add_source_arguments(parser)
    args = parser.parse_args(argv)
    suffix = None if args.output is None else args.output.suffix.lower().lstrip(".")
    if args.format is None:
        args.format = "parquet" if suffix == "parquet" else "pkl"
    elif suffix in TRIPLET_FORMATS and suffix != args.format:
        parser.error(f"--output {args.output} names a .{suffix} file, but --format is {args.format}")
    if args.ict_mine_negatives is not None and args.mode != "ict":
        parser.error("--ict-mine-negatives goes with --mode ict")
    if args.mode == "pseudo-labels" and (not args.queries or args.label_model is None or not args.dataset_path):
        parser.error("--mode pseudo-labels needs --queries, --label-model and --dataset-path (the passages)")
    first, last = args.pseudo_negative_ranks
    if args.mode == "pseudo-labels" and not args.pseudo_agree_depth < first <= last:
        parser.error("--pseudo-negative-ranks: need --pseudo-agree-depth < FIRST <= LAST")
    if not first <= last:
        parser.error("--pseudo-negative-ranks: need FIRST <= LAST")
    check_teacher_arguments(parser, args)
    return args


def main(argv: list[str] | None = None) -> int:
    """Make and save the triplets; a problem the user can fix raises ``PipelineError`` (``cli.run`` prints it)."""
    args = parse_args(argv)
    started = time.perf_counter()
    claimed = claim_output_file(args)  # before the work, not after it
    try:
        return make_and_save(args, claimed, started)
    finally:
        if claimed is not None:
            release(claimed)


def make_and_save(args: argparse.Namespace, claimed: Path | None, started: float) -> int:
    """Make the triplets and save them to ``claimed`` (``--output``) or a new timestamped name."""
    included = [load_triplets(path) for path in args.include]
    held_out = [text for path in args.exclude_queries for text in read_queries(path).values()]
    teacher = open_teacher(args, held_out)  # before the work: a refused model or cache costs seconds
    if args.mode == "ict":
        triplets, stats, description, identity, sample_size = inverse_cloze(args)
        prefix = triplets_prefix(sample_size).replace("msmarco_triplets_", "msmarco_triplets_ict_")
    elif args.mode == "pseudo-labels":
        triplets, stats, description, identity, sample_size = pseudo_labels(args, held_out, bool(included))
        prefix = triplets_prefix(sample_size).replace("msmarco_triplets_", "msmarco_triplets_pseudo_")
    else:
        triplets, stats, description, identity, sample_size = query_triplets(args, bool(included))
        prefix = triplets_prefix(sample_size)
    made = len(triplets)
    for extra in included:
        triplets.extend(extra)
    pool = None
    if teacher is not None:
        pool = training_pool(args, triplets)
        teacher.add_labelled_queries(triplets, pool)
    excluded = 0
    if args.exclude_queries:
        kept = triplets.without_queries(held_out)
        excluded, triplets = len(triplets) - len(kept), kept
        info(f"➖ {excluded:,} triplets dropped: their query is one of the {len(held_out):,} queries of "
             f"{', '.join(map(str, args.exclude_queries))}")
    taught = teacher.label(triplets, dict(zip(pool.ids, pool.texts_, strict=True))) if teacher is not None else None
    path = claimed if claimed is not None else timestamped_path(args.output_dir or args.data_dir, prefix,
                                                                 f".{args.format}")
    try:
        metadata = {
            "mode": args.mode, "source": description, "source_identity": identity, "split": str(args.split),
            "dataset_config": args.dataset_config if not args.dataset_path else None,
            "negative_strategy": negative_strategy(args),
            "seed": args.seed, "max_samples": args.max_samples, "format": args.format,
            "num_triplets": len(triplets), "num_queries": len(set(triplets.query_ids)),
            "triplets_made": made, "triplets_excluded": excluded,
            "excluded_queries": [str(p) for p in args.exclude_queries],
            "included": {str(p): len(t) for p, t in zip(args.include, included, strict=True)},
            "teacher": taught,
            **vars(stats), "arguments": _plain(vars(args)),
            "created": datetime.now().isoformat(timespec="seconds"),
            "seconds": round(time.perf_counter() - started, 3),
        }
        save_triplets(triplets, path, metadata)
        # the metadata last, naming the triplets it describes (``records.save_side_record``)
        save_side_record(metadata, metadata_path(path), path)
    finally:
        if claimed is None:
            release(path)
    if included:
        info(f"➕ {sum(map(len, included)):,} triplets added from {len(included)} file(s): {len(triplets):,} in all")
    info(f"💾 Saved triplets to {path}")
    info(f"💾 Saved metadata to {metadata_path(path)}")
    next_commands(command_line("train", path))
    return 0


def negative_strategy(args: argparse.Namespace) -> str:
    """How the negatives were chosen, in words, for the metadata."""
    first, last = args.pseudo_negative_ranks
    if args.mode == "ict":
        if args.ict_mine_negatives is None:
            return "random (other passages)"
        return f"mined: ranks {first}-{last} of {args.ict_mine_negatives} (random where none)"
    if args.mode == "pseudo-labels":
        return "hybrid ranks (mined with the label model)"
    return args.negatives


def output_inputs(args: argparse.Namespace) -> list[Path]:
    """Every file this run reads: its output may be none of them (``--include X --output X`` would replace X)."""
    return [*args.include, *args.exclude_queries, *args.queries, *args.teacher_queries,
            *map(Path, args.dataset_path or []),
            *(path for path in (args.label_model, args.ict_mine_negatives) if path is not None)]


def claim_output_file(args: argparse.Namespace) -> Path | None:
    """Claim ``--output`` before the work (``outputs.claim_output``): an earlier triplets file there is replaced,
    anything else (often this run's own --dataset-path) and any input of the run are refused, as is a file
    that another run is writing; the metadata JSON beside it follows the same rule."""
    if args.output is None:
        ensure_writable_dir(Path(args.output_dir or args.data_dir))
        return None
    inputs = output_inputs(args)
    output = output_path(args.output)
    if output.is_dir():
        raise PipelineError("is a folder; --output names the triplets file itself (or use --output-dir)", output)
    ensure_writable_dir(output.parent)
    path = claim_output(output, TRIPLETS_OUTPUT, inputs, flag="--output")
    try:
        check_output(metadata_path(path), TRIPLETS_METADATA_OUTPUT, inputs, flag="--output")
    except PipelineError:
        release(path)
        raise
    return path


def query_triplets(args: argparse.Namespace, have_included: bool) -> tuple[Triplets, TripletStats, str, str, int]:
    """Triplets of the judged queries of the source: (triplets, stats, description, identity, sample size)."""
    source = source_from_args(args)
    triplets, stats = generate_triplets(source.records(args.max_samples), negatives=args.negatives,
                                        seed=args.seed, has_candidates=source.has_candidates,
                                        total=args.max_samples)
    if len(triplets) == 0 and not have_included:
        hint = ("; check --split, --min-relevance and that the qrels name the queries"
                if stats.queries_read == 0 else "")
        raise PipelineError(f"no triplets could be made from {source.description}: {stats.queries_read} "
                            f"queries read, {stats.queries_without_selected} without a selected passage, "
                            f"{stats.queries_without_negative} without a usable negative{hint}")
    info(f"✅ {len(triplets):,} triplets from {stats.queries_read:,} queries "
         f"({stats.queries_without_selected:,} skipped without a selected passage; "
         f"{stats.hard_negatives:,} hard and {stats.random_negatives:,} random negatives)")
    return triplets, stats, source.description, source.identity(), min(args.max_samples, stats.queries_read)


def passage_sources(args: argparse.Namespace) -> list[Source]:
    """Every source named, each --dataset-path on its own (or the hub)."""
    sources = ([open_source([path], args.dataset_config, args.split, args.data_dir, args.min_relevance,
                            split_given=split_given(args))
                for path in args.dataset_path] if args.dataset_path else [source_from_args(args)])
    for source in sources:
        info(f"Passages from: {source.description}")
    return sources


def all_passages(sources: list[Source], max_passages: int | None) -> Iterator[tuple[str, str]]:
    """``(pid, text)`` of every source in turn; with several sources, ids become ``<number>:<pid>``."""
    for number, source in enumerate(sources):
        for pid, text in source.passages(max_passages):
            # ids of different collections may collide; keep them apart
            yield (pid if len(sources) == 1 else f"{number}:{pid}"), text


def passage_pool(passages: Iterator[tuple[str, str]]) -> Any:
    """``(pid, text)`` pairs held in memory as one ``retrieval.PassagePool``, for ranking them with a model."""
    from msmarco_search.search.retrieval import PassagePool

    ids, texts = [], []
    for pid, text in passages:
        ids.append(pid)
        texts.append(text)
    return PassagePool(ids, texts)


def training_pool(args: argparse.Namespace, triplets: Triplets) -> Any:
    """The passages the training may see (a ``PassagePool``), which the teacher ranks for ``--teacher-queries`` and
    encodes whole: the --dataset-path passages (--mode ict: the first --max-samples of each, those cut into
    pseudo-queries), or, for judged queries, the triplets' own passages."""
    if args.mode != "queries":
        return passage_pool(all_passages(passage_sources(args), args.max_samples if args.mode == "ict" else None))
    ids, texts = triplets.positive_ids + triplets.negative_ids, triplets.positives + triplets.negatives
    return passage_pool(iter(dict(zip(ids, texts, strict=True)).items()))


def pseudo_labels(args: argparse.Namespace, held_out: list[str],
                  have_included: bool) -> tuple[Triplets, Any, str, str, int]:
    """Self-training triplets: --queries labelled over the passages by --label-model fused with BM25."""
    from msmarco_search.core.device import pick_device
    from msmarco_search.data.provenance import query_fingerprint
    from msmarco_search.labels.mining import pseudo_label_triplets
    from msmarco_search.search.dense import TwoTowerRetriever
    from msmarco_search.search.retrieval import BM25Retriever

    sources = passage_sources(args)
    pool = passage_pool(all_passages(sources, None))
    excluded = {query_fingerprint(text) for text in held_out}
    queries: list[tuple[str, str]] = []
    seen: set[str] = set()
    for path in args.queries:
        for qid, text in queries_with_words(read_queries(path), path).items():
            fingerprint = query_fingerprint(text)
            # a query kept for evaluation is never labelled; a query repeated across files is labelled once
            if fingerprint not in excluded and fingerprint not in seen and len(queries) < args.max_samples:
                seen.add(fingerprint)
                queries.append((qid, text))
    model = TwoTowerRetriever.from_file(args.label_model, device=pick_device(args.device))
    info(f"Labelling {len(queries):,} queries over {len(pool):,} passages with {args.label_model} and BM25")
    first, last = args.pseudo_negative_ranks
    triplets, stats = pseudo_label_triplets(queries, pool, model, BM25Retriever(),
                                            agree_depth=args.pseudo_agree_depth, negative_ranks=(first, last),
                                            seed=args.seed)
    if len(triplets) == 0 and not have_included:
        raise PipelineError(f"no query could be labelled: of {stats.queries_read:,}, "
                            f"{stats.queries_without_agreement:,} had no passage that the model and BM25 both "
                            f"rank in their top {args.pseudo_agree_depth}", args.label_model)
    info(f"✅ {len(triplets):,} pseudo-labelled triplets from {stats.queries_read:,} queries "
         f"({stats.queries_without_agreement:,} without agreement, {stats.queries_without_negative:,} without "
         "a negative)")
    description = (f"{', '.join(map(str, args.queries))} labelled by {args.label_model} + BM25 over "
                   + "; ".join(s.description for s in sources))
    identity = "|".join([str(args.label_model), *(s.identity() for s in sources)])
    return triplets, stats, description, identity, stats.queries_read


def inverse_cloze(args: argparse.Namespace) -> tuple[Triplets, ClozeStats, str, str, int]:
    """Inverse-cloze triplets from every source named (each --dataset-path on its own, or the hub)."""
    sources = passage_sources(args)

    def passages() -> Iterator[tuple[str, str]]:
        return all_passages(sources, args.max_samples)

    miner = None
    if args.ict_mine_negatives is not None:  # a bad model file fails before the passages are cut
        from msmarco_search.core.device import pick_device
        from msmarco_search.search.dense import TwoTowerRetriever

        miner = TwoTowerRetriever.from_file(args.ict_mine_negatives, device=pick_device(args.device))
    triplets, stats = inverse_cloze_triplets(passages(), seed=args.seed, per_passage=args.ict_per_passage,
                                             max_query_words=args.ict_max_query_words,
                                             min_words=args.ict_min_words,
                                             keep_query_probability=args.ict_keep_query,
                                             keyword_share=args.ict_keywords)
    if len(triplets) == 0:
        raise PipelineError(f"no inverse-cloze triplets could be made: {stats.passages_read} passages read, "
                            f"{stats.passages_too_short} shorter than --ict-min-words {args.ict_min_words} "
                            "(at least two usable passages are needed)")
    info(f"✅ {len(triplets):,} inverse-cloze triplets from {stats.passages_read:,} passages "
         f"({stats.passages_too_short:,} too short; {stats.sentence_queries:,} sentence, "
         f"{stats.span_queries:,} span and {stats.keyword_queries:,} keyword pseudo-queries)")
    if miner is not None:
        triplets, mined = mined_negatives(args, triplets, passages(), miner)
        # both counts go to the metadata, and which model mined (its id survives a renamed file)
        stats = SimpleNamespace(**vars(stats), **vars(mined), negative_model_id=miner.metadata.get("model_id"))
    return (triplets, stats, "; ".join(s.description for s in sources), "|".join(s.identity() for s in sources),
            stats.passages_read)


def mined_negatives(args: argparse.Namespace, triplets: Triplets, passages: Iterator[tuple[str, str]],
                    model: Any) -> tuple[Triplets, Any]:
    """The triplets with negatives mined by --ict-mine-negatives (``model``, a ``TwoTowerRetriever``) over the
    same passages (``mining``)."""
    from msmarco_search.labels.mining import mine_negatives

    pool = passage_pool(passages)
    first, last = args.pseudo_negative_ranks
    if first > len(pool):
        raise PipelineError(f"--pseudo-negative-ranks {first} {last}: there are only {len(pool):,} passages to rank",
                            args.ict_mine_negatives)
    info(f"Mining negatives for {len(triplets):,} pseudo-queries over {len(pool):,} passages with "
         f"{args.ict_mine_negatives} (its ranks {first}-{last})")
    triplets, stats = mine_negatives(triplets, pool, model, (first, last), seed=args.seed)
    info(f"✅ {stats.triplets_mined:,} negatives mined ({stats.triplets_kept_as_they_were:,} triplets kept their "
         "random one: no candidate that is not a near-duplicate of the positive)")
    return triplets, stats


def _plain(arguments: dict[str, Any]) -> dict[str, Any]:
    """The arguments as JSON values (paths as text; ``--split``'s default, a ``str`` subclass, as plain text: the
    triplets pickle holds plain data only)."""
    return {key: [str(p) if isinstance(p, Path) else p for p in value] if isinstance(value, list)
            else str(value) if isinstance(value, (Path, str)) else value for key, value in arguments.items()}

