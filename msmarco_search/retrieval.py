"""Retrievers: the one set of ranking systems that search, evaluation and validation all use.

A retriever is prepared once over a *collection* (the in-memory :class:`PassagePool` of evaluation and
validation, or the on-disk :class:`~msmarco_search.index.PassageIndex` of search), then ranks it:

- ``search(queries, k)``: per query, the top-``k`` ``(row position, score)`` hits, best first;
- ``rerank(queries, candidates)``: per query, the score of each of its candidate rows.

Equal scores are always ordered by passage id, so every path that ranks the same collection with the same
retriever writes the same run. Systems:

- :class:`BM25Retriever`: ``bm25s`` on the project's tokens (optionally stemmed), built over the collection or
  loaded from the BM25 index saved beside a search index;
- :class:`DenseRetriever` and its encoders (:class:`ModelRetriever` / :class:`TwoTowerRetriever` for two-tower
  models, :class:`CbowRetriever` for zero-shot word-vector means): exact inner product in chunks over a
  memory-mapped or in-memory matrix, or the index's ``faiss`` index;
- :class:`HybridRetriever`: a dense and a lexical retriever fused (``msmarco_search.runs.fuse``) over the top
  ``depth`` of each (1000 by default: deep runs, as evaluated);
- :class:`FeedbackRetriever`: pseudo-relevance feedback (Rocchio) in the two-tower's vector space, from its own
  first ranking or a hybrid's;
- :class:`RandomRetriever`: the chance baseline of re-ranking.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from .bm25 import BM25Index, BM25Settings
from .errors import PipelineError
from .index import (
    BM25_DIR,
    FAISS_FILE,
    PassageIds,
    PassageIndex,
    collection_identity,
    faiss_search_parameters,
    saved_bm25_settings,
    vector_row_list,
    vector_rows,
)
from .report import info, progress
from .runs import DEFAULT_FUSION_WEIGHT, DEFAULT_RRF_K, check_fusion, fuse
from .vocab import PAD_ID, UNK_ID, Vocabulary, inverse_document_frequency

Hits = list[tuple[int, float]]  # (row position, score), best first
DEFAULT_FUSION_DEPTH = 1000
# IVF-PQ candidates per hit, re-scored exactly on the index's vectors (docs/benchmarks.md, "Full scale":
# recall@10 0.824 at nprobe 16 on 1M passages; neither knob has been swept yet)
DEFAULT_REFINE = 10


class Collection(Protocol):
    """What a retriever ranks: rows with a passage id and a text."""

    def __len__(self) -> int: ...

    def pid(self, position: int) -> str: ...

    def texts(self) -> Sequence[str]: ...


@dataclass
class PassagePool:
    """An in-memory collection (evaluation, validation); candidates and runs refer to rows by position and id."""

    ids: list[str]
    texts_: list[str]
    position: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.texts_):
            raise ValueError("ids and texts differ in length")
        self.position = {pid: i for i, pid in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def pid(self, position: int) -> str:
        return self.ids[position]

    def texts(self) -> Sequence[str]:
        return self.texts_

    def add(self, pid: str, text: str) -> None:
        self.position[pid] = len(self.ids)
        self.ids.append(pid)
        self.texts_.append(text)


def ranked(collection: Collection, positions: Sequence[int], scores: Sequence[float]) -> Hits:
    """``(position, score)`` pairs best first, equal scores in passage-id order."""
    hits = [(int(p), float(s)) for p, s in zip(positions, scores, strict=True)]
    return sorted(hits, key=lambda hit: (-hit[1], collection.pid(hit[0])))


class Retriever(ABC):
    """A ranking system over a collection; :meth:`prepare` indexes or encodes it once."""

    name: str
    description: str = ""

    def __init__(self) -> None:
        self.collection: Collection | None = None

    def prepare(self, collection: Collection) -> None:
        """Index or encode ``collection`` (nothing to do when it is the one already prepared)."""
        if self.collection is not collection:
            self._prepare(collection)
            self.collection = collection

    @abstractmethod
    def _prepare(self, collection: Collection) -> None: ...

    @abstractmethod
    def search(self, queries: Sequence[str], k: int) -> list[Hits]:
        """Per query: the top-``k`` ``(position, score)`` hits, best first, ties by passage id."""

    @abstractmethod
    def rerank(self, queries: Sequence[str], candidates: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per query: the score of each of its candidates (row positions)."""

    def settings(self) -> dict[str, Any]:
        return {}


# ---------------------------------------------------------------------------------------------- BM25


class BM25Retriever(Retriever):
    """BM25 over the collection's own rows, so its hits are the same rows as the dense retriever's.

    ``saved``: a folder with a saved BM25 index (``search/search.py index`` writes one beside the dense
    index) to load instead of building; it must match ``settings`` and the collection, or it is refused.
    """

    def __init__(self, settings: BM25Settings | None = None, name: str = "bm25", saved: Path | None = None,
                 collection_file: Path | None = None):
        super().__init__()
        self.bm25_settings = settings or BM25Settings()
        self.name, self.saved, self.collection_file = name, saved, collection_file
        if saved is not None and collection_file is None:
            raise ValueError("a saved BM25 index is checked against the collection file it was built over")
        self.description = self.bm25_settings.describe()
        self.index: BM25Index | None = None

    def _prepare(self, collection: Collection) -> None:
        started = time.perf_counter()
        s = self.bm25_settings
        ids = PassageIds(collection) if isinstance(collection, PassageIndex) else collection.ids
        if self.saved is not None:
            if isinstance(collection, PassageIndex):
                # bm25s opens the saved index by name: only while the folder there is the one the search index
                # opened, before and after, are its files that index's (a rebuild puts a new folder there)
                collection.check_in_place()
                self.index = BM25Index.load(self.saved, ids, s, collection.collection_identity())
                collection.check_in_place()
            else:
                self.index = BM25Index.load(self.saved, ids, s, collection_identity(self.collection_file,
                                                                                    len(collection)))
            self.description = f"{s.describe()}, saved index {self.saved}"
            return
        self.index = BM25Index(ids, collection.texts(), s.k1, s.b, s.stemmer)
        if len(collection) > 100_000:
            info(f"Built BM25 over {len(collection):,} passages in {time.perf_counter() - started:.1f} s")

    def search(self, queries: Sequence[str], k: int) -> list[Hits]:
        positions, scores = self.index.search(list(queries), k)
        # bm25s fills the top k with zero-score rows when fewer passages match; those share no (stemmed) word
        # with the query, so they are not hits (in a fused run they would get a rank by passage id alone)
        return [ranked(self.collection, p[s > 0], s[s > 0]) for p, s in zip(positions, scores, strict=True)]

    def rerank(self, queries: Sequence[str], candidates: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [self.index.scores(q)[c] for q, c in zip(queries, candidates, strict=True)]

    def settings(self) -> dict[str, Any]:
        s = self.bm25_settings
        return {"k1": s.k1, "b": s.b, "stemmer": s.stemmer,
                **({"saved_index": str(self.saved)} if self.saved is not None else {})}


def bm25_for_index(index: PassageIndex, k1: float | None = None, b: float | None = None,
                   stemmer: str | None = None, name: str = "bm25") -> BM25Retriever:
    """BM25 over a search index: its saved BM25 index when it has one (settings not given are the saved
    index's; given ones must match it, or it is refused), else one built in memory (defaults for the rest)."""
    saved = saved_bm25_settings(index)
    base = saved or BM25Settings()
    settings = BM25Settings(base.k1 if k1 is None else k1, base.b if b is None else b,
                            base.stemmer if stemmer is None else stemmer)
    if saved is None:
        return BM25Retriever(settings, name)
    return BM25Retriever(settings, name, index.directory / BM25_DIR, index.collection)


# ---------------------------------------------------------------------------------------------- dense


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
        40 (docs/benchmarks.md)."""
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
        from .model import load_model

        return cls(load_model(path, device), name, path, **options)

    def _prepare(self, collection: Collection) -> None:
        super()._prepare(collection)
        if self.use_faiss:
            if not isinstance(collection, PassageIndex):
                raise PipelineError("faiss search needs a search index (search/search.py index)")
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
                                f"{len(self.collection)} passages; rebuild it (search/search.py faiss)",
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
    """A teacher's vectors (``teacher.TeacherCache``: encoded once, then read from the cache): the reference row
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

# Chosen on the DL 2021 split with the recipe's models (3 seeds; benchmarks/quality_dl19.sh feedback,
# docs/benchmarks.md): the best mean of the two-tower-prf and hybrid-linear-prf nDCG@10 over depths 3, 5, 10,
# 20 and weights 0.5, 1, 2, 4 (0.5356 at 3 and 2; next 0.5348 at 3 and 1; 0.5290 at 10 and 2)
DEFAULT_FEEDBACK_DEPTH = 3
DEFAULT_FEEDBACK_WEIGHT = 2.0


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


class RandomRetriever(Retriever):
    """Random scores: the chance baseline of re-ranking (each seed is one shuffled order)."""

    def __init__(self, seed: int = 0, name: str = "random"):
        super().__init__()
        self.name, self.seed = name, seed

    def _prepare(self, collection: Collection) -> None:
        pass

    def search(self, queries: Sequence[str], k: int) -> list[Hits]:
        rng = np.random.default_rng(self.seed)
        results = []
        for _ in queries:
            scores = rng.random(len(self.collection)).astype(np.float32)
            top = np.argsort(-scores)[:k]
            results.append(ranked(self.collection, top, scores[top]))
        return results

    def rerank(self, queries: Sequence[str], candidates: Sequence[np.ndarray]) -> list[np.ndarray]:
        rng = np.random.default_rng(self.seed)
        return [rng.random(len(c)).astype(np.float32) for c in candidates]
