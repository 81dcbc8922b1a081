"""Word-embedding quality: analogies (Mikolov et al. 2013) and word similarity (WordSim-353, SimLex-999).

The benchmark files ship with gensim (``gensim.test.utils.datapath``) and gensim's ``KeyedVectors`` scores
them: analogy accuracy by 3CosAdd over the vocabulary, Spearman correlation of cosine similarity with the
human scores. Each result comes with the share of questions or pairs whose words are all in the vocabulary:
a vocabulary learned from MS MARCO misses many benchmark words, and a score over 10 % of the pairs says less
than one over 90 %.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from msmarco_search.core.errors import PipelineError, first_line
from msmarco_search.core.report import info
from msmarco_search.data.vocab import Vocabulary

ANALOGIES = "questions-words.txt"
SIMILARITY = {"wordsim353": "wordsim353.tsv", "simlex999": "simlex999.txt"}


def benchmark_file(name: str, folder: str | Path | None = None) -> Path:
    """A benchmark file from ``folder`` when given, else the copy inside the gensim package."""
    if folder is not None:
        path = Path(folder) / name
    else:
        from gensim.test.utils import datapath

        path = Path(datapath(name))
    if not path.is_file():  # gensim would fail with a traceback deep in its parser
        raise PipelineError("word benchmark file not found" + ("" if folder is not None else
                                                               " (the gensim package ships it; reinstall gensim)"),
                            path)
    return path


def keyed_vectors(matrix: torch.Tensor | np.ndarray, vocab: Vocabulary) -> Any:
    """The embedding matrix as gensim ``KeyedVectors`` (without ``<pad>`` and ``<unk>``), frequency order kept."""
    from gensim.models import KeyedVectors

    vectors = np.asarray(matrix, dtype=np.float32)[2:]
    keyed = KeyedVectors(vector_size=vectors.shape[1])
    keyed.add_vectors(vocab.index_to_word[2:], vectors)
    return keyed


def _count_questions(path: Path) -> int:
    with open(path, encoding="utf-8", errors="replace") as handle:
        return sum(1 for line in handle if line.strip() and not line.startswith(":"))


def word_embedding_quality(matrix: torch.Tensor | np.ndarray, vocab: Vocabulary, folder: str | Path | None = None,
                           restrict_vocab: int = 30000) -> dict[str, dict[str, Any]]:
    """Analogy accuracy and similarity correlations of the vectors, with the share of items in vocabulary.

    Analogies use the ``restrict_vocab`` most frequent words, as word2vec's ``compute-accuracy`` does (30,000):
    the search over the whole vocabulary for each of ~20,000 questions would cost minutes.
    """
    keyed = keyed_vectors(matrix, vocab)
    gensim_logger = logging.getLogger("gensim")
    level = gensim_logger.level
    gensim_logger.setLevel(logging.WARNING)  # gensim logs every skipped item at INFO
    try:
        results: dict[str, dict[str, Any]] = {}
        path = benchmark_file(ANALOGIES, folder)
        questions = _count_questions(path)
        if questions == 0:  # gensim would divide by zero
            raise PipelineError("holds no word-analogy questions", path)
        try:
            accuracy, sections = keyed.evaluate_word_analogies(str(path), restrict_vocab=restrict_vocab,
                                                               case_insensitive=True)
        except (ValueError, UnicodeDecodeError) as error:  # gensim's parser on a file of another layout
            raise PipelineError(f"not a word-analogy file (': section' lines, then 4 words a line; "
                                f"{first_line(error, 80)})", path) from error
        total = sections[-1]
        answered = len(total["correct"]) + len(total["incorrect"])
        results["analogies"] = {"accuracy": float(accuracy) if answered else None, "in_vocabulary": answered,
                                "restrict_vocab": restrict_vocab,
                                "total": questions, "share_in_vocabulary": answered / questions if questions else 0.0,
                                "file": str(path)}
        for name, filename in SIMILARITY.items():
            path = benchmark_file(filename, folder)
            try:
                _, spearman, oov_percent = keyed.evaluate_word_pairs(str(path), case_insensitive=True)
                rho = float(spearman[0])
                share = 1.0 - oov_percent / 100.0
            except ValueError:  # gensim: no pair (or too few) with both words in the vocabulary
                rho, share = math.nan, 0.0
            results[name] = {"spearman": None if math.isnan(rho) else rho, "share_in_vocabulary": share,
                             "file": str(path)}
    finally:
        gensim_logger.setLevel(level)
    return results


def report_word_embedding_quality(results: Mapping[str, Mapping[str, Any]]) -> None:
    """Print the results as a small table."""
    info("\n=== Word-embedding quality ===")
    analogies = results["analogies"]
    accuracy = "n/a" if analogies["accuracy"] is None else f"{analogies['accuracy']:.4f}"
    info(f"Analogies (questions-words.txt): accuracy {accuracy} on {analogies['in_vocabulary']:,} of "
         f"{analogies['total']:,} questions ({analogies['share_in_vocabulary']:.1%} within the "
         f"{analogies['restrict_vocab']:,} most frequent words)")
    for name in SIMILARITY:
        result = results[name]
        rho = "n/a" if result["spearman"] is None else f"{result['spearman']:.4f}"
        info(f"{name}: Spearman {rho} ({result['share_in_vocabulary']:.1%} of pairs in vocabulary)")
