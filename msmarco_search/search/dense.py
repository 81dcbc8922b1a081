"""Dense retrievers: an encoder of queries and passages into vectors, ranked by inner product (exact, in chunks,
or with the index's faiss index), and the measurement of faiss's recall against exact search."""

from __future__ import annotations

import time
from abc import abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from msmarco_search.core.commands import command
from msmarco_search.core.errors import PipelineError
from msmarco_search.core.report import progress
from msmarco_search.data.vocab import PAD_ID, UNK_ID, Vocabulary, inverse_document_frequency
from msmarco_search.index.faiss import faiss_search_parameters
from msmarco_search.index.layout import FAISS_FILE
from msmarco_search.index.load import PassageIndex
from msmarco_search.index.vectors import vector_row_list, vector_rows
from msmarco_search.search.options import DEFAULT_REFINE
from msmarco_search.search.retrieval import Collection, Hits, Retriever, ranked


def exact_search(vectors: np.ndarray, queries: torch.Tensor, k: int, chunk_rows: int = 65536,
                 device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` rows of ``vectors`` by inner product with each query: ``(scores, positions)``, each ``(Q, k)``.

    Reads ``vectors`` (a memory map is fine: read through its file, ``arrays.read_rows``) ``chunk_rows`` rows
    at a time and keeps a running top-k, so memory stays at one chunk plus ``Q x k`` whatever the collection
    size.
    """
    count = len(vectors)
    k = min(k, count)
    queries = queries.to(device=device, dtype=torch.float32)
    best_scores = torch.empty(len(queries), 0, device=device)
    best_rows = torch.empty(len(queries), 0, dtype=torch.long, device=device)
    chunks = range(0, count, chunk_rows)
    if len(chunks) > 8:
        chunks = progress(chunks, desc="Searching", unit="chunk", total=len(chunks))
    for start in chunks:
        rows = vector_rows(vectors, start, start + chunk_rows)
        block = torch.from_numpy(rows.astype(np.float32, copy=False))  # owned, writable
        scores = queries @ block.to(device).T
        top = scores.topk(min(k, scores.shape[1]), dim=1)
        best_scores = torch.cat([best_scores, top.values], dim=1)
        best_rows = torch.cat([best_rows, top.indices + start], dim=1)
        if best_scores.shape[1] > k:
            keep = best_scores.topk(k, dim=1)
            best_scores, best_rows = keep.values, best_rows.gather(1, keep.indices)
    order = best_scores.argsort(dim=1, descending=True)
    return best_scores.gather(1, order).cpu(), best_rows.gather(1, order).cpu()


class DenseRetriever(Retriever):
    """Any encoder of queries and passages into vectors; relevance is their inner product.

    Over a :class:`PassageIndex` built by this encoder (``uses_index``) the index's memory-mapped matrix is
    searched; over any other collection the passages are encoded into an in-memory matrix. Either way the
    same chunked exact search ranks it, so search and evaluation agree.
    """

    uses_index = False

    def __init__(self, name: str, chunk_rows: int = 65536, query_batch: int = 1024,
                 device: torch.device | str = "cpu"):
        super().__init__()
        self.name, self.chunk_rows, self.query_batch, self.device = name, chunk_rows, query_batch, device
        self.vectors: np.ndarray | None = None
        self.description = "exact inner product"

    @abstractmethod
    def encode(self, texts: Sequence[str], side: str) -> torch.Tensor: ...

    def fit(self, collection: Collection) -> None:
        """Collection statistics an encoder needs before encoding (IDF); nothing by default."""

    def _prepare(self, collection: Collection) -> None:
        self.fit(collection)
        if self.uses_index and isinstance(collection, PassageIndex):
            self.vectors = collection.vectors
        else:
            self.vectors = self.encode(list(collection.texts()), "passage").numpy()

    def query_vectors(self, queries: Sequence[str]) -> torch.Tensor:
        return self.encode(list(queries), "query")

    def search(self, queries: Sequence[str], k: int) -> list[Hits]:
        return self.search_vectors(self.query_vectors(queries), k)

    def search_vectors(self, vectors: torch.Tensor, k: int) -> list[Hits]:
        """``search`` for query vectors already encoded (``query_vectors``, or moved by feedback)."""
        scores, rows = exact_search(self.vectors, vectors, k, self.chunk_rows, self.device)
        if isinstance(self.collection, PassageIndex) and not torch.isfinite(scores).all():
            # the model's weights are checked when it loads, so only the index's stored vectors can be NaN; topk
            # ranks NaN first, so a damaged row always shows here (it printed as the top hit, score nan)
            raise PipelineError("the index's vectors hold NaN or infinite values (the file was damaged after it "
                                "was built); rebuild the index", self.collection.directory / "vectors.npy")
        return [ranked(self.collection, r.tolist(), s.tolist()) for r, s in zip(rows, scores, strict=True)]

    def rerank(self, queries: Sequence[str], candidates: Sequence[np.ndarray]) -> list[np.ndarray]:
        return self.rerank_vectors(self.query_vectors(queries), candidates)

    def rerank_vectors(self, vectors: torch.Tensor, candidates: Sequence[np.ndarray]) -> list[np.ndarray]:
        """``rerank`` for query vectors already encoded."""
        return [self.passage_vectors(c) @ v for v, c in zip(vectors.numpy(), candidates, strict=True)]

    def passage_vectors(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """The collection's vectors of ``rows`` (float32, in the order given), read through the index's files,
        not its map (``arrays.read_row_list``): at 8.8M passages the map's fault-around left the whole 5.3 GB of
        vectors resident after IVF-PQ's re-scoring (peak 7.1 GB against 2.2 GB), for ~25 % more time at refine
        40 (docs/experiments.md)."""
        return np.asarray(vector_row_list(self.vectors, np.asarray(rows, dtype=np.int64)), dtype=np.float32)


class ModelRetriever(DenseRetriever):
    """A two-tower model in memory (validation during training uses it on the model being trained)."""

    def __init__(self, model: Any, name: str = "two-tower", chunk_rows: int = 65536):
        super().__init__(name, chunk_rows, device=model.device)
        self.model = model

    def encode(self, texts: Sequence[str], side: str) -> torch.Tensor:
        return self.model.encode(list(texts), side)


class TwoTowerRetriever(ModelRetriever):
    """A saved two-tower model: over its own index, the index's matrix (exact) or its faiss index."""

    uses_index = True

    def __init__(self, model: Any, name: str = "two-tower", path: str | Path | None = None, use_faiss: bool = False,
                 nprobe: int = 16, ef_search: int = 128, chunk_rows: int = 65536, refine: int = DEFAULT_REFINE):
        super().__init__(model, name, chunk_rows)
        self.path = None if path is None else Path(path)
        self.metadata = model.metadata
        self.use_faiss, self.nprobe, self.ef_search, self.refine = use_faiss, nprobe, ef_search, refine

    @classmethod
    def from_file(cls, path: str | Path, name: str = "two-tower", device: torch.device | str = "cpu",
                  **options: Any) -> TwoTowerRetriever:
        from msmarco_search.training.model_file import load_model

        return cls(load_model(path, device), name, path, **options)

    def _prepare(self, collection: Collection) -> None:
        super()._prepare(collection)
        if self.use_faiss:
            if not isinstance(collection, PassageIndex):
                raise PipelineError(f"faiss search needs a search index ({command('search')} index)")
            collection.faiss_index()  # check it loads before the first query
            faiss_search_parameters(collection.manifest["faiss"]["type"], self.nprobe, self.ef_search)  # and these
            self.description = f"faiss {collection.manifest['faiss']['type']}"

    def search_vectors(self, vectors: torch.Tensor, k: int) -> list[Hits]:
        if not self.use_faiss:
            return super().search_vectors(vectors, k)
        faiss_index = self.collection.faiss_index()
        kind = self.collection.manifest["faiss"]["type"]
        # faiss allocates a heap of efSearch entries: more than the passages only costs memory
        params = faiss_search_parameters(kind, self.nprobe, min(max(self.ef_search, k), len(self.collection)))
        vectors = np.ascontiguousarray(vectors.numpy(), dtype=np.float32)
        depth = min(k * (self.refine if kind == "ivfpq" else 1), len(self.collection))
        scores, rows = faiss_index.search(vectors, depth, params=params)
        outside = rows[(rows < -1) | (rows >= len(self.collection))]
        if outside.size:
            # the lists' ids are checked when the index is read; this keeps any other answer that is no row (a
            # faiss index changed in memory, a kind whose ids are not checked) from becoming a hit or an IndexError
            raise PipelineError(f"the faiss index answered with row {int(outside[0])}, outside the index's "
                                f"{len(self.collection)} passages; rebuild it ({command('search')} faiss)",
                                self.collection.directory / FAISS_FILE)
        if kind == "ivfpq":
            scores, rows = self._rescore(vectors, rows, min(k, len(self.collection)))
        return [ranked(self.collection, row[row >= 0], score[row >= 0])
                for row, score in zip(rows, scores, strict=True)]

    def _rescore(self, queries: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """IVF-PQ's candidates scored exactly on the index's own (memory-mapped) vectors, top ``k`` kept: PQ's
        codes rank coarsely, so it fetches ``refine`` x k candidates and the exact inner product orders them."""
        valid = rows >= 0
        found = self.passage_vectors(np.where(valid, rows, 0).ravel())
        exact = np.einsum("qcd,qd->qc", found.reshape(*rows.shape, -1), queries)
        exact[~valid] = -np.inf
        top = np.argsort(-exact, axis=1, kind="stable")[:, :k]
        rows, exact = np.take_along_axis(rows, top, 1), np.take_along_axis(exact, top, 1)
        rows[~np.isfinite(exact)] = -1
        return exact, rows

    def settings(self) -> dict[str, Any]:
        return {"model": None if self.path is None else str(self.path), "model_id": self.metadata.get("model_id"),
                "config": self.metadata.get("config"), "search": self.description}


def sampled_queries(index: PassageIndex, sample: int = 200) -> list[str]:
    """``sample`` pseudo-queries for a recall measurement: the first 8 words of passages drawn at random."""
    rng = np.random.default_rng(0)
    positions = rng.choice(len(index), size=min(sample, len(index)), replace=False)
    return [" ".join(index.text(int(p)).split()[:8]) or "the" for p in positions]


def exact_kth_scores(index: PassageIndex, model: Any, queries: Sequence[str], k: int = 10) -> list[float | None]:
    """Each query's k-th best exact score over the index (``None``: no hit), what ``faiss_recall`` compares
    against; computed once, it serves every setting of a sweep."""
    exact = TwoTowerRetriever(model, use_faiss=False)
    exact.prepare(index)
    return [hits[-1][1] if hits else None for hits in exact.search(list(queries), k)]


def faiss_recall(index: PassageIndex, model: Any, queries: Sequence[str] | None = None, k: int = 10,
                 sample: int = 200, kth: Sequence[float | None] | None = None, **options: Any) -> dict[str, Any]:
    """The index's faiss search against exact search: recall@``k`` and queries/s on ``queries`` (default:
    ``sample`` pseudo-queries, ``sampled_queries``, through the query tower); ``kth``: the queries'
    ``exact_kth_scores`` when already known.

    A faiss hit counts when its exact score reaches the exact k-th score: in a collection with copies of a
    passage (the cycled benchmark collection) any of the tied copies is as good as the one exact search
    lists, so counting ids would call correct answers misses.
    """
    queries = sampled_queries(index, sample) if queries is None else list(queries)
    if kth is None:
        kth = exact_kth_scores(index, model, queries, k)
    approx = TwoTowerRetriever(model, use_faiss=True, **options)
    approx.prepare(index)
    started = time.perf_counter()
    encoded = approx.query_vectors(queries)  # ``search``'s two steps, so the scoring below reuses the vectors
    found = approx.search_vectors(encoded, k)
    seconds = time.perf_counter() - started
    vectors = encoded.numpy()
    recalls = []
    for query, best, hits in zip(vectors, kth, found, strict=True):
        if best is None:
            continue
        rows = np.array([position for position, _ in hits], dtype=np.int64)
        true_scores = approx.passage_vectors(rows) @ query if len(rows) else np.zeros(0)
        recalls.append(float(np.sum(true_scores >= best - 1e-4)) / min(k, len(index)))
    return {f"recall@{k}": round(float(np.mean(recalls)) if recalls else 0.0, 4), "queries": len(queries),
            "queries_per_s": round(len(queries) / max(seconds, 1e-9), 1), "search": approx.description,
            **{key: value for key, value in options.items()}}


class TeacherRetriever(DenseRetriever):
    """A teacher's vectors (``cache.TeacherCache``: encoded once, then read from the cache): the reference row
    of evaluation, the ceiling a static two-tower learns toward. Never an index's: search stays static."""

    def __init__(self, cache: Any, name: str = "teacher"):
        super().__init__(name)
        self.cache = cache
        self.description = f"teacher {cache.teacher.name}, exact inner product"

    def encode(self, texts: Sequence[str], side: str) -> torch.Tensor:
        return torch.from_numpy(self.cache.vectors(list(texts), desc=f"Teacher: {side}s"))

    def settings(self) -> dict[str, Any]:
        return {"teacher": self.cache.teacher.name, "identity": self.cache.teacher.identity}


class CbowRetriever(DenseRetriever):
    """Zero-shot CBOW: the (IDF-weighted) mean of a text's word vectors; unknown words are left out.

    IDF comes from the collection being ranked, BM25's form ``log(1 + (N - df + 0.5) / (df + 0.5))``, which
    stays positive, so frequent words count little instead of pulling every text toward the same direction.
    """

    def __init__(self, matrix: torch.Tensor, vocab: Vocabulary, weighting: str = "mean", name: str | None = None,
                 embeddings_path: str | Path | None = None):
        if weighting not in ("mean", "idf"):
            raise ValueError(f"weighting must be 'mean' or 'idf', not {weighting!r}")
        super().__init__(name or f"cbow-{weighting}")
        self.matrix, self.vocab, self.weighting = matrix.float(), vocab, weighting
        self.embeddings_path = embeddings_path
        self.weights = torch.ones(len(vocab))
        self.weights[[PAD_ID, UNK_ID]] = 0.0

    def fit(self, collection: Collection) -> None:
        if self.weighting != "idf":
            return
        self.weights = torch.from_numpy(inverse_document_frequency(self.vocab, list(collection.texts())))
        self.weights[[PAD_ID, UNK_ID]] = 0.0

    def encode(self, texts: Sequence[str], side: str) -> torch.Tensor:
        arrays = self.vocab.encode_many(texts, desc=f"Encoding {side}s ({self.name})")
        ids = torch.from_numpy(np.asarray(arrays.ids, dtype=np.int64))
        offsets = torch.from_numpy(np.asarray(arrays.offsets[:-1], dtype=np.int64))
        summed = F.embedding_bag(ids, self.matrix, offsets, mode="sum", per_sample_weights=self.weights[ids])
        return F.normalize(summed, dim=-1)

    def settings(self) -> dict[str, Any]:
        return {"embeddings": None if self.embeddings_path is None else str(self.embeddings_path),
                "weighting": self.weighting}
