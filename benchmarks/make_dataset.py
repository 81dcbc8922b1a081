"""Make an MS MARCO-shaped data set of a given size, FOR SPEED MEASUREMENTS ONLY.

The rows are in the Hugging Face ``microsoft/ms_marco`` layout (one JSON object per line: query, query_id,
query_type, passages{is_selected, passage_text, url}, answers, wellFormedAnswers), ``--passages`` per query
(10 by default: 50,000 queries x 10 passages is the MS MARCO v1.1 training scale), one selected passage per
query except for about 5 % of the queries (as in v1.1, some have none).

Text: where ``../shared/data`` is present, real MS MARCO queries (``msmarco-queries``) and passages made by
reshuffling the sentences of the two real passage pools (TREC DL 2019 and 2021 collections), so word
statistics, lengths and vocabulary growth are real-like while every passage is distinct; otherwise synthetic
text from a Zipf-distributed vocabulary. Which passage is "selected" is random: the relevance labels mean
nothing, so never measure quality on this data.

``--format triples`` writes the official ``triples.train.small.tsv`` layout instead
(``query<TAB>positive<TAB>negative``, one triplet per line), for the streaming benchmark.

``--format collection`` writes a ``collection.tsv`` of ``--size`` DISTINCT passages (``pid<TAB>text``, ids
``0`` to ``N - 1``) for the scale benchmark (``bench_scale.sh``): each passage 2-5 sentences drawn from the real
pools (``--pools``, default the DL 2019 and 2021 collections), no two passages equal (each one's 8-byte digest
is kept in ``DigestSet``; a passage drawn again is drawn anew), the same file for the same ``--seed``. Real text
or nothing: without the pools it stops. With ``--queries-output``, the first ``--queries`` real MS MARCO dev
queries too (the recall queries). Written as it is made (memory: the pools' sentences and 8-16 bytes a passage
for the digests), to a temporary file renamed into place. A size that would not fit is refused before any work:
the collection and the index built over it (``search.py index``: float16 vectors of 300 dimensions, IVF-PQ and
BM25) on the output's disk, or that build's memory (estimated from its measured peaks at 500K and 8.8M passages)
in the memory available.

    uv run benchmarks/make_dataset.py --size 50000 --output /tmp/bench/rows_50k.jsonl
    uv run benchmarks/make_dataset.py --size 1000000 --format triples --output /tmp/bench/triples_1m.tsv
    uv run benchmarks/make_dataset.py --format collection --size 500000 --output /tmp/scale/collection.tsv \\
        --queries-output /tmp/scale/dev1000.tsv
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from msmarco_search.cli import run
from msmarco_search.core.errors import PipelineError
from msmarco_search.core.report import progress
from msmarco_search.core.resources import available_memory, check_disk
from msmarco_search.core.resources import size as _size
from msmarco_search.io.atomic import atomic_write
from msmarco_search.io.msmarco_files import read_queries
from msmarco_search.io.outputs import OutputKind, claim_output, release

ROOT = Path(__file__).resolve().parents[1]
# a made-up dataset looks like real data (rows .jsonl, triples TSV), so it replaces nothing that is there
DATASET_OUTPUT = OutputKind("made-up dataset", lambda path: "this script never replaces a file that holds anything")
SHARED_DATA = ROOT.parent / "shared" / "data"
QUERY_FILES = [f"msmarco-queries/queries.train.sample10k-{i}.tsv" for i in range(1, 6)] + [
    "msmarco-queries/queries.dev.small.tsv", "msmarco-trec-dl-2019/queries.dl19.tsv",
    "msmarco-v2-trec-dl-2021/queries.dl21.tsv"]
COLLECTIONS = ["msmarco-trec-dl-2019/collection.tsv", "msmarco-v2-trec-dl-2021/collection.tsv"]
DEV_QUERIES = "msmarco-queries/queries.dev.small.tsv"
BATCH = 65_536  # passages drawn at once (a fixed number: the file a seed gives depends on it)
# What the scale benchmark's build adds a passage on disk: float16 vectors of 300 dimensions (600 bytes), BM25's
# postings (344 bytes over 500K distinct passages), IVF-PQ's codes and ids (58 bytes), ids and offsets (about 20
# bytes). Memory, measured: the whole build's peak was 1.46 GiB at 500K distinct passages (float32, IVF-PQ and its
# recall measurement in the same process), and at 8.8M passages 1.56 GB for dense + BM25 and 2.2 GB for the faiss
# sweep: a base of 1.5 GiB (the model, the recall's score blocks) and 256 bytes a passage covers each.
INDEX_BYTES_PER_PASSAGE = 1024
BUILD_MEMORY_PER_PASSAGE = 256
BUILD_MEMORY_BASE = 3 << 29
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _second_column(path: Path) -> list[str]:
    texts = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            parts = line.rstrip("\n").split("\t")
            if len(parts) >= 2 and parts[1].strip():
                texts.append(parts[1].strip())
    return texts


class RealText:
    """Real queries; passages of 2-5 sentences drawn from the real passage pools (distinct, real-like)."""

    name = "real (../shared/data: MS MARCO queries; sentences of the DL19 + DL21 passage pools, reshuffled)"

    def __init__(self, data: Path, rng: np.random.Generator):
        self.queries = [q for f in QUERY_FILES if (data / f).is_file() for q in _second_column(data / f)]
        self.sentences = [s for f in COLLECTIONS if (data / f).is_file()
                          for passage in _second_column(data / f) for s in _SENTENCE_END.split(passage) if s]
        self.rng = rng

    def query(self, index: int) -> str:
        # queries repeat once the real ones run out; a suffix number keeps them distinct
        text = self.queries[index % len(self.queries)]
        return text if index < len(self.queries) else f"{text} {index // len(self.queries)}"

    def passage(self) -> str:
        picks = self.rng.integers(0, len(self.sentences), size=int(self.rng.integers(2, 6)))
        return " ".join(self.sentences[i] for i in picks)


class SyntheticText:
    """Zipf-distributed made-up words: the shape of real text (lengths, a long vocabulary tail), no meaning."""

    name = "synthetic (Zipf-distributed made-up words; ../shared/data not found)"

    def __init__(self, rng: np.random.Generator, vocabulary: int = 200_000):
        self.rng = rng
        self.vocabulary = vocabulary

    def _words(self, count: int) -> str:
        ids = np.minimum(self.rng.zipf(1.15, size=count), self.vocabulary)
        return " ".join(f"w{i}" for i in ids)

    def query(self, index: int) -> str:
        return self._words(int(self.rng.integers(3, 10)))

    def passage(self) -> str:
        return self._words(int(self.rng.integers(30, 110))) + "."


class DigestSet:
    """A set of 8-byte digests in an open-addressing table of ``uint64`` (linear probing, a batch at a time in
    numpy): 8 bytes a slot, at least 4/3 slots a digest, so 8.8M passages take 128 MiB where a Python set of ints
    takes ten times that. Digest 0 marks an empty slot, so a digest of 0 is kept as 1 (two texts sharing a
    digest are taken as equal: a passage drawn again, which costs one more draw, never a repeated passage)."""

    def __init__(self, capacity: int):
        slots = 1 << max(10, math.ceil(math.log2(capacity * 4 / 3 + 1)))
        self.table = np.zeros(slots, dtype=np.uint64)
        self.mask = np.uint64(slots - 1)
        self.capacity, self.count = capacity, 0

    def add(self, digests: np.ndarray) -> np.ndarray:
        """Add ``digests``; returns which were new (not in the set, and not earlier in the batch)."""
        digests = np.where(digests == 0, np.uint64(1), digests).astype(np.uint64)
        new = np.zeros(len(digests), dtype=bool)
        new[np.unique(digests, return_index=True)[1]] = True  # the first of each digest in the batch
        if self.count + int(new.sum()) > self.capacity:
            raise ValueError(f"more than the {self.capacity:,} digests this set was made for")
        pending = np.flatnonzero(new)
        slots = digests[pending] & self.mask
        while pending.size:
            found = self.table[slots]
            seen = found == digests[pending]
            new[pending[seen]] = False
            empty = np.flatnonzero(found == 0)
            # each empty slot goes to one of the digests that reached it (numpy keeps the last write)
            self.table[slots[empty]] = digests[pending[empty]]
            placed = np.zeros(len(pending), dtype=bool)
            placed[empty] = self.table[slots[empty]] == digests[pending[empty]]
            done = seen | placed
            pending, slots = pending[~done], (slots[~done] + np.uint64(1)) & self.mask
        self.count += int(new.sum())
        return new


def digest(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


class Sentences:
    """The sentences of real passage pools, drawn 2-5 at a time into passages."""

    def __init__(self, pools: list[Path]):
        self.sentences = [s for pool in pools for passage in _second_column(pool)
                          for s in _SENTENCE_END.split(passage) if s]
        if not self.sentences:
            raise PipelineError("holds no passage text to take sentences from", pools[0])
        self.bytes_per_passage = 3.5 * sum(len(s.encode("utf-8")) + 1 for s in self.sentences) / len(self.sentences)

    def distinct_passages(self) -> int:
        """How many different passages 2-5 of the sentences make (drawn with replacement, in order)."""
        count = len(self.sentences)
        return sum(count ** k for k in range(2, 6))

    def draw(self, rng: np.random.Generator, count: int) -> list[str]:
        lengths = rng.integers(2, 6, size=count)
        picks = rng.integers(0, len(self.sentences), size=int(lengths.sum())).tolist()
        ends = np.cumsum(lengths).tolist()
        sentences, start = self.sentences, 0
        passages = []
        for end in ends:
            passages.append(" ".join([sentences[i] for i in picks[start:end]]))
            start = end
        return passages


def distinct_collection(sentences: Sentences, size: int, rng: np.random.Generator) -> Iterator[str]:
    """``size`` distinct passages, in the order drawn: a passage equal to an earlier one is left out and the
    next batch draws one more."""
    seen = DigestSet(size)
    made = 0
    while made < size:
        passages = sentences.draw(rng, min(BATCH, size - made))
        new = seen.add(np.fromiter(map(digest, passages), dtype=np.uint64, count=len(passages)))
        for passage, keep in zip(passages, new.tolist(), strict=True):
            if keep:
                yield passage
        made += int(new.sum())


def check_collection_fits(size: int, sentences: Sentences, output: Path) -> None:
    """Refuse, before any work, a collection the machine cannot hold with the index the benchmark builds over it
    (disk), or whose build would outgrow the memory (both estimated)."""
    if size > sentences.distinct_passages() // 2:
        raise PipelineError(f"{size:,} distinct passages are too many for {len(sentences.sentences):,} sentences "
                            f"(at most about {sentences.distinct_passages() // 2:,}); lower --size or add --pools")
    collection = size * (sentences.bytes_per_passage + len(str(size)) + 1)
    check_disk(collection + size * INDEX_BYTES_PER_PASSAGE, output.parent,
               f"a collection of {size:,} passages ({_size(collection)}) and its "
               "index", "lower --size or write elsewhere")
    needed = BUILD_MEMORY_BASE + size * BUILD_MEMORY_PER_PASSAGE
    available = available_memory()
    if available is not None and needed > available:
        raise PipelineError(f"indexing {size:,} passages would need about {_size(needed)} of memory, and "
                            f"{_size(available)} are available; lower --size")


def rows(text: RealText | SyntheticText, size: int, per_query: int, rng: np.random.Generator) -> Iterator[dict]:
    for index in range(size):
        passages = [text.passage() for _ in range(per_query)]
        selected = [0] * per_query
        if rng.random() >= 0.05:
            selected[int(rng.integers(per_query))] = 1
        yield {"query": text.query(index), "query_id": index, "query_type": "description", "answers": [],
               "wellFormedAnswers": [],
               "passages": {"is_selected": selected, "passage_text": passages,
                            "url": [f"http://example.com/{index}/{k}" for k in range(per_query)]}}


def _write_new(path: Path, write) -> None:
    """``write(tmp)`` renamed into place at ``path``, which must not hold anything yet (claimed meanwhile)."""
    if path.is_file() and path.stat().st_size:
        raise PipelineError("already exists, and this script replaces no file: choose another --output", path)
    output = claim_output(path, DATASET_OUTPUT, flag="--output")
    try:
        atomic_write(output, write)
    finally:
        release(output)


def write_collection(args: argparse.Namespace) -> None:
    """``--format collection``: ``args.size`` distinct passages of real sentences, and the dev queries."""
    pools = args.pools or [SHARED_DATA / f for f in COLLECTIONS]
    missing = [pool for pool in pools if not pool.is_file()]
    if missing:
        raise PipelineError("not found: the distinct collection is made of real passages' sentences (give the "
                            "pools with --pools)", missing[0])
    if args.queries_output is not None and not args.queries_from.is_file():
        raise PipelineError("not found: the recall queries are real MS MARCO dev queries (--queries-from)",
                            args.queries_from)
    for path in (args.output, args.queries_output):
        if path is not None and path.is_file() and path.stat().st_size:
            raise PipelineError("already exists, and this script replaces no file: choose another output", path)
    sentences = Sentences(pools)
    check_collection_fits(args.size, sentences, args.output)
    rng = np.random.default_rng(args.seed)

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as out:
            passages = distinct_collection(sentences, args.size, rng)
            for pid, passage in enumerate(progress(passages, desc="Distinct passages", total=args.size,
                                                   unit="passage")):
                out.write(f"{pid}\t{passage}\n")

    _write_new(args.output, write)
    print(f"wrote {args.output} ({args.size:,} distinct passages, ids 0-{args.size - 1:,}, seed {args.seed}: "
          f"2-5 sentences each of {len(sentences.sentences):,} from {', '.join(p.name for p in pools)} "
          f"in {', '.join(p.parent.name for p in pools)})", file=sys.stderr)
    if args.queries_output is not None:
        queries = list(read_queries(args.queries_from).items())[:args.queries]

        def write_queries(tmp: Path) -> None:
            with open(tmp, "w", encoding="utf-8") as out:
                out.writelines(f"{qid}\t{text}\n" for qid, text in queries)

        _write_new(args.queries_output, write_queries)
        print(f"wrote {args.queries_output} (the first {len(queries):,} queries of {args.queries_from})",
              file=sys.stderr)


def write_rows_or_triples(args: argparse.Namespace) -> None:
    rng = np.random.default_rng(args.seed)
    real = not args.synthetic and all((SHARED_DATA / f).is_file() for f in COLLECTIONS[:1] + QUERY_FILES[:1])
    text = RealText(SHARED_DATA, rng) if real else SyntheticText(rng)

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as out:
            if args.format == "rows":
                for row in rows(text, args.size, args.passages, rng):
                    out.write(json.dumps(row) + "\n")
            else:
                for index in range(args.size):
                    out.write(f"{text.query(index)}\t{text.passage()}\t{text.passage()}\n")

    _write_new(args.output, write)
    print(f"wrote {args.output} ({args.size:,} {'rows' if args.format == 'rows' else 'triplets'}; "
          f"text: {text.name}). For speed measurements only: the relevance labels are random.", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    from msmarco_search.cli.arguments import positive_int, seed_int

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=positive_int, default=50_000,
                        help="queries (rows), lines (triples) or passages (collection) (50000)")
    parser.add_argument("--passages", type=positive_int, default=10, help="passages per query (10)")
    parser.add_argument("--format", choices=("rows", "triples", "collection"), default="rows",
                        help="rows: HF ms_marco row layout .jsonl (default); triples: triples.train TSV; "
                             "collection: collection.tsv of distinct passages")
    parser.add_argument("--output", type=Path, required=True, help="file to write")
    parser.add_argument("--seed", type=seed_int, default=0)
    parser.add_argument("--synthetic", action="store_true", help="synthetic text even when real data is present "
                        "(rows and triples)")
    parser.add_argument("--pools", type=Path, nargs="+", default=None,
                        help="collection: the passage pools (collection.tsv files) whose sentences make the "
                             "passages (default: the DL 2019 and DL 2021 pools of ../shared/data)")
    parser.add_argument("--queries-output", type=Path, default=None,
                        help="collection: also write the first --queries dev queries here")
    parser.add_argument("--queries", type=positive_int, default=1000, help="how many (1000)")
    parser.add_argument("--queries-from", type=Path, default=SHARED_DATA / DEV_QUERIES,
                        help="the queries TSV they are taken from (MS MARCO's dev queries in ../shared/data)")
    args = parser.parse_args(argv)
    if args.format == "collection":
        write_collection(args)
    else:
        write_rows_or_triples(args)
    return 0


if __name__ == "__main__":
    run(main)
