"""The evaluate command's systems, from its flags: which are asked for (and what each needs beside it), the
two-tower models by name, BM25 built or saved, the CBOW rows with the embeddings the models started from."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from msmarco_search.core.commands import command
from msmarco_search.core.device import pick_device
from msmarco_search.core.errors import PipelineError
from msmarco_search.core.report import info, warn
from msmarco_search.index.bm25 import BM25Settings
from msmarco_search.index.layout import BM25_DIR
from msmarco_search.search.fusion import FUSIONS

if TYPE_CHECKING:
    from msmarco_search.search.retrieval import BM25Retriever, Retriever

DEFAULT_EMBEDDINGS = Path("checkpoints/msmarco_word2vec.pt")

SYSTEMS = ("two-tower", "bm25", "cbow", "hybrid", "two-tower-prf", "hybrid-prf", "teacher")


# what each system needs beside it: the -prf rows move the two-tower's query by a first ranking (its own, or
# the hybrids')
NEEDS = {"hybrid": ("two-tower", "bm25"), "two-tower-prf": ("two-tower",), "hybrid-prf": ("hybrid",)}


def split_names(text: str, allowed: tuple[str, ...], flag: str) -> list[str]:
    """The names of a comma list, each once; an unknown name, or a list that names nothing, is an error."""
    values = list(dict.fromkeys(v.strip() for v in text.split(",") if v.strip()))
    unknown = [v for v in values if v not in allowed]
    if unknown:
        raise PipelineError(f"{flag}: unknown value(s) {', '.join(unknown)} (use {', '.join(allowed)})")
    if not values:
        raise PipelineError(f"{flag} {text!r} names nothing (use {', '.join(allowed)})")
    return values


def resolve_embeddings(args: argparse.Namespace) -> None:
    """The CBOW baselines use the vectors the model was trained from: a zero-shot row computed from other
    vectors would compare the model with a baseline it never started from."""
    recorded = None
    if args.model:
        from msmarco_search.io.safe_load import KIND_TWO_TOWER, load_torch

        first = parse_models(args.model)[0][0]
        if first.is_file():
            embeddings_file = load_torch(first, KIND_TWO_TOWER).get("embeddings_file")
            recorded = Path(embeddings_file) if isinstance(embeddings_file, str) else None
    args.embeddings_given = args.embeddings is not None
    if args.embeddings is None:
        args.embeddings = recorded if recorded is not None and recorded.is_file() else DEFAULT_EMBEDDINGS


def embeddings_match(args: argparse.Namespace, towers: list[Retriever], vocab_fingerprint: str) -> bool:
    """Whether the CBOW embeddings are those the models were trained from (same vocabulary). Given with
    --embeddings, a mismatch is refused; found by default, the CBOW rows are left out with a warning."""
    for tower in towers:
        trained = tower.metadata.get("vocabulary_fingerprint")
        if trained is None or trained == vocab_fingerprint:
            continue
        problem = (f"these CBOW embeddings are not the ones {tower.path} was trained from (another vocabulary; "
                   f"it was trained from {tower.metadata.get('embeddings_file')})")
        if args.embeddings_given:
            raise PipelineError(f"{problem}; pass those, or leave --embeddings out", args.embeddings)
        warn(f"{args.embeddings}: {problem}; leaving the CBOW rows out (pass --embeddings to choose)")
        return False
    return True


def choose_systems(args: argparse.Namespace) -> list[str]:
    """The systems to evaluate: --systems, or all that the given files allow; --teacher adds its reference row."""
    teacher = ["teacher"] if args.teacher is not None else []
    if args.systems is None:
        chosen = ["bm25"]
        if args.embeddings.is_file():
            chosen.append("cbow")
        if args.model:
            chosen = ["two-tower", *chosen, "hybrid", "two-tower-prf", "hybrid-prf"]
        return chosen + teacher
    if args.systems.strip() == "none":
        return []
    chosen = split_names(args.systems, SYSTEMS, "--systems")
    if {"two-tower", "hybrid", "two-tower-prf", "hybrid-prf"} & set(chosen) and not args.model:
        raise PipelineError("--systems two-tower/hybrid/two-tower-prf/hybrid-prf need at least one --model")
    if "teacher" in chosen and args.teacher is None:
        raise PipelineError("--systems teacher needs --teacher MODEL (a sentence-transformers folder or hub name)")
    chosen += [name for name in teacher if name not in chosen]
    for system in ("hybrid-prf", "hybrid", "two-tower-prf"):  # hybrid-prf first: it adds hybrid, which adds more
        if system in chosen:
            chosen += [need for need in NEEDS[system] if need not in chosen]
    return chosen


def _bm25(args: argparse.Namespace) -> BM25Retriever:
    """BM25 with the flags' settings: built over the task's pool, or with --index-dir the BM25 index saved
    with a search index (refused unless it was built with these settings over this --collection)."""
    from msmarco_search.index.load import load_index, saved_bm25_settings
    from msmarco_search.search.retrieval import BM25Retriever

    settings = BM25Settings(args.bm25_k1, args.bm25_b, args.bm25_stemmer)
    if args.index_dir is None:
        return BM25Retriever(settings)
    if args.collection is None:
        raise PipelineError("--index-dir (a saved BM25 index) needs the official files task (--collection ...)")
    index = load_index(args.index_dir)
    if saved_bm25_settings(index) is None:
        raise PipelineError(f"this index has no saved BM25 index; build one with `{command('search')} index`",
                            args.index_dir)
    index.close()
    return BM25Retriever(settings, "bm25", Path(args.index_dir) / BM25_DIR, args.collection)


def build_systems(args: argparse.Namespace, chosen: list[str]) -> list[Retriever]:
    from msmarco_search.data.vocab import vocabulary_fingerprint
    from msmarco_search.evaluation.evaluate import hybrid_name
    from msmarco_search.search.dense import CbowRetriever, TwoTowerRetriever
    from msmarco_search.search.hybrid import FeedbackRetriever, HybridRetriever

    systems: list[Retriever] = []
    towers: list[Retriever] = []
    if "two-tower" in chosen:
        device = pick_device(args.device)
        paths, names = parse_models(args.model)
        for path, name in zip(paths, names, strict=True):
            info(f"Loading two-tower model {path}")
            towers.append(TwoTowerRetriever.from_file(path, name, device))
        systems += towers
    bm25 = None
    if "bm25" in chosen:
        bm25 = _bm25(args)
        systems.append(bm25)
    if "cbow" in chosen:
        from msmarco_search.embeddings.cbow import load_embeddings

        if not args.embeddings.is_file():
            raise PipelineError("CBOW embeddings not found; pass --embeddings or leave cbow out of --systems",
                                args.embeddings)
        matrix, vocab, _ = load_embeddings(args.embeddings)
        if embeddings_match(args, towers, vocabulary_fingerprint(vocab)):
            systems += [CbowRetriever(matrix, vocab, "mean", embeddings_path=args.embeddings),
                        CbowRetriever(matrix, vocab, "idf", embeddings_path=args.embeddings)]
    hybrids: list[Retriever] = []
    if "hybrid" in chosen:
        for method in split_names(args.fusion, FUSIONS, "--fusion"):
            hybrids += [HybridRetriever(tower, bm25, method, args.fusion_weight, args.rrf_k, args.fusion_depth,
                                        hybrid_name(method, tower.name)) for tower in towers]
        systems += hybrids
    if "two-tower-prf" in chosen:
        systems += [FeedbackRetriever(tower, tower, args.feedback_depth, args.feedback_weight) for tower in towers]
    if "hybrid-prf" in chosen:
        systems += [FeedbackRetriever(hybrid.dense, hybrid, args.feedback_depth, args.feedback_weight)
                    for hybrid in hybrids]
    if "teacher" in chosen:
        systems.append(teacher_system(args))
    return systems


def teacher_system(args: argparse.Namespace) -> Retriever:
    """The teacher's row (``--teacher``): the reference a static two-tower learns toward, never a system that is
    shipped. Its vectors of the collection and the queries come from its cache under --data-dir, so the
    collection is encoded once for every evaluation (and not at all after the triplets command labelled it)."""
    from msmarco_search.search.dense import TeacherRetriever
    from msmarco_search.teacher.cache import open_teacher_cache

    return TeacherRetriever(open_teacher_cache(args.teacher, args.data_dir, str(pick_device(args.device)),
                                               args.teacher_batch_size))


def parse_models(values: list[str]) -> tuple[list[Path], list[str]]:
    """``[NAME=]PATH`` values as paths and system names (``two-tower`` alone, else ``two-tower[NAME]``)."""
    paths, labels = [], []
    for value in values:
        label, separator, path = value.partition("=")
        if not separator or "/" in label or not label:
            label, path = "", value
        paths.append(Path(path))
        labels.append(label)
    if len(paths) == 1 and not labels[0]:
        return paths, ["two-tower"]
    stems = [label or p.stem.removeprefix("two_tower_model_") for label, p in zip(labels, paths, strict=True)]
    if len(set(stems)) < len(stems):
        stems = [f"{i + 1}-{stem}" for i, stem in enumerate(stems)]
    return paths, [f"two-tower[{stem}]" for stem in stems]
