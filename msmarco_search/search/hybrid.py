"""Retrievers made of others: the hybrid (a dense and a lexical ranking fused) and pseudo-relevance feedback in
the two-tower's vector space."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from msmarco_search.core.errors import PipelineError
from msmarco_search.search.dense import DenseRetriever
from msmarco_search.search.fusion import DEFAULT_FUSION_DEPTH, DEFAULT_FUSION_WEIGHT, DEFAULT_RRF_K, check_fusion, fuse
from msmarco_search.search.options import DEFAULT_FEEDBACK_DEPTH, DEFAULT_FEEDBACK_WEIGHT
from msmarco_search.search.retrieval import Collection, Hits, Retriever

# ---------------------------------------------------------------------------------------------- hybrid


class HybridRetriever(Retriever):
    """A dense and a lexical retriever fused over the top ``depth`` of each: RRF, or a linear score mix.

    ``weight`` is the dense share (0.5: equal weights). Fused lists are keyed by passage id, so ties fall
    in id order as everywhere else.
    """

    def __init__(self, dense: Retriever, lexical: Retriever, method: str = "rrf",
                 weight: float = DEFAULT_FUSION_WEIGHT, rrf_k: int = DEFAULT_RRF_K,
                 depth: int = DEFAULT_FUSION_DEPTH, name: str = "hybrid"):
        super().__init__()
        check_fusion(method, weight)
        self.dense, self.lexical, self.method, self.weight, self.rrf_k, self.depth = (dense, lexical, method, weight,
                                                                                      rrf_k, depth)
        self.name = name
        self.description = (f"{method} of {dense.name} and {lexical.name} over the top {depth} of each, "
                            f"{dense.name} weight {weight}" + (f", k {rrf_k}" if method == "rrf" else ""))

    def _prepare(self, collection: Collection) -> None:
        self.dense.prepare(collection)
        self.lexical.prepare(collection)

    def _fuse(self, dense: dict[str, float], lexical: dict[str, float], limit: int | None) -> list[tuple[str, float]]:
        return fuse(dense, lexical, self.method, self.weight, self.rrf_k, limit)

    def search(self, queries: Sequence[str], k: int) -> list[Hits]:
        depth = max(self.depth, k)
        pid = self.collection.pid
        results = []
        for dense, lexical in zip(self.dense.search(queries, depth), self.lexical.search(queries, depth),
                                  strict=True):
            rows = {pid(p): p for p, _ in dense} | {pid(p): p for p, _ in lexical}
            fused = self._fuse({pid(p): s for p, s in dense}, {pid(p): s for p, s in lexical}, k)
            results.append([(rows[doc], score) for doc, score in fused])
        return results

    def rerank(self, queries: Sequence[str], candidates: Sequence[np.ndarray]) -> list[np.ndarray]:
        pid = self.collection.pid
        results = []
        for cands, dense, lexical in zip(candidates, self.dense.rerank(queries, candidates),
                                         self.lexical.rerank(queries, candidates), strict=True):
            ids = [pid(int(p)) for p in cands]
            fused = dict(self._fuse(dict(zip(ids, map(float, dense), strict=True)),
                                    dict(zip(ids, map(float, lexical), strict=True)), None))
            results.append(np.asarray([fused[i] for i in ids], dtype=np.float64))
        return results

    def settings(self) -> dict[str, Any]:
        return {"method": self.method, "dense": self.dense.name, "sparse": self.lexical.name, "weight": self.weight,
                "depth": self.depth, **({"rrf_k": self.rrf_k} if self.method == "rrf" else {})}


# ------------------------------------------------------------------------------------------- feedback

class FeedbackRetriever(Retriever):
    """Pseudo-relevance feedback in the two-tower's vector space (Rocchio): each query vector is moved toward
    the passage vectors of the top ``depth`` hits of a first ranking, then the two-tower ranks again::

        q' = normalise(q + weight * mean(p_1, ..., p_depth))

    The first ranking (``source``) is the two-tower's own (``two-tower-prf``) or a hybrid's (``hybrid-prf``):
    there BM25's exact matches pull the query toward passages the two-tower alone ranks lower, and the second
    ranking, a two-tower ranking, finds their neighbours too, so recall and the top both gain. The second
    ranking is searched as the dense retriever searches (exact, or its faiss index), so it costs one more
    search and ``depth`` vector reads a query.

    Reference: Rocchio 1971; for dense retrievers, Li et al. 2023, "Pseudo Relevance Feedback with Deep
    Language Models and Dense Retrievers: Successes and Pitfalls" (ACM TOIS), and Li et al. 2022, "To
    Interpolate or not to Interpolate: PRF, Sparse, and Dense Retrieval" (SIGIR; sparse feedback into dense).
    """

    def __init__(self, dense: DenseRetriever, source: Retriever | None = None,
                 depth: int = DEFAULT_FEEDBACK_DEPTH, weight: float = DEFAULT_FEEDBACK_WEIGHT, name: str = ""):
        super().__init__()
        if depth < 1 or not weight >= 0:
            raise PipelineError(f"feedback needs a depth of at least 1 and a weight of at least 0 (got depth "
                                f"{depth}, weight {weight})")
        self.dense, self.source, self.depth, self.weight = dense, source or dense, depth, weight
        system, bracket, label = self.source.name.partition("[")  # two-tower[A] -> two-tower-prf[A]
        self.name = name or f"{system}-prf{bracket}{label}"
        self.description = (f"{dense.name}'s query moved toward its vectors of the top {depth} of "
                            f"{self.source.name} (weight {weight}), then ranked by {dense.name}")

    def _prepare(self, collection: Collection) -> None:
        self.source.prepare(collection)
        self.dense.prepare(collection)

    def query_vectors(self, queries: Sequence[str]) -> torch.Tensor:
        """The moved query vectors (a query without first hits keeps its own)."""
        vectors = self.dense.query_vectors(queries)
        # the two-tower's own first ranking searches the vectors just encoded rather than encoding them again
        first = (self.dense.search_vectors(vectors, self.depth) if self.source is self.dense
                 else self.source.search(queries, self.depth))
        for position, hits in enumerate(first):
            if hits:
                feedback = self.dense.passage_vectors([row for row, _ in hits]).mean(axis=0)
                moved = vectors[position] + self.weight * torch.from_numpy(feedback).to(vectors)
                vectors[position] = F.normalize(moved, dim=-1)
        return vectors

    def search(self, queries: Sequence[str], k: int) -> list[Hits]:
        return self.dense.search_vectors(self.query_vectors(queries), k)

    def rerank(self, queries: Sequence[str], candidates: Sequence[np.ndarray]) -> list[np.ndarray]:
        return self.dense.rerank_vectors(self.query_vectors(queries), candidates)

    def settings(self) -> dict[str, Any]:
        return {"dense": self.dense.name, "source": self.source.name, "depth": self.depth, "weight": self.weight}
