"""What stage 3 trains on: a triplets file read into token arrays, a held-out validation set, and some texts.

Two inputs: a triplets ``.pkl`` or ``.parquet`` from stage 2 (read whole, so some queries can be held out for
validation), or the official triples TSV (``query<TAB>positive<TAB>negative``, streamed in chunks into
memory-mapped token arrays: a 39M-line file is never held as strings, and its lines carry no query ids to hold out by).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .batches import TripletArrays, tokenise_triplets
from .errors import PipelineError
from .fileio import file_identity
from .streaming import triples_tsv_arrays, triples_tsv_head
from .triplets import Triplets, load_triplets
from .validation import ValidationSet, split_validation
from .vocab import Vocabulary


@dataclass
class TrainingData:
    tokens: TripletArrays  # the triplets trained on (held-out queries' triplets left out), as token arrays
    texts: Triplets  # triplets as text: all of a .pkl (held-out ones too), the first lines of a triples TSV
    validation: ValidationSet | None  # the held-out queries (None: nothing held out, or a triples TSV)
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
                      cache_dir: str | Path, validation_fraction: float = 0.0, validation_queries: int | None = None,
                      seed: int = 42) -> TrainingData:
        """Token arrays to train on (cached in ``cache_dir``), and the held-out queries of a ``.pkl``."""
        if self.triplets is None:
            tokens = triples_tsv_arrays(self.path, vocab, max_query_length, max_passage_length, cache_dir)
            return TrainingData(tokens, triples_tsv_head(self.path), None, len(tokens))
        kept, validation = split_validation(self.triplets, validation_fraction, validation_queries, seed)
        # the cache key names the held-out queries: the same file split another way tokenises another set
        held_out = f"|held-out:{validation.fingerprint()}" if validation else ""
        tokens = tokenise_triplets(kept, vocab, max_query_length, max_passage_length, cache_dir=Path(cache_dir),
                                   source_identity=file_identity(self.path) + held_out)
        return TrainingData(tokens, self.triplets, validation, len(self.triplets))
