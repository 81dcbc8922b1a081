"""Stage 1: CBOW word vectors with gensim, and the embeddings file the two towers start from.

The tokenised corpus is written once to ``data/cbow_corpus_<key>.txt`` (one text per line, tokens separated
by spaces: gensim's ``LineSentence`` format) and gensim trains from that file with ``corpus_file=``, which
scales over all cores without the Python iterator bottleneck. The key covers the source, the sample limit
and the tokeniser, so a cache is reused exactly when those match.
"""

from __future__ import annotations

import multiprocessing
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import PipelineError
from .fileio import (
    KIND_EMBEDDINGS,
    atomic_write,
    cache_key,
    check_own_vocabulary,
    load_json,
    load_third_party_pickle,
    load_torch,
    save_json,
    save_torch,
)
from .report import info, progress, warn
from .sources import Source
from .text import TOKENIZER_VERSION, tokenize
from .vocab import PAD_ID, UNK_ID, Vocabulary, vocabulary_fingerprint

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


def corpus_cache_path(source: Source, data_dir: str | Path, max_samples: int | None) -> Path:
    key = cache_key(source.identity(), max_samples, TOKENIZER_VERSION)
    return Path(data_dir) / f"cbow_corpus_{key}.txt"


def _corpus_record_path(corpus: Path) -> Path:
    return corpus.with_suffix(".json")


def _cached_corpus_count(path: Path) -> int | None:
    """The text count of a cached corpus, or None when the cache is absent or does not match its record.

    The record (written after the corpus) holds the corpus's size: a corpus edited, cut short or replaced
    since is rebuilt, not trained on.
    """
    record_path = _corpus_record_path(path)
    if not path.is_file() or not record_path.is_file():
        return None
    try:
        record = load_json(record_path)
        size, count = record["bytes"], record["texts"]
    except (PipelineError, KeyError, TypeError):
        return None
    if not isinstance(count, int) or count <= 0 or size != path.stat().st_size:
        return None
    return count


def prepare_corpus(source: Source, data_dir: str | Path, max_samples: int | None) -> tuple[Path, int]:
    """The tokenised corpus file for ``source`` (built once, then reused) and its number of texts."""
    path = corpus_cache_path(source, data_dir, max_samples)
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
                tokens = tokenize(text)
                if tokens:
                    out.write(" ".join(tokens))
                    out.write("\n")
                    count += 1

    atomic_write(path, write)
    if count == 0:
        path.unlink(missing_ok=True)
        raise PipelineError(f"no text with any word was read from {source.description}")
    save_json({"texts": count, "bytes": path.stat().st_size, "source": source.description,
               "max_samples": max_samples, "tokenizer": TOKENIZER_VERSION}, _corpus_record_path(path))
    info(f"✅ Processed and cached {count:,} text documents in {path}")
    return path, count


def train_cbow(corpus_file: Path, settings: CbowSettings, resume_from: Path | None = None) -> tuple[Any, float]:
    """Train (or continue training) gensim ``Word2Vec`` with ``sg=0`` on a LineSentence file."""
    from gensim.models import Word2Vec

    start = time.perf_counter()
    if resume_from is not None:
        model = load_gensim_model(resume_from)
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


# Every global a gensim 4 Word2Vec pickle names (numpy arrays, its random generator, a defaultdict of
# ints): data types and constructors that run no code of the file's choosing.
_GENSIM_GLOBALS = frozenset({
    ("builtins", "int"), ("builtins", "hash"), ("collections", "defaultdict"), ("gensim.utils", "call_on_class_only"),
    ("numpy", "dtype"), ("numpy", "ndarray"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.multiarray", "scalar"), ("numpy.random._pickle", "__bit_generator_ctor"),
    ("numpy.random._pickle", "__randomstate_ctor"), ("numpy.random._pickle", "__generator_ctor"),
    ("numpy.random._mt19937", "MT19937"), ("numpy.random._pcg64", "PCG64"),
})


def load_gensim_model(path: Path) -> Any:
    """A full gensim model saved by an earlier run (``--save-gensim-model``), for continued training.

    gensim models are pickles, and ``Word2Vec.load`` would run any code a hostile file carries. This reads
    the pickle through an allow-list of harmless globals instead, then lets gensim attach arrays stored
    beside it (``.npy``, read with ``allow_pickle=False``).
    """
    from gensim.models.keyedvectors import KeyedVectors
    from gensim.models.word2vec import Word2Vec

    bare = {("gensim.models.word2vec", "Word2Vec"): Word2Vec,
            ("gensim.models.keyedvectors", "KeyedVectors"): KeyedVectors}
    model = load_third_party_pickle(path, _GENSIM_GLOBALS, bare, "gensim Word2Vec model")
    if not isinstance(model, Word2Vec) or not isinstance(getattr(model, "wv", None), KeyedVectors):
        raise PipelineError(f"not a gensim Word2Vec model (it holds a {type(model).__name__})", path)
    for part in (model, model.wv):
        if getattr(part, "__scipys", None):  # gensim unpickles those with no restriction
            raise PipelineError("the model keeps scipy matrices in separate pickles; refusing to load them", path)
    try:
        compress, subname = Word2Vec._adapt_by_suffix(str(path))
        model._load_specials(str(path), None, compress, subname)
        model.add_lifecycle_event("loaded", fname=str(path))
    except Exception as error:  # noqa: BLE001 - missing or damaged side files fail in numpy or gensim
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise PipelineError(f"gensim model is incomplete ({first})", path) from error
    return model


def embeddings_from_gensim(model: Any) -> tuple[torch.Tensor, Vocabulary]:
    """The embedding matrix with ``<pad>`` (zeros) at 0 and ``<unk>`` (the mean vector) at 1."""
    vectors = np.asarray(model.wv.vectors, dtype=np.float32)
    matrix = np.zeros((len(vectors) + 2, vectors.shape[1]), dtype=np.float32)
    matrix[UNK_ID] = vectors.mean(axis=0)
    matrix[2:] = vectors
    matrix[PAD_ID] = 0.0
    return torch.from_numpy(matrix), Vocabulary.from_words(model.wv.index_to_key)


def save_embeddings(path: Path, matrix: torch.Tensor, vocab: Vocabulary, metadata: dict[str, Any]) -> Path:
    return save_torch(
        {"embeddings": matrix, "word_to_index": vocab.word_to_index, "index_to_word": vocab.index_to_word,
         "vocabulary_fingerprint": vocabulary_fingerprint(vocab), "metadata": metadata},
        path, KIND_EMBEDDINGS,
    )


def load_embeddings(path: str | Path) -> tuple[torch.Tensor, Vocabulary, dict[str, Any]]:
    data = load_torch(path, KIND_EMBEDDINGS)
    matrix = data.get("embeddings")
    words = data.get("index_to_word")
    if not isinstance(matrix, torch.Tensor) or matrix.ndim != 2 or not isinstance(words, list):
        raise PipelineError("embeddings file lacks its matrix or vocabulary", path)
    if matrix.shape[0] != len(words):
        raise PipelineError(f"embedding matrix has {matrix.shape[0]} rows but the vocabulary {len(words)} words",
                            path)
    if not all(isinstance(word, str) for word in words):
        raise PipelineError("embeddings vocabulary holds something other than words", path)
    try:
        vocab = Vocabulary(words)
    except ValueError as error:
        raise PipelineError(str(error), path) from error
    if "vocabulary_fingerprint" in data:  # files from before the fingerprint have none to check
        check_own_vocabulary(data["vocabulary_fingerprint"], vocabulary_fingerprint(vocab), path)
    if not bool(torch.isfinite(matrix).all()):
        raise PipelineError("embedding matrix holds NaN or infinite values", path)
    return matrix.float(), vocab, data.get("metadata", {})
