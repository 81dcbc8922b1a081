"""One retrieval path on real data: search and evaluation rank the TREC DL 2019 pool the same way.

Opt-in (``MSMARCO_REAL_DATA=1``): the 28.6K-passage pool in ``../shared/data/msmarco-trec-dl-2019``, read in
place. The model is an untrained two-tower over a vocabulary of the pool's own words (seeded random word
vectors): what is compared is the two paths' rankings, not the model's quality.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import SHARED_DATA, run_script

from msmarco_search.core.text import tokenize
from msmarco_search.data.vocab import Vocabulary
from msmarco_search.io.msmarco_files import read_collection
from msmarco_search.training.config import TwoTowerConfig
from msmarco_search.training.model import TwoTowerModel
from msmarco_search.training.model_file import save_two_tower

DL19 = SHARED_DATA / "msmarco-trec-dl-2019"


def _ranking(path: Path) -> dict[str, list[str]]:
    ranking: dict[str, list[tuple[int, str]]] = {}
    for line in path.read_text().splitlines():
        qid, _, docid, rank, _, _ = line.split()
        ranking.setdefault(qid, []).append((int(rank), docid))
    return {qid: [docid for _, docid in sorted(hits)] for qid, hits in ranking.items()}


def _pool_model(path: Path) -> Path:
    counts = Counter(word for _, text in read_collection(DL19 / "collection.tsv") for word in tokenize(text))
    vocab = Vocabulary.from_words(sorted(word for word, count in counts.items() if count >= 2))
    torch.manual_seed(0)
    config = TwoTowerConfig(vocab_size=len(vocab), embedding_dim=64, shared_towers=True)
    return save_two_tower(path, TwoTowerModel(config, vocab), {})


@pytest.mark.real_data
@pytest.mark.skipif(not DL19.is_dir(), reason="../shared/data is absent")
def test_search_and_evaluation_rank_the_dl19_pool_the_same_way(tmp_path):
    model = _pool_model(tmp_path / "model.pt")
    files = ["--collection", DL19 / "collection.tsv", "--queries", DL19 / "queries.dl19.tsv", "--qrels",
             DL19 / "qrels.dl19-passage.in-collection.txt"]
    run_script("search/search.py", "index", model, "--dataset-path", DL19 / "collection.tsv", cwd=tmp_path)
    run_script("search/search.py", "query", model, "--queries", DL19 / "queries.dl19.tsv", "--run-file",
               tmp_path / "search.trec", "--system", "all", "-k", "1000", cwd=tmp_path)
    run_script("evaluation/evaluate.py", "--model", model, *files, "--systems",
               "two-tower,bm25,hybrid,two-tower-prf,hybrid-prf", "--fusion", "rrf", "--output-dir", tmp_path / "eval",
               cwd=tmp_path)
    for system, evaluated in [("two-tower", "two-tower"), ("bm25", "bm25"), ("hybrid", "hybrid-rrf"),
                              ("two-tower-prf", "two-tower-prf"), ("hybrid-prf", "hybrid-rrf-prf")]:
        scored = _ranking(tmp_path / "eval" / f"run.full.{evaluated}.trec")
        searched = _ranking(tmp_path / f"search.{system}.trec")
        assert len(scored) == 43 and set(scored) <= set(searched)
        assert {qid: searched[qid] for qid in scored} == scored, system
