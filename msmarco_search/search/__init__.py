"""Ranking: the retrievers (BM25, dense, hybrid, feedback), fusion, the search session, page and API."""
