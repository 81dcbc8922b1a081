"""Inputs too big for memory, read in chunks: the official triples TSV.

``triples.train.small.tsv`` (39M lines of ``query<TAB>positive<TAB>negative``) is read a chunk of lines at a
time, each chunk tokenised at once (``Vocabulary.encode_chunk``) and appended to memory-mapped token arrays on
disk (``TokenArrayWriter``). No more than one chunk of strings is ever alive, so memory stays flat as the input
grows; the arrays are cached under a key of the input file, the vocabulary and the length limits, and reused
by the next run. (The collection is streamed by ``sources.read_collection``.)
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice
from pathlib import Path

from .arrays import TokenArrays, TokenArrayWriter
from .batches import SIDES, TripletArrays
from .errors import PipelineError
from .fileio import cache_key, file_identity
from .report import info, progress
from .sources import iter_tsv_lines
from .text import TOKENIZER_VERSION
from .triplets import Triplets
from .vocab import Vocabulary, vocabulary_fingerprint

CHUNK_LINES = 10_000  # measured: 50k-line chunks peaked 270 MiB higher and ran slower (docs/benchmarks.md)


TRIPLES = "triples (query<TAB>positive<TAB>negative)"


def read_tsv_chunks(path: str | Path, columns: int, chunk_lines: int = CHUNK_LINES, what: str = TRIPLES
                    ) -> Iterator[list[list[str]]]:
    """Column lists of each chunk of ``chunk_lines`` lines, read by ``sources.iter_tsv_lines`` (its rules)."""
    rows = iter_tsv_lines(path, columns, what)
    while True:
        # fields go straight into the columns: a chunk of 10,000 live row lists would wake the cyclic garbage
        # collector over and over (measured: 60 % slower)
        chunk: list[list[str]] = [[] for _ in range(columns)]
        for fields in islice(rows, chunk_lines):
            for column, value in zip(chunk, fields, strict=True):
                column.append(value)
        if not chunk[0]:
            return
        yield chunk


def _cache_dir(path: Path, cache_dir: Path, prefix: str, vocab: Vocabulary, *limits: int) -> Path:
    key = cache_key(file_identity(path), vocabulary_fingerprint(vocab), TOKENIZER_VERSION, *limits)
    return Path(cache_dir) / f"{prefix}_{key}"


def triples_tsv_arrays(path: str | Path, vocab: Vocabulary, max_query_length: int, max_passage_length: int,
                       cache_dir: str | Path, chunk_lines: int = CHUNK_LINES) -> TripletArrays:
    """The official ``query<TAB>positive<TAB>negative`` file as memory-mapped triplet token arrays."""
    path = Path(path)
    cache = _cache_dir(path, Path(cache_dir), "triples_tokens", vocab, max_query_length, max_passage_length)
    if (cache / "negatives.offsets.npy").is_file():
        try:
            arrays = TripletArrays(*(TokenArrays.load(cache, side, vocab_size=len(vocab)) for side in SIDES))
            info(f"📦 Loading cached token arrays from {cache}")
            return arrays
        except PipelineError:
            pass  # damaged: rebuilt below
    limits = (max_query_length, max_passage_length, max_passage_length)
    writers = [TokenArrayWriter(cache, side) for side in SIDES]
    try:
        bar = progress(None, desc=f"Tokenising {path.name}", unit="triplet", mininterval=1.0)
        for chunk in read_tsv_chunks(path, 3, chunk_lines):
            for writer, texts, limit in zip(writers, chunk, limits, strict=True):
                writer.append(vocab.encode_chunk(texts, limit))
            bar.update(len(chunk[0]))
        bar.close()
    except BaseException:
        for writer in writers:
            writer.abort()
        raise
    if writers[0].sequences == 0:
        for writer in writers:
            writer.abort()
        raise PipelineError("no triplets in this file", path)
    arrays = TripletArrays(*(writer.close() for writer in writers))
    info(f"✅ Tokenised {len(arrays):,} triplets into {cache}")
    return arrays


def triples_tsv_head(path: str | Path, count: int = 20) -> Triplets:
    """The first ``count`` triplets as texts (the training script's quick similarity test reads them)."""
    triplets = Triplets()
    chunk = next(read_tsv_chunks(path, 3, count), [[], [], []])
    for index, (query, positive, negative) in enumerate(zip(*chunk, strict=True)):
        triplets.query_ids.append(f"line{index + 1}")
        triplets.queries.append(query)
        triplets.positive_ids.append(f"line{index + 1}p")
        triplets.positives.append(positive)
        triplets.negative_ids.append(f"line{index + 1}n")
        triplets.negatives.append(negative)
    return triplets
