"""Stage 1: train CBOW word embeddings (gensim Word2Vec, sg=0) on MS MARCO text.

Writes {checkpoint_dir}/msmarco_word2vec.pt: the embedding matrix, word-to-index and index-to-word, with
<pad> at 0 and <unk> at 1, loadable with torch.load(..., weights_only=True).

The command is ``msmarco_search.cli.cbow`` (also ``msmarco-cbow``, ``python -m msmarco_search cbow``).
"""

from msmarco_search.cli import run
from msmarco_search.cli.cbow import main
from msmarco_search.core.commands import SCRIPT

if __name__ == "__main__":
    run(main, form=SCRIPT)
