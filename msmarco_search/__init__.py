"""msmarco_search: CBOW embeddings, triplets and a two-tower retrieval model on MS MARCO.

The Python API in one line: ``model = msmarco_search.load_model("two_tower_model_....pt")``, then
``model.encode_queries(texts)`` and ``model.encode_passages(texts)`` give float32, L2-normalised numpy arrays.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["load_model"]


def __getattr__(name: str) -> Any:
    # Lazy, so that importing a light module (errors, text) does not import torch.
    if name == "load_model":
        from msmarco_search.training.model_file import load_model

        return load_model
    raise AttributeError(f"module 'msmarco_search' has no attribute {name!r}")
