"""Stage 1: CBOW word vectors (gensim) and their embeddings file; word-vector benchmarks."""
