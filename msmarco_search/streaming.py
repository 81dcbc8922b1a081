"""Inputs too big for memory, read in chunks: the official triples TSV and the 8.8M-passage collection.

``triples.train.small.tsv`` (39M lines of ``query<TAB>positive<TAB>negative``) and ``collection.tsv``
(``pid<TAB>text``) are read a chunk of lines at a time, each chunk tokenised at once
(``Vocabulary.encode_chunk``) and appended to memory-mapped token arrays on disk (``TokenArrayWriter``). No
more than one chunk of strings is ever alive, so memory stays flat as the input grows; the arrays are cached
under a key of the input file, the vocabulary and the length limits, and reused by the next run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

from .arrays import TokenArrays, TokenArrayWriter
from .batches import SIDES, TripletArrays
from .errors import PipelineError
from .report import info, progress
from .text import TOKENIZER_VERSION
from .triplets import Triplets
from .vocab import Vocabulary, vocabulary_fingerprint

CHUNK_LINES = 10_000  # measured: 50k-line chunks peaked 270 MiB higher and ran slower (docs/benchmarks.md)


def read_tsv_chunks(path: str | Path, columns: int, chunk_lines: int = CHUNK_LINES) -> Iterator[list[list[str]]]:
    """Column lists of each chunk of ``chunk_lines`` lines; a line with another column count is an error."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError("file not found", path)
    line_number = 0
    with open(path, encoding="utf-8", errors="replace", newline="\n") as handle:
        while lines := list(islice(handle, chunk_lines)):
            chunk: list[list[str]] = [[] for _ in range(columns)]
            for line in lines:
                line_number += 1
                parts = line.rstrip("\r\n").split("\t")
                if len(parts) != columns:
                    if not line.strip():
                        continue
                    raise PipelineError(f"line {line_number}: expected {columns} tab-separated columns, found "
                                        f"{len(parts)}", path)
                for column, part in zip(chunk, parts, strict=True):
                    column.append(part)
            yield chunk


def _cache_dir(path: Path, cache_dir: Path, prefix: str, vocab: Vocabulary, *limits: int) -> Path:
    stat = path.stat()
    key = hashlib.sha256("|".join([str(path.resolve()), str(stat.st_size), str(stat.st_mtime_ns),
                                   vocabulary_fingerprint(vocab), TOKENIZER_VERSION, *map(str, limits)]).encode())
    return Path(cache_dir) / f"{prefix}_{key.hexdigest()[:16]}"


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


def collection_arrays(path: str | Path, vocab: Vocabulary, max_length: int, cache_dir: str | Path,
                      chunk_lines: int = CHUNK_LINES) -> tuple[TokenArrays, Path]:
    """``collection.tsv`` (``pid<TAB>text``) as memory-mapped token arrays, and a ``pids.txt`` beside them.

    Line ``i`` of ``pids.txt`` is the id of passage ``i`` (ids stay text: MS MARCO v2 ids are not numbers).
    """
    path = Path(path)
    cache = _cache_dir(path, Path(cache_dir), "collection_tokens", vocab, max_length)
    pids_file = cache / "pids.txt"
    if pids_file.is_file():
        try:
            arrays = TokenArrays.load(cache, "passages", vocab_size=len(vocab))
            info(f"📦 Loading cached token arrays from {cache}")
            return arrays, pids_file
        except PipelineError:
            pass
    writer = TokenArrayWriter(cache, "passages")
    pids_tmp = pids_file.with_name(".pids.txt.tmp")
    try:
        with open(pids_tmp, "w", encoding="utf-8") as pid_handle:
            bar = progress(None, desc=f"Tokenising {path.name}", unit="passage", mininterval=1.0)
            for pids, texts in read_tsv_chunks(path, 2, chunk_lines):
                pid_handle.write("\n".join(pids) + "\n")
                writer.append(vocab.encode_chunk(texts, max_length))
                bar.update(len(texts))
            bar.close()
        arrays = writer.close()
        pids_tmp.replace(pids_file)  # last: its presence marks a complete cache
    except BaseException:
        writer.abort()
        pids_tmp.unlink(missing_ok=True)
        raise
    info(f"✅ Tokenised {len(arrays):,} passages into {cache}")
    return arrays, pids_file
