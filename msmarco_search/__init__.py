"""msmarco_search: CBOW embeddings, triplets and a two-tower retrieval model on MS MARCO."""

__version__ = "0.1.0"
