"""Unit tests of the library modules: sources, token arrays, checkpoints, losses, model."""

from __future__ import annotations

import ast
import math
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import msmarco_search
from msmarco_search.core.errors import PipelineError
from msmarco_search.core.text import tokenize
from msmarco_search.data.generation import generate_triplets
from msmarco_search.data.rows import RowFileSource
from msmarco_search.data.sources import open_source
from msmarco_search.data.tokens import TokenBatch
from msmarco_search.data.tsv import TsvSource
from msmarco_search.data.vocab import Vocabulary
from msmarco_search.io.arrays import TokenArrays
from msmarco_search.io.outputs import timestamped_path
from msmarco_search.io.safe_load import KIND_TRIPLETS, load_pickle, save_pickle
from msmarco_search.training.config import TwoTowerConfig
from msmarco_search.training.losses import InBatchSoftmaxLoss, TripletMarginLoss
from msmarco_search.training.model import TwoTowerModel


def test_tokenize_lowercases_and_keeps_alphanumerics():
    assert tokenize("What's the COVID-19 rate? 3.5%") == ["what", "s", "the", "covid", "19", "rate", "3", "5"]


def test_row_and_tsv_sources_yield_the_same_kind_of_records(rows_file, tsv_folder, corpus):
    rows = open_source([rows_file])
    assert isinstance(rows, RowFileSource)
    records = list(rows.records(5))
    assert len(records) == 5 and all(len(r.positives) == 2 for r in records)
    tsv = open_source([tsv_folder])
    assert isinstance(tsv, TsvSource) and tsv.has_candidates
    records = list(tsv.records())
    assert len(records) == len(corpus.queries)
    assert all(r.positives and r.non_selected for r in records)
    # files named one by one, without candidates
    named = open_source([tsv_folder / "collection.tsv", tsv_folder / "queries.train.tsv",
                         tsv_folder / "qrels.train.tsv"])
    assert not named.has_candidates
    first = next(named.records())
    assert len(first.passages) == 2 and all(p.is_selected for p in first.passages)
    assert sum(1 for _ in named.corpus_texts()) == len(corpus.passages) + len(corpus.queries)


def test_sources_reject_bad_files(tmp_path):
    bad = tmp_path / "rows.jsonl"
    bad.write_text('{"query": "x", "passages": {"is_selected": [1]}}\n')
    with pytest.raises(PipelineError, match="rows.jsonl .line 1.*row layout"):
        list(open_source([bad]).records())
    qrels = tmp_path / "qrels.train.tsv"
    qrels.write_text("1 0 2\n")
    with pytest.raises(PipelineError, match="not a qrels line"):
        list(open_source([qrels]).records())
    with pytest.raises(PipelineError, match="not found"):
        open_source([tmp_path / "missing.jsonl"])


def test_max_samples_must_be_positive(rows_file):
    with pytest.raises(PipelineError, match="positive"):
        list(open_source([rows_file]).records(0))


def test_token_arrays_gather_matches_python_slicing(tmp_path):
    rng = np.random.default_rng(0)
    sequences = [rng.integers(2, 100, size=rng.integers(0, 7)).astype(np.int32) for _ in range(50)]
    offsets = np.zeros(51, dtype=np.int64)
    np.cumsum([len(s) for s in sequences], out=offsets[1:])
    arrays = TokenArrays(np.concatenate(sequences), offsets)
    arrays.save(tmp_path, "x")
    loaded = TokenArrays.load(tmp_path, "x")
    indices = np.array([5, 0, 49, 5, 17])
    ids, bag_offsets = loaded.gather(indices)
    expected = [sequences[i] for i in indices]
    assert ids.tolist() == [t for s in expected for t in s.tolist()]
    assert bag_offsets.tolist() == np.cumsum([0] + [len(s) for s in expected[:-1]]).tolist()


def test_truncated_token_arrays_are_refused(tmp_path):
    TokenArrays(np.arange(10, dtype=np.int32), np.array([0, 4, 10], dtype=np.int64)).save(tmp_path, "t")
    np.save(tmp_path / "t.ids.npy", np.arange(6, dtype=np.int32))
    with pytest.raises(PipelineError, match="truncated"):
        TokenArrays.load(tmp_path, "t")


def test_pickle_loader_refuses_globals_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"kind": KIND_TRIPLETS, "format_version": 1, "x": Evil()}))
    with pytest.raises(PipelineError, match="refus"):
        load_pickle(path, KIND_TRIPLETS)
    assert not marker.exists()
    good = save_pickle({"queries": ["a"]}, tmp_path / "good.pkl", KIND_TRIPLETS)
    assert load_pickle(good, KIND_TRIPLETS)["queries"] == ["a"]
    newer = tmp_path / "newer.pkl"
    newer.write_bytes(pickle.dumps({"kind": KIND_TRIPLETS, "format_version": 99}))
    with pytest.raises(PipelineError, match="newer"):
        load_pickle(newer, KIND_TRIPLETS)


def test_timestamped_paths_are_unique_within_a_second(tmp_path):
    paths = {timestamped_path(tmp_path, "two_tower_model", ".pt") for _ in range(5)}
    assert len(paths) == 5


def test_in_batch_softmax_loss_matches_hand_computation():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    n = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    loss = InBatchSoftmaxLoss(scale=2.0)(q, p, n)
    # query 0 scores: p0 1, p1 .6, n0 0, n1 1 -> target p0; query 1: p0 0, p1 .8, n0 1, n1 0 -> target p1
    l0 = -math.log(math.exp(2) / (math.exp(2) + math.exp(1.2) + 1 + math.exp(2)))
    l1 = -math.log(math.exp(1.6) / (1 + math.exp(1.6) + math.exp(2) + 1))
    assert loss.item() == pytest.approx((l0 + l1) / 2, rel=1e-5)
    # own negatives: q0.n0 = 0, q1.n1 = 0
    assert TripletMarginLoss(margin=0.5)(q, p, n).item() == 0.0
    assert TripletMarginLoss(margin=1.5)(q, p, n).item() == pytest.approx(((1.5 - 1) + (1.5 - 0.8)) / 2)


def test_untrained_mean_tower_is_the_normalised_mean_of_word_vectors():
    vectors = torch.randn(6, 4)
    vocab = Vocabulary.from_words(["a", "b", "c", "d"])
    model = TwoTowerModel(TwoTowerConfig(vocab_size=6, embedding_dim=4), vocab, vectors)
    batch = TokenBatch.from_lists([[2, 3], [4], []])
    out = model.query_vectors(batch)
    expected = torch.nn.functional.normalize((vectors[2] + vectors[3]) / 2, dim=0)
    assert torch.allclose(out[0], expected, atol=1e-5)
    assert torch.allclose(out[2], torch.zeros(4))
    gru = TwoTowerModel(TwoTowerConfig(vocab_size=6, embedding_dim=4, tower="gru", gru_hidden_dim=3), vocab, vectors)
    assert gru.passage_vectors(batch).shape == (3, 4)


def test_vocabulary_maps_unknown_words_to_unk():
    vocab = Vocabulary.from_words(["flea", "cycle"])
    assert vocab.encode("Flea life cycle") == [2, 1, 3]


def test_triplet_negatives_never_equal_positives(rows_file):
    records = list(open_source([rows_file]).records())
    records[0].passages[3].text = records[0].passages[0].text.upper()  # a duplicate of a positive
    triplets, stats = generate_triplets(records, "mixed", seed=1)
    assert stats.queries_read == len(records)
    for p, n in zip(triplets.positives, triplets.negatives, strict=True):
        assert p.lower() != n.lower()


def test_bm25_ranks_the_passage_sharing_rare_words_first():
    from msmarco_search.index.bm25 import BM25Index

    index = BM25Index(["a", "b", "c"], ["The flea life cycle.", "Concrete floor cost.", "The cost of life."])
    positions, scores = index.search(["flea cycle", "concrete cost", "zzz unknown"], k=2)
    assert [index.passage_ids[i] for i in positions[:, 0][:2]] == ["a", "b"]
    assert scores[0, 0] > scores[0, 1] and np.all(scores[2] == 0)
    assert index.scores("flea").argmax() == 0


def test_bm25_scores_a_query_without_tokens_zero_instead_of_raising():
    from msmarco_search.index.bm25 import BM25Index

    index = BM25Index(["a", "b"], ["The flea life cycle.", "Concrete floor cost."])
    positions, scores = index.search(["?!", "flea"], k=2)
    assert np.all(scores[0] == 0) and index.passage_ids[positions[1, 0]] == "a"
    assert np.all(index.scores("...") == 0) and index.scores("...").shape == (2,)


@pytest.mark.parametrize("tower", ["mean", "gru"])
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("token_weights", [False, True])
def test_state_shapes_match_the_modules(tower, shared, token_weights):
    from msmarco_search.training.model_file import state_shapes

    vocab = Vocabulary.from_words(["a", "b", "c"])
    config = TwoTowerConfig(vocab_size=len(vocab), embedding_dim=6, output_dim=4, tower=tower, gru_hidden_dim=3,
                            shared_towers=shared, token_weights=token_weights)
    model = TwoTowerModel(config, vocab)
    assert state_shapes(config) == {name: tuple(value.shape) for name, value in model.state_dict().items()}


# The subpackages by stage, lowest first: each imports only from itself and the ones before it (the package's
# ``__init__`` and ``__main__`` sit above them all), so data flows one way and training never reaches search
# or evaluation.
LAYERS = ("core", "io", "data", "embeddings", "teacher", "training", "index", "search", "evaluation", "labels", "cli")


def _project_imports(path: Path) -> list[tuple[int, str]]:
    """Every import of ``path`` that names the package, at any depth (inside functions and under TYPE_CHECKING
    too): (line, module); a relative import is returned as ``.`` (the package names its modules in full)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            found.append((node.lineno, "."))
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] if node.module != "msmarco_search" else [f"msmarco_search.{a.name}"
                                                                           for a in node.names]
            found += [(node.lineno, name) for name in names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
    return [(line, name) for line, name in found if name == "." or name.split(".")[0] == "msmarco_search"]


def test_each_subpackage_imports_only_the_ones_below_it():
    package = Path(msmarco_search.__file__).parent
    wrong, seen = [], 0
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package).parts
        if len(parts) == 1:  # __init__, __main__: the package's face, above every layer
            assert path.stem in ("__init__", "__main__"), f"{path}: a module outside the subpackages"
            continue
        layer = parts[0]
        assert layer in LAYERS, f"{path}: subpackage {layer} has no place in LAYERS"
        for line, name in _project_imports(path):
            seen += 1
            target = name.split(".")[1] if name.count(".") else ""
            if name == "." or target not in LAYERS or LAYERS.index(target) > LAYERS.index(layer):
                wrong.append(f"{path.relative_to(package)}:{line} ({layer}) imports {name}")
    assert seen > 300, "the imports were not found"
    assert not wrong, "\n".join(wrong)


def test_help_names_the_command_and_imports_nothing_heavy():
    """``--help`` of every command, as ``python -m msmarco_search COMMAND --help`` runs it: its usage line names
    the command so, and no module that takes seconds to import is imported before the arguments are parsed."""
    import subprocess
    import sys

    heavy = ("torch", "numpy", "gensim", "datasets", "faiss", "bm25s", "sentence_transformers", "scipy", "pandas",
             "pyarrow", "matplotlib", "fastapi", "ir_measures", "ftfy", "tqdm")
    code = ("import contextlib, io, sys\n"
            "from msmarco_search.__main__ import main\n"
            "from msmarco_search.cli import COMMANDS\n"
            "for name in COMMANDS:\n"
            "    shown = io.StringIO()\n"
            "    with contextlib.redirect_stdout(shown):\n"
            "        try:\n"
            "            main([name, '--help'])\n"
            "        except SystemExit as stop:\n"
            "            assert stop.code == 0, (name, stop.code)\n"
            f"    loaded = sorted(m for m in {heavy!r} if m in sys.modules)\n"
            "    print(name, '|', shown.getvalue().splitlines()[0], '|', ' '.join(loaded))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    lines = [line.split(" | ") for line in result.stdout.splitlines()]
    assert [name for name, _, _ in lines] == ["cbow", "triplets", "train", "average", "export", "search", "evaluate",
                                              "pipeline"]
    for name, usage, loaded in lines:
        assert usage.startswith(f"usage: python -m msmarco_search {name} "), usage
        assert loaded == "", f"{name} --help imports {loaded}"


def test_training_never_imports_evaluation_or_search():
    """Data flows one way: sources -> tokens -> model -> training; index -> retrieval -> evaluation and search."""
    import subprocess
    import sys

    code = ("import sys, msmarco_search.cli.train, msmarco_search.evaluation.validation\n"
            "print(sorted(m for m in sys.modules if m in ('msmarco_search.evaluation.evaluate',"
            " 'msmarco_search.search.session', 'msmarco_search.cli.evaluate', 'msmarco_search.cli.search')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert result.stdout.strip() == "[]"
