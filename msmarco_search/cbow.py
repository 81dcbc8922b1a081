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

from .checkpoints import KIND_EMBEDDINGS, atomic_write, load_torch, save_torch
from .errors import PipelineError
from .report import info, progress
from .sources import Source, source_cache_key
from .text import TOKENIZER_VERSION, tokenize
from .vocab import PAD_ID, UNK_ID, Vocabulary

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
    key = source_cache_key(source, max_samples, TOKENIZER_VERSION)
    return Path(data_dir) / f"cbow_corpus_{key}.txt"


def prepare_corpus(source: Source, data_dir: str | Path, max_samples: int | None) -> tuple[Path, int]:
    """The tokenised corpus file for ``source`` (built once, then reused) and its number of texts."""
    path = corpus_cache_path(source, data_dir, max_samples)
    if path.is_file() and path.stat().st_size > 0:
        info(f"📦 Loading cached processed texts from {path}...")
        with open(path, "rb") as handle:
            count = sum(1 for _ in handle)
        info(f"✅ Loaded {count:,} cached text documents")
        return path, count

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
    info(f"✅ Processed and cached {count:,} text documents in {path}")
    return path, count


def train_cbow(corpus_file: Path, settings: CbowSettings, resume_from: Path | None = None) -> tuple[Any, float]:
    """Train (or continue training) gensim ``Word2Vec`` with ``sg=0`` on a LineSentence file."""
    from gensim.models import Word2Vec

    start = time.perf_counter()
    if resume_from is not None:
        model = load_gensim_model(resume_from)
        model.build_vocab(corpus_file=str(corpus_file), update=True)
        model.train(corpus_file=str(corpus_file), total_examples=model.corpus_count,
                    total_words=model.corpus_total_words, epochs=settings.epochs)
    else:
        model = Word2Vec(
            corpus_file=str(corpus_file), sg=0, vector_size=settings.vector_size, window=settings.window,
            min_count=settings.min_count, workers=settings.resolved_workers(), epochs=settings.epochs,
            negative=settings.negative, sample=settings.sample, seed=settings.seed,
        )
    if len(model.wv) == 0:
        raise PipelineError(f"no word occurs at least min_count={settings.min_count} times; lower --min-count",
                            corpus_file)
    return model, time.perf_counter() - start


def load_gensim_model(path: Path) -> Any:
    """A full gensim model saved by an earlier run (``--save-gensim-model``), for continued training.

    gensim models are pickles: only load ones this project wrote on this machine.
    """
    from gensim.models import Word2Vec

    if not path.is_file():
        raise PipelineError("file not found", path)
    try:
        return Word2Vec.load(str(path))
    except Exception as error:  # gensim/pickle raise many types on a bad file
        raise PipelineError(f"not a gensim Word2Vec model ({type(error).__name__})", path) from error


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
         "metadata": metadata},
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
    try:
        vocab = Vocabulary(words)
    except ValueError as error:
        raise PipelineError(str(error), path) from error
    return matrix.float(), vocab, data.get("metadata", {})
