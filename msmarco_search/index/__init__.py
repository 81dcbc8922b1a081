"""The search index of a two-tower model: building, faiss, loading; the BM25 index saved beside it."""
