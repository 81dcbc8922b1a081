"""What stage 3 trains on: triplets as token arrays (tokenised once, cached, memory-mapped), the batches cut
from them, and the training input read from a triplets file or streamed from the official triples TSV.

Two inputs: a triplets ``.pkl`` or ``.parquet`` from stage 2 (read whole, so some queries can be held out for
validation), or the official triples TSV (``query<TAB>positive<TAB>negative``, streamed in chunks into
memory-mapped token arrays: a 39M-line file is never held as strings, and its lines carry no query ids to hold
out by). ``triples.train.small.tsv`` is read a chunk of lines at a time, each chunk tokenised at once
(``Vocabulary.encode_chunk``) and appended to memory-mapped token arrays on disk (``TokenArrayWriter``). No more
than one chunk of strings is ever alive, so memory stays flat as the input grows; the arrays are cached under a
key of the input file, the vocabulary and the length limits, and reused by the next run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch

from msmarco_search.core.errors import PipelineError
from msmarco_search.core.report import info, progress, warn
from msmarco_search.core.text import TOKENIZER_VERSION
from msmarco_search.data.triplets import TeacherLabels, Triplets, load_triplets
from msmarco_search.data.vocab import Vocabulary, vocabulary_fingerprint
from msmarco_search.io.arrays import TokenArrays, TokenArrayWriter
from msmarco_search.io.atomic import cache_key, file_identity
from msmarco_search.io.msmarco_files import iter_tsv_lines

SIDES = ("queries", "positives", "negatives")


@dataclass
class TokenBatch:
    """A batch of token sequences in ``nn.EmbeddingBag`` form: flat ids and the start offset of each row."""

    ids: torch.Tensor  # int64, (total tokens,)
    offsets: torch.Tensor  # int64, (batch,)

    @classmethod
    def from_arrays(cls, arrays: TokenArrays, indices: np.ndarray) -> TokenBatch:
        ids, offsets = arrays.gather(indices)
        return cls(torch.from_numpy(ids), torch.from_numpy(offsets))

    @classmethod
    def from_lists(cls, sequences: list[list[int]]) -> TokenBatch:
        lengths = [len(s) for s in sequences]
        offsets = np.zeros(len(sequences), dtype=np.int64)
        np.cumsum(lengths[:-1], out=offsets[1:])
        flat = np.fromiter((t for s in sequences for t in s), dtype=np.int64, count=sum(lengths))
        return cls(torch.from_numpy(flat), torch.from_numpy(offsets))

    @classmethod
    def concatenate(cls, batches: list[TokenBatch]) -> TokenBatch:
        """One batch of every row of ``batches``, in order (offsets shifted past the earlier batches' ids)."""
        starts = np.cumsum([0] + [len(b.ids) for b in batches[:-1]])
        return cls(torch.cat([b.ids for b in batches]),
                   torch.cat([b.offsets + int(start) for b, start in zip(batches, starts, strict=True)]))

    def __len__(self) -> int:
        return len(self.offsets)

    def lengths(self) -> torch.Tensor:
        ends = torch.cat([self.offsets[1:], self.offsets.new_tensor([len(self.ids)])])
        return ends - self.offsets

    def to(self, device: torch.device | str) -> TokenBatch:
        return TokenBatch(self.ids.to(device, non_blocking=True), self.offsets.to(device, non_blocking=True))


@dataclass
class TripletArrays:
    queries: TokenArrays
    positives: TokenArrays
    negatives: TokenArrays
    teacher: TeacherLabels | None = None  # a teacher's vectors of the same triplets, for distillation

    def __len__(self) -> int:
        return len(self.queries)

    def batch(self, indices: np.ndarray) -> tuple[TokenBatch, ...] | tuple[TokenBatch, TokenBatch, TokenBatch,
                                                                          tuple[torch.Tensor, ...]]:
        """Queries, positives and negatives of triplets ``indices``, then, with a teacher, its vectors of them."""
        tokens = (TokenBatch.from_arrays(self.queries, indices), TokenBatch.from_arrays(self.positives, indices),
                  TokenBatch.from_arrays(self.negatives, indices))
        if self.teacher is None:
            return tokens
        return (*tokens, tuple(torch.from_numpy(vectors) for vectors in self.teacher.batch(indices)))


def tokenise_triplets(triplets: Triplets, vocab: Vocabulary, max_query_length: int, max_passage_length: int,
                      cache_dir: Path | None = None, source_identity: str = "") -> TripletArrays:
    """Tokenise the three columns once; with ``cache_dir`` and a ``source_identity``, reuse earlier work."""
    cache = None
    if cache_dir is not None and source_identity:
        key = cache_key(source_identity, vocabulary_fingerprint(vocab), max_query_length, max_passage_length,
                        TOKENIZER_VERSION)
        cache = Path(cache_dir) / f"triplet_tokens_{key}"
        if (cache / "negatives.offsets.npy").is_file():
            try:
                arrays = TripletArrays(*(TokenArrays.load(cache, side, vocab_size=len(vocab)) for side in SIDES))
                if all(len(getattr(arrays, side)) == len(triplets) for side in SIDES):
                    info(f"📦 Loading cached token arrays from {cache}")
                    arrays.teacher = triplets.teacher
                    return arrays
                warn(f"{cache}: cached token arrays hold the wrong number of texts; rebuilding them")
            except PipelineError as error:
                warn(f"damaged token cache, rebuilding it: {error}")
    limits = {"queries": max_query_length, "positives": max_passage_length, "negatives": max_passage_length}
    arrays = TripletArrays(*(vocab.encode_many(getattr(triplets, side), limits[side], total=len(triplets),
                                               desc=f"Tokenising {side}") for side in SIDES), teacher=triplets.teacher)
    if cache is not None:
        try:
            for side in SIDES:
                getattr(arrays, side).save(cache, side)
        except PipelineError as error:  # the cache only saves time; training goes on without it
            warn(f"cannot cache the token arrays, going on without: {error}")
    return arrays


CHUNK_LINES = 10_000  # measured: 50k-line chunks peaked 270 MiB higher and ran slower (docs/experiments.md)


TRIPLES = "triples (query<TAB>positive<TAB>negative)"


def read_tsv_chunks(path: str | Path, columns: int, chunk_lines: int = CHUNK_LINES, what: str = TRIPLES
                    ) -> Iterator[list[list[str]]]:
    """Column lists of each chunk of ``chunk_lines`` lines, read by ``msmarco_files.iter_tsv_lines`` (its rules)."""
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


@dataclass
class TrainingData:
    tokens: TripletArrays  # the triplets trained on (held-out queries' triplets left out), as token arrays
    texts: Triplets  # triplets as text: all of a .pkl (held-out ones too), the first lines of a triples TSV
    # the held-out queries (an ``evaluation.validation.ValidationSet``; None: nothing held out, or a triples TSV)
    validation: Any
    total: int  # triplets in the file, held-out ones included


class TripletsFile:
    """A training input, checked when opened: a triplets ``.pkl`` or ``.parquet`` is read at once (a bad file
    fails before the embeddings load), a triples TSV (``.tsv``) only once the vocabulary is known, by
    ``training_data``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.streamed = self.path.suffix.lower() == ".tsv"
        self.triplets: Triplets | None = None
        if not self.streamed:
            self.triplets = load_triplets(self.path)
        elif not self.path.is_file():
            raise PipelineError("file not found", self.path)

    def passages(self) -> list[str]:
        """The distinct passages (positives and negatives) of a ``.pkl``, in first-seen order."""
        if self.triplets is None:
            raise PipelineError("a triples TSV is not read whole, so its passages are not known before training",
                                self.path)
        return list(dict.fromkeys(self.triplets.positives + self.triplets.negatives))

    def training_data(self, vocab: Vocabulary, max_query_length: int, max_passage_length: int,
                      cache_dir: str | Path, hold_out: Callable[[Triplets], tuple[Triplets, Any]] | None = None
                      ) -> TrainingData:
        """Token arrays to train on (cached in ``cache_dir``), and the queries of a ``.pkl`` that ``hold_out``
        keeps back: ``hold_out(triplets)`` gives the triplets to train on and the held-out validation set, or
        None (``evaluation.validation.split_validation``, which the train command passes: holding out builds an
        evaluation task, which this package below evaluation cannot)."""
        if self.triplets is None:
            tokens = triples_tsv_arrays(self.path, vocab, max_query_length, max_passage_length, cache_dir)
            return TrainingData(tokens, triples_tsv_head(self.path), None, len(tokens))
        kept, validation = hold_out(self.triplets) if hold_out is not None else (self.triplets, None)
        # the cache key names the held-out queries: the same file split another way tokenises another set
        held_out = f"|held-out:{validation.fingerprint()}" if validation else ""
        tokens = tokenise_triplets(kept, vocab, max_query_length, max_passage_length, cache_dir=Path(cache_dir),
                                   source_identity=file_identity(self.path) + held_out)
        return TrainingData(tokens, self.triplets, validation, len(self.triplets))
