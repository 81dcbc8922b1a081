"""What a search is set up with: the systems by name, the search modes, the retrievers' defaults, and
``SearchOptions`` (the settings of a search session). Plain values only, so that a command's ``--help`` shows them
without importing torch."""

from __future__ import annotations

from dataclasses import dataclass

from msmarco_search.search.fusion import DEFAULT_FUSION_DEPTH, DEFAULT_FUSION_WEIGHT, DEFAULT_RRF_K

# IVF-PQ candidates per hit, re-scored exactly on the index's vectors: at 1M passages, nprobe 16, refine 10 gives
# recall@10 0.830 at 1,244 queries/s; refine 40 with nprobe 256 reaches 0.955 at 266 (docs/experiments.md, "faiss
# settings")
DEFAULT_REFINE = 10

# Chosen on the DL 2021 split with the recipe's models (3 seeds; benchmarks/quality_dl19.sh feedback,
# docs/experiments.md): the best mean of the two-tower-prf and hybrid-linear-prf nDCG@10 over depths 3, 5, 10,
# 20 and weights 0.5, 1, 2, 4 (0.5356 at 3 and 2; next 0.5348 at 3 and 1; 0.5290 at 10 and 2)
DEFAULT_FEEDBACK_DEPTH = 3
DEFAULT_FEEDBACK_WEIGHT = 2.0

# the systems a search session ranks with (``session.make_retrievers``), and how the two-tower searches
SYSTEMS = ("two-tower", "bm25", "hybrid", "two-tower-prf", "hybrid-prf")
SEARCH_MODES = ("auto", "exact", "faiss")

# The search server (``server.SearchGate``): searches run at once, and requests that may wait for one; beyond
# both a request is answered 503 at once. 64 waiting x a 40-150 ms search is a few seconds' wait.
DEFAULT_QUEUE = 64
MAX_PARALLEL = 256  # each search holds a thread and its working memory (a chunk of vectors)
MAX_QUEUE = 100_000


@dataclass
class SearchOptions:
    search: str = "auto"  # one of SEARCH_MODES
    nprobe: int = 16
    ef_search: int = 128
    refine: int = DEFAULT_REFINE
    chunk_rows: int = 65536
    # BM25 settings; None: the saved BM25 index's own (or the defaults when the index has none)
    bm25_k1: float | None = None
    bm25_b: float | None = None
    bm25_stemmer: str | None = None
    fusion: str = "rrf"
    fusion_weight: float = DEFAULT_FUSION_WEIGHT
    rrf_k: int = DEFAULT_RRF_K
    fusion_depth: int = DEFAULT_FUSION_DEPTH
    feedback_depth: int = DEFAULT_FEEDBACK_DEPTH
    feedback_weight: float = DEFAULT_FEEDBACK_WEIGHT
