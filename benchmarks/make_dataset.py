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

    uv run benchmarks/make_dataset.py --size 50000 --output /tmp/bench/rows_50k.jsonl
    uv run benchmarks/make_dataset.py --size 1000000 --format triples --output /tmp/bench/triples_1m.tsv
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from msmarco_search.errors import PipelineError, run_cli
from msmarco_search.fileio import OutputKind, atomic_write, claim_output, release

ROOT = Path(__file__).resolve().parents[1]
# a made-up dataset looks like real data (rows .jsonl, triples TSV), so it replaces nothing that is there
DATASET_OUTPUT = OutputKind("made-up dataset", lambda path: "this script never replaces a file that holds anything")
SHARED_DATA = ROOT.parent / "shared" / "data"
QUERY_FILES = [f"msmarco-queries/queries.train.sample10k-{i}.tsv" for i in range(1, 6)] + [
    "msmarco-queries/queries.dev.small.tsv", "msmarco-trec-dl-2019/queries.dl19.tsv",
    "msmarco-v2-trec-dl-2021/queries.dl21.tsv"]
COLLECTIONS = ["msmarco-trec-dl-2019/collection.tsv", "msmarco-v2-trec-dl-2021/collection.tsv"]
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


def main(argv: list[str] | None = None) -> int:
    from msmarco_search.arguments import positive_int, seed_int

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=positive_int, default=50_000,
                        help="queries (rows) or, for triples, lines (50000)")
    parser.add_argument("--passages", type=positive_int, default=10, help="passages per query (10)")
    parser.add_argument("--format", choices=("rows", "triples"), default="rows",
                        help="rows: HF ms_marco row layout .jsonl (default); triples: triples.train TSV")
    parser.add_argument("--output", type=Path, required=True, help="file to write")
    parser.add_argument("--seed", type=seed_int, default=0)
    parser.add_argument("--synthetic", action="store_true", help="synthetic text even when real data is present")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    real = not args.synthetic and all((SHARED_DATA / f).is_file() for f in COLLECTIONS[:1] + QUERY_FILES[:1])
    text = RealText(SHARED_DATA, rng) if real else SyntheticText(rng)
    if args.output.is_file() and args.output.stat().st_size:
        raise PipelineError("already exists, and this script replaces no file: choose another --output", args.output)
    output = claim_output(args.output, DATASET_OUTPUT, flag="--output")
    try:
        def write(tmp: Path) -> None:
            with open(tmp, "w", encoding="utf-8") as out:
                if args.format == "rows":
                    for row in rows(text, args.size, args.passages, rng):
                        out.write(json.dumps(row) + "\n")
                else:
                    for index in range(args.size):
                        out.write(f"{text.query(index)}\t{text.passage()}\t{text.passage()}\n")

        atomic_write(output, write)
    finally:
        release(output)
    print(f"wrote {args.output} ({args.size:,} {'rows' if args.format == 'rows' else 'triplets'}; "
          f"text: {text.name}). For speed measurements only: the relevance labels are random.", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_cli(main)
