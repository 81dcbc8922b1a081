"""A sentence-transformers teacher, loaded safely, and its cached vectors of texts."""
