"""Stage 1: train CBOW word embeddings (gensim Word2Vec, sg=0) on MS MARCO text.

Writes {checkpoint_dir}/msmarco_word2vec.pt: the embedding matrix, word-to-index and index-to-word, with
<pad> at 0 and <unk> at 1, loadable with torch.load(..., weights_only=True).

A thin wrapper: the command lives in msmarco_search/driver/cbow.py (also the ``msmarco-cbow`` command).
"""

from __future__ import annotations

import sys

from msmarco_search.cli.cbow import main, parse_args

__all__ = ["main", "parse_args"]

if __name__ == "__main__":
    sys.exit(main())
