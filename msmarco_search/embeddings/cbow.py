"""Stage 1: CBOW word vectors with gensim, and the embeddings file the two towers start from.

The tokenised corpus is written once to ``data/cbow_corpus_<key>.txt`` (one text per line, tokens separated
by spaces: gensim's ``LineSentence`` format) and gensim trains from that file with ``corpus_file=``, which
scales over all cores without the Python iterator bottleneck. The key covers the source, the sample limit
and the tokeniser, so a cache is reused exactly when those match.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from msmarco_search.core.errors import PipelineError, short
from msmarco_search.core.report import info, progress, warn
from msmarco_search.core.text import STEMMERS, TOKENIZER_VERSION
from msmarco_search.data.records import Source
from msmarco_search.data.vocab import (
    PAD_ID,
    UNK_ID,
    Vocabulary,
    check_own_vocabulary,
    read_stemmer,
    vocabulary_fingerprint,
)
from msmarco_search.io.atomic import atomic_write, cache_key
from msmarco_search.io.gensim_safe import GENSIM_FILENAME, load_gensim_model
from msmarco_search.io.outputs import OutputKind, claim, claim_marker, marker_holder, release
from msmarco_search.io.records import cached_record, load_side_record, save_cache_record, save_side_record
from msmarco_search.io.safe_load import (
    KIND_EMBEDDINGS,
    leading_strings,
    load_json,
    load_torch,
    recognise_json,
    recognise_tagged,
    save_torch,
)

EMBEDDINGS_FILENAME = "msmarco_word2vec.pt"


@dataclass
class CbowSettings:
    vector_size: int = 300
    window: int = 5
    min_count: int = 5
    epochs: int = 5
    workers: int = 0  # 0: all CPU cores
    negative: int = 5
    sample: float = 1e-3
    seed: int = 42

    def resolved_workers(self) -> int:
        return self.workers or multiprocessing.cpu_count()


def corpus_cache_path(source: Source, data_dir: str | Path, max_samples: int | None, stemmer: str = "none") -> Path:
    key = cache_key(source.identity(), max_samples, TOKENIZER_VERSION, stemmer)
    return Path(data_dir) / f"cbow_corpus_{key}.txt"


def _cached_corpus_count(path: Path) -> int | None:
    """The text count of a cached corpus, or None when the cache is absent or does not match its record.

    The record (written after the corpus) holds the corpus's size: a corpus edited, cut short or replaced
    since is rebuilt, not trained on.
    """
    record = cached_record(path)
    count = None if record is None else record.get("texts")
    return count if isinstance(count, int) and count > 0 else None


def prepare_corpus(source: Source, data_dir: str | Path, max_samples: int | None, stemmer: str = "none"
                   ) -> tuple[Path, int]:
    """The tokenised corpus file for ``source`` (built once, then reused) and its number of texts; with a
    ``stemmer``, its words are stems (``Vocabulary.tokens``), and so are the vectors' words."""
    path = corpus_cache_path(source, data_dir, max_samples, stemmer)
    words = Vocabulary.from_words([], stemmer).tokens
    cached = _cached_corpus_count(path)
    if cached is not None:
        info(f"📦 Loading cached processed texts from {path}...")
        info(f"✅ Loaded {cached:,} cached text documents")
        return path, cached
    if path.exists():
        warn(f"{path}: cached corpus does not match its record (damaged or from an older version); rebuilding it")

    count = 0

    def write(tmp: Path) -> None:
        nonlocal count
        with open(tmp, "w", encoding="utf-8") as out:
            for text in progress(source.corpus_texts(max_samples), desc="Tokenising corpus", unit="text"):
                tokens = words(text)
                if tokens:
                    out.write(" ".join(tokens))
                    out.write("\n")
                    count += 1

    atomic_write(path, write)
    if count == 0:
        path.unlink(missing_ok=True)
        raise PipelineError(f"no text with any word was read from {source.description}")
    save_cache_record(path, texts=count, source=source.description, max_samples=max_samples,
                      tokenizer=TOKENIZER_VERSION, stemmer=stemmer)
    info(f"✅ Processed and cached {count:,} text documents in {path}")
    return path, count


def recognise_gensim_model(path: Path) -> str | None:
    """``outputs.OutputKind`` recogniser of a saved gensim ``Word2Vec`` (its pickle names the class first; read
    opcode by opcode, nothing is built)."""
    return None if leading_strings(path) == ["gensim.models.word2vec", "Word2Vec"] else "it is not a gensim Word2Vec"


EMBEDDINGS_OUTPUT = OutputKind("CBOW embeddings file", recognise_tagged(KIND_EMBEDDINGS))
GENSIM_OUTPUT = OutputKind("gensim model", recognise_gensim_model)
GENSIM_RECORD_OUTPUT = OutputKind("gensim model record", recognise_json("kind", "stemmer"))


def cbow_outputs(directory: Path, save_gensim: bool) -> dict[Path, OutputKind]:
    """The files a CBOW run writes into ``directory``, each with its kind (``outputs.check_output``)."""
    outputs = {directory / EMBEDDINGS_FILENAME: EMBEDDINGS_OUTPUT}
    if save_gensim:
        outputs |= {directory / GENSIM_FILENAME: GENSIM_OUTPUT,
                    _gensim_record(directory / GENSIM_FILENAME): GENSIM_RECORD_OUTPUT}
    return outputs


@contextmanager
def claim_output_folder(directory: str | Path) -> Iterator[Path]:
    """Hold the CBOW outputs of ``directory`` (its fixed-name files) for one run; refuse a second run meanwhile.

    The files have fixed names (the next stage looks for ``msmarco_word2vec.pt``), so two runs into one folder
    would both print "Saved" and one result would be lost. The claim is ``outputs.claim`` on the embeddings
    file (a locked ``.msmarco_word2vec.pt.claim``): the lock goes with its process however it ends, so the
    marker of a run killed with SIGKILL never blocks a later run, which takes it over.
    """
    directory = Path(directory)
    target = directory / EMBEDDINGS_FILENAME
    if not claim(target):
        raise PipelineError(f"another CBOW run (process {marker_holder(claim_marker(target))}) is writing its files "
                            "into this folder; wait for it to finish or pass another -c/--checkpoint-dir", directory)
    try:
        yield directory
    finally:
        release(target)


def train_cbow(corpus_file: Path, settings: CbowSettings, resume_from: Path | None = None,
               model: Any | None = None) -> tuple[Any, float]:
    """Train (or continue training) gensim ``Word2Vec`` with ``sg=0`` on a LineSentence file.

    To continue, pass ``model`` (from ``load_gensim_model``, loaded before the corpus is built so that a bad
    model fails at once) or ``resume_from``, its path.
    """
    from gensim.models import Word2Vec

    start = time.perf_counter()
    if model is None and resume_from is not None:
        model = load_gensim_model(resume_from)
    if model is not None:
        model.build_vocab(corpus_file=str(corpus_file), update=True)
    else:
        # built in two steps (what the one-call constructor does inside) so that an empty vocabulary is a
        # clear error here, not gensim's "you must first build vocabulary" from inside train()
        model = Word2Vec(
            sg=0, vector_size=settings.vector_size, window=settings.window, min_count=settings.min_count,
            workers=settings.resolved_workers(), epochs=settings.epochs, negative=settings.negative,
            sample=settings.sample, seed=settings.seed,
        )
        model.build_vocab(corpus_file=str(corpus_file))
    if len(model.wv) == 0:
        raise PipelineError(f"no word occurs at least min_count={settings.min_count} times; lower --min-count",
                            corpus_file)
    model.train(corpus_file=str(corpus_file), total_examples=model.corpus_count,
                total_words=model.corpus_total_words, epochs=settings.epochs)
    return model, time.perf_counter() - start


def save_gensim_model(model: Any, path: str | Path, stemmer: str = "none") -> Path:
    """The full gensim model as one pickle, for ``--resume-from``, written atomically, and beside it
    ``NAME.json`` with the stemmer its words were made with (gensim's own file has no place for it).

    One file: gensim would otherwise put arrays above 10M elements (any real MS MARCO vocabulary at 300-d)
    into side files named after the temporary file, which the rename into place does not carry along, so
    the saved model could not be loaded.
    """
    path = atomic_write(path, lambda tmp: model.save(str(tmp), separately=[], sep_limit=2**62))
    # the record after the model, naming it: a run killed between the two leaves the new model beside an old
    # record, which then no longer describes it (``records.load_side_record``) and is not trusted
    save_side_record({"kind": "cbow-gensim-model", "stemmer": stemmer}, _gensim_record(path), path)
    return path


def _gensim_record(path: Path) -> Path:
    return path.with_name(f"{path.name}.json")


def check_resumed_stemmer(path: str | Path, stemmer: str) -> None:
    """Refuse to continue a gensim model on text stemmed otherwise than the text it was trained on: its words
    and the new ones would mix in one vocabulary that says it is one or the other."""
    record_path = _gensim_record(Path(path))
    if not record_path.is_file():  # saved before the record existed, or copied without it
        warn(f"{path}: no {record_path.name} beside it to say which --stemmer it was trained with (saved before "
             f"the record existed, or copied without it); taking it as {stemmer}: give the stemmer it was trained with")
        return
    record = load_json(record_path)
    saved = record.get("stemmer") if isinstance(record, dict) else None
    if saved not in STEMMERS:
        raise PipelineError(f"names no known stemmer ({short(saved)}); save the model again", record_path)
    if load_side_record(record_path, path)[0] is None:  # the record of another model (this one replaced since)
        warn(f"{record_path}: does not describe {Path(path).name} as it is now (the model was replaced after the "
             f"record was written), so it cannot say which --stemmer the model was trained with; taking it as "
             f"{stemmer}: give the stemmer it was trained with")
        return
    if saved != stemmer:
        raise PipelineError(f"this model was trained with --stemmer {saved}; continue it with --stemmer {saved}, "
                            f"not {stemmer}", path)


def embeddings_from_gensim(model: Any, stemmer: str = "none") -> tuple[torch.Tensor, Vocabulary]:
    """The embedding matrix with ``<pad>`` (zeros) at 0 and ``<unk>`` (the mean vector) at 1; ``stemmer``: the
    one the corpus was stemmed with (the vocabulary then stems the text it encodes)."""
    vectors = np.asarray(model.wv.vectors, dtype=np.float32)
    matrix = np.zeros((len(vectors) + 2, vectors.shape[1]), dtype=np.float32)
    matrix[UNK_ID] = vectors.mean(axis=0)
    matrix[2:] = vectors
    matrix[PAD_ID] = 0.0
    return torch.from_numpy(matrix), Vocabulary.from_words(model.wv.index_to_key, stemmer)


def save_embeddings(path: Path, matrix: torch.Tensor, vocab: Vocabulary, metadata: dict[str, Any]) -> Path:
    return save_torch(
        {"embeddings": matrix, "word_to_index": vocab.word_to_index, "index_to_word": vocab.index_to_word,
         "stemmer": vocab.stemmer, "vocabulary_fingerprint": vocabulary_fingerprint(vocab), "metadata": metadata},
        path, KIND_EMBEDDINGS,
    )


def load_embeddings(path: str | Path) -> tuple[torch.Tensor, Vocabulary, dict[str, Any]]:
    data = load_torch(path, KIND_EMBEDDINGS)
    matrix = data.get("embeddings")
    words = data.get("index_to_word")
    if not isinstance(matrix, torch.Tensor) or matrix.ndim != 2 or not isinstance(words, list):
        raise PipelineError("embeddings file lacks its matrix or vocabulary", path)
    if matrix.shape[1] == 0 or matrix.is_complex() or matrix.dtype == torch.bool:
        raise PipelineError(f"embedding matrix is not a matrix of real word vectors ({matrix.dtype}, "
                            f"shape {tuple(matrix.shape)})", path)
    metadata = data.get("metadata", {})
    if not isinstance(metadata, dict):
        raise PipelineError(f"embeddings file's metadata is a {type(metadata).__name__}, not a dict", path)
    if matrix.shape[0] != len(words):
        raise PipelineError(f"embedding matrix has {matrix.shape[0]} rows but the vocabulary {len(words)} words",
                            path)
    if not all(isinstance(word, str) for word in words):
        raise PipelineError("embeddings vocabulary holds something other than words", path)
    try:
        vocab = Vocabulary(words, read_stemmer(data))
    except (ValueError, TypeError) as error:
        raise PipelineError(str(error), path) from error
    if "vocabulary_fingerprint" in data:  # files from before the fingerprint have none to check
        check_own_vocabulary(data["vocabulary_fingerprint"], vocabulary_fingerprint(vocab), path)
    if not bool(torch.isfinite(matrix).all()):
        raise PipelineError("embedding matrix holds NaN or infinite values", path)
    return matrix.float(), vocab, metadata
