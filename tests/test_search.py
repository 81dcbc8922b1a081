"""search/search.py through its command line, and the index, search and fusion functions behind it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import ir_measures
import numpy as np
import pytest
import torch
from conftest import ROOT, SEARCH_SCRIPT, hits_by_system, run_script

from msmarco_search.cli.search import main as search_command
from msmarco_search.core.errors import PipelineError
from msmarco_search.data.records import text_id
from msmarco_search.index.faiss import build_faiss_index, import_faiss
from msmarco_search.index.layout import FAISS_FILE
from msmarco_search.index.load import load_index
from msmarco_search.search.dense import DenseRetriever, TwoTowerRetriever, exact_search
from msmarco_search.search.fusion import linear_fusion, reciprocal_rank_fusion
from msmarco_search.search.hybrid import FeedbackRetriever, HybridRetriever
from msmarco_search.search.options import SYSTEMS
from msmarco_search.search.retrieval import BM25Retriever, PassagePool, Retriever
from msmarco_search.training.model import TwoTowerModel
from msmarco_search.training.model_file import load_model, save_two_tower


def search_main(*args: object) -> int:
    """The search command's ``main``, in this process (no interpreter start-up), with string arguments."""
    return search_command([str(a) for a in args])


def test_index_is_written_beside_the_model_and_reads_back(search_setup):
    index_dir = search_setup["index"]
    assert "Saved index of 52 passages" in search_setup["index_stdout"]
    manifest = json.loads((index_dir / "manifest.json").read_text())
    model = load_model(search_setup["model"])
    assert manifest["model_id"] == model.metadata["model_id"] and manifest["count"] == 52
    assert manifest["dim"] == model.config.output_dim and manifest["faiss"]["type"] == "flat"
    assert manifest["faiss"]["measured"]["recall@10"] == 1.0  # flat is exact; measured at build time
    assert "faiss flat: recall@10 1.000 against exact search" in search_setup["index_stdout"]
    assert manifest["dtype"] == "float32" and manifest["shards"] is None  # auto: float16 only at scale
    index = load_index(index_dir, model)
    assert index.vectors.shape == (52, model.config.output_dim) and index.vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(index.vectors, axis=1), 1.0, atol=1e-5)
    for position, line in enumerate(search_setup["lines"]):  # ids in collection order, texts by seek
        pid, text = line.split("\t")
        assert index.pid(position) == pid and index.text(position) == text
    index.close()


def test_query_on_the_command_line_prints_each_systems_hits(search_setup):
    query = search_setup["queries"]["m3"]
    # feedback from the first hit alone: on 52 toy passages the default 3 may pull the query toward other topics,
    # and the point here is each system's output, not feedback's quality
    result = run_script(SEARCH_SCRIPT, "query", search_setup["model"], *query.split(), "--system", "all", "-k", "3",
                        "--feedback-depth", "1", cwd=search_setup["folder"])
    blocks = hits_by_system(result.stdout)
    assert set(blocks) == set(SYSTEMS)
    for system, (hits,) in blocks.items():
        assert hits[0] == "p3", (system, result.stdout)
        assert len(hits) == 3
    first = next(line for line in result.stdout.splitlines() if line.split()[:2] == ["1", "p3"])
    rank, pid, score, *words = first.split()
    assert float(score) > 0 and search_setup["passages"][3].startswith(" ".join(words).rstrip("…"))


def test_queries_read_from_stdin_until_end_of_input(search_setup):
    # (not topic 5: the toy model ranks p5 sixth for m5, and equal-weight RRF over the full lists then puts a
    # filler passage ranked 4th and 2nd above it)
    topics = [0, 6, 11]
    stdin = "".join(f"{search_setup['queries'][f'm{t}']}\n\n" for t in topics)  # blank lines are skipped
    env = {**os.environ, "MSMARCO_SEARCH_NO_PROGRESS": "1"}
    result = subprocess.run([sys.executable, str(ROOT / SEARCH_SCRIPT), "query", str(search_setup["model"]),
                             "--system", "hybrid", "-k", "2"], input=stdin, capture_output=True, text=True,
                            cwd=search_setup["folder"], env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert [hits[0] for hits in hits_by_system(result.stdout)["hybrid"]] == [f"p{t}" for t in topics]


@pytest.fixture(scope="session")
def batch_runs(search_setup) -> dict[str, Path]:
    folder = search_setup["folder"]
    run_script(SEARCH_SCRIPT, "query", search_setup["model"], "--queries", folder / "queries.tsv", "--run-file",
               folder / "exact.trec", "--system", "all", "--search", "exact", "-k", "5", cwd=folder)
    run_script(SEARCH_SCRIPT, "query", search_setup["model"], "--queries", folder / "queries.tsv", "--run-file",
               folder / "faiss.trec", "--search", "faiss", "-k", "5", "--tag", "faiss-flat", cwd=folder)
    return {"two-tower": folder / "exact.two-tower.trec", "bm25": folder / "exact.bm25.trec",
            "hybrid": folder / "exact.hybrid.trec", "faiss": folder / "faiss.trec"}


def _run(path: Path) -> dict[str, list[tuple[str, int, float]]]:
    run: dict[str, list[tuple[str, int, float]]] = {}
    for line in path.read_text().splitlines():
        qid, q0, docid, rank, score, tag = line.split(" ")
        assert q0 == "Q0" and tag
        run.setdefault(qid, []).append((docid, int(rank), float(score)))
    return run


@pytest.mark.parametrize("system, prefixes", [("two-tower", "qm"), ("bm25", "sm"), ("hybrid", "m")])
def test_batch_mode_writes_a_valid_trec_run(search_setup, batch_runs, system, prefixes):
    run = _run(batch_runs[system])
    assert set(run) <= set(search_setup["queries"])
    for hits in run.values():
        assert [rank for _, rank, _ in hits] == list(range(1, len(hits) + 1)) and len(hits) <= 5
        scores = [score for _, _, score in hits]
        assert scores == sorted(scores, reverse=True)
    # ir_measures reads it: the passage each query was made for comes first for the queries this system can answer
    qrels = [ir_measures.Qrel(qid, pid, 1) for qid, pid in search_setup["qrels"].items() if qid[0] in prefixes]
    per_query = list(ir_measures.iter_calc([ir_measures.Success @ 1], qrels,
                                           ir_measures.read_trec_run(str(batch_runs[system]))))
    assert len(per_query) == len(qrels)
    values = [m.value for m in per_query]
    if system == "two-tower":
        # the toy model's learned links (q*, m*): one query in a few dozen may lose to a filler passage by a hair
        assert sum(values) / len(values) >= 0.95, sum(values) / len(values)
    elif system == "hybrid":
        # equal-weight RRF over the full lists: m5 (p5 sixth for the toy model, first for BM25) loses to a filler
        # passage ranked 4th and 2nd; every other mixed query finds its passage
        assert sum(values) >= len(values) - 1, values
    else:
        assert all(value == 1.0 for value in values), values


def test_faiss_flat_gives_the_same_hits_as_exact_search(batch_runs):
    exact, faiss = _run(batch_runs["two-tower"]), _run(batch_runs["faiss"])
    assert set(exact) == set(faiss)
    for qid, hits in exact.items():
        assert [d for d, _, _ in faiss[qid]][:3] == [d for d, _, _ in hits][:3]
        assert np.allclose([s for _, _, s in faiss[qid]], [s for _, _, s in hits], atol=1e-5)
    assert batch_runs["faiss"].read_text().split("\n")[0].endswith(" faiss-flat")


def _one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    return lines[0]


def test_an_index_built_by_another_model_is_refused(search_setup, tmp_path):
    model = load_model(search_setup["model"])
    other = save_two_tower(tmp_path / "other.pt", TwoTowerModel(model.config, model.vocab), {})
    result = run_script(SEARCH_SCRIPT, "query", other, "--index-dir", search_setup["index"], "what is ask1x1",
                        cwd=tmp_path, check=False)
    message = _one_line_error(result)
    assert "manifest.json" in message and "another model" in message


def test_a_truncated_index_is_refused(search_setup, tmp_path):
    index = shutil.copytree(search_setup["index"], tmp_path / "index")
    vectors = index / "vectors.npy"
    vectors.write_bytes(vectors.read_bytes()[:-100])
    result = run_script(SEARCH_SCRIPT, "query", search_setup["model"], "--index-dir", index, "what is ask1x1",
                        cwd=tmp_path, check=False)
    message = _one_line_error(result)
    assert "vectors.npy" in message and "truncated" in message


@pytest.mark.parametrize("damage", ["ids.npy", "offsets.npy", FAISS_FILE, "no manifest", "collection"])
def test_every_damaged_index_file_is_refused(search_setup, tmp_path, damage):
    index = shutil.copytree(search_setup["index"], tmp_path / "index")
    if damage == "no manifest":
        (index / "manifest.json").unlink()
    elif damage == "collection":
        manifest = json.loads((index / "manifest.json").read_text())
        collection = tmp_path / "collection.tsv"
        collection.write_text(Path(manifest["collection"]).read_text() + "extra\tpassage\n")
        manifest["collection"] = str(collection)
        (index / "manifest.json").write_text(json.dumps(manifest))
    else:
        (index / damage).write_bytes((index / damage).read_bytes()[:-8])
    with pytest.raises(PipelineError) as error:
        load_index(index)
    expected = {"no manifest": "manifest.json", "collection": "collection changed"}.get(damage, "truncated")
    assert expected in str(error.value) and "\n" not in str(error.value)


def test_index_the_passages_of_a_row_layout_source(search_setup, rows_file, tmp_path, capsys):
    """Rows have no collection file: their passages, deduplicated, go into the index folder."""
    search_main("index", search_setup["model"], "--dataset-path", rows_file, "--index-dir", tmp_path / "rows",
                "--dtype", "float16", "--faiss", "hnsw")
    texts = {text for line in rows_file.read_text().splitlines()
             for text in json.loads(line)["passages"]["passage_text"]}
    model = load_model(search_setup["model"])
    index = load_index(tmp_path / "rows", model)
    assert len(index) == len(texts) and index.vectors.dtype == np.float16
    assert {index.text(i) for i in range(len(index))} == texts
    assert all(index.pid(i) == text_id(index.text(i)) for i in range(len(index)))
    capsys.readouterr()
    search_main("query", search_setup["model"], "--index-dir", tmp_path / "rows", "what is ask4x1 ask4x2 ask4x3",
                "-k", "3")
    out = capsys.readouterr().out
    assert "two-tower: faiss hnsw" in out
    hits = hits_by_system(out)["two-tower"][0]
    assert len(hits) == 3 and all("doc4y" in index.text(index.ids.tolist().index(h.encode())) for h in hits)


def test_linear_hybrid_and_faiss_kinds_agree_with_exact_search(search_setup):
    model = load_model(search_setup["model"])
    index = load_index(search_setup["index"], model)
    dense, bm25 = TwoTowerRetriever(model), BM25Retriever()
    hybrid = HybridRetriever(dense, bm25, "linear", weight=0.3)
    hybrid.prepare(index)
    mixed = [search_setup["queries"][f"m{t}"] for t in range(12)]
    linear = hybrid.search(mixed, 3)
    assert [index.pid(hits[0][0]) for hits in linear] == [f"p{t}" for t in range(12)]
    assert all(0 <= score <= 1 for hits in linear for _, score in hits)

    vectors = np.random.default_rng(0).standard_normal((800, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = torch.from_numpy(vectors[:20] + 0.05)
    scores, rows = exact_search(vectors, queries, 5, chunk_rows=64)  # many chunks: the running top-k merge
    brute = (queries @ torch.from_numpy(vectors).T).topk(5, dim=1)
    assert torch.equal(rows, brute.indices) and torch.allclose(scores, brute.values)
    faiss = import_faiss()
    for kind in ("hnsw", "ivf"):
        path = search_setup["folder"] / f"{kind}.faiss"
        build_faiss_index(vectors, kind, path)
        approx = faiss.read_index(str(path))
        if kind == "ivf":
            approx.nprobe = approx.nlist
        _, found = approx.search(queries.numpy(), 1)
        assert (found[:, 0] == rows[:, 0].numpy()).mean() >= 0.9


class _Vectors(DenseRetriever):
    """A dense retriever of given vectors: passage text ``p<i>`` is row i of ``passages``, query ``q<i>`` row i
    of ``queries``."""

    def __init__(self, passages: np.ndarray, queries: np.ndarray):
        super().__init__("fixed")
        self.rows = {"passage": passages, "query": queries}

    def encode(self, texts, side):
        return torch.from_numpy(self.rows[side][[int(text[1:]) for text in texts]].copy())


class _Given(Retriever):
    """A first ranking given in advance: query ``q<i>`` gets ``hits[i]``."""

    name = "given"

    def __init__(self, hits: list[list[int]]):
        super().__init__()
        self.hits = hits

    def _prepare(self, collection):
        pass

    def search(self, queries, k):
        return [[(row, 1.0) for row in self.hits[int(q[1:])][:k]] for q in queries]

    def rerank(self, queries, candidates):
        raise NotImplementedError


def test_feedback_moves_the_query_toward_its_first_hits_then_ranks_again():
    """Rocchio in vector space: q' = normalise(q + weight x mean of the first ranking's top-depth vectors), from
    the dense retriever's own ranking or from another's; search and re-ranking both score with q'."""
    rng = np.random.default_rng(3)
    passages = rng.standard_normal((60, 8)).astype(np.float32)
    passages /= np.linalg.norm(passages, axis=1, keepdims=True)
    queries = rng.standard_normal((4, 8)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    pool = PassagePool([f"d{i}" for i in range(60)], [f"p{i}" for i in range(60)])
    dense = _Vectors(passages, queries)
    texts = [f"q{i}" for i in range(4)]

    def expected(first: list[list[int]], weight: float) -> np.ndarray:
        moved = queries + weight * np.stack([passages[rows].mean(axis=0) for rows in first])
        return moved / np.linalg.norm(moved, axis=1, keepdims=True)

    own = FeedbackRetriever(dense, depth=3, weight=2.0)
    own.prepare(pool)
    assert own.name == "fixed-prf"
    first = [np.argsort(-(passages @ q), kind="stable")[:3].tolist() for q in queries]
    for moved, hits in zip(expected(first, 2.0), own.search(texts, 5), strict=True):
        scores = passages @ moved
        assert [row for row, _ in hits] == np.argsort(-scores, kind="stable")[:5].tolist()
        assert [score for _, score in hits] == pytest.approx(scores[[row for row, _ in hits]], abs=1e-5)
    # another first ranking: the far passages it names pull the query, so they (and their neighbours) rise
    far = [np.argsort(passages @ q, kind="stable")[:2].tolist() for q in queries]  # each query's two worst
    given = FeedbackRetriever(dense, _Given(far), depth=2, weight=4.0, name="moved")
    given.prepare(pool)
    moved = expected(far, 4.0)
    for q, hits, rows in zip(moved, given.search(texts, 60), far, strict=True):
        ranks = {row: rank for rank, (row, _) in enumerate(hits)}
        assert all(ranks[row] < 20 for row in rows)  # from the last two places into the top third
        assert hits[0][0] == int(np.argmax(passages @ q))
    candidates = [np.array([5, 1, 7]), np.array([0, 59])] * 2
    for q, scores, rows in zip(moved, given.rerank(texts, candidates), candidates, strict=True):
        assert scores == pytest.approx(passages[rows] @ q, abs=1e-5)
    with pytest.raises(PipelineError, match="depth of at least 1"):
        FeedbackRetriever(dense, depth=0)


def test_fusion_functions_match_hand_computation():
    dense = {"a": 0.9, "b": 0.5, "c": 0.1}
    lexical = {"c": 12.0, "a": 3.0, "d": 1.0}
    fused = dict(reciprocal_rank_fusion([dense, lexical], k=60))
    assert fused["a"] == pytest.approx(1 / 61 + 1 / 62)
    assert fused["c"] == pytest.approx(1 / 63 + 1 / 61)
    assert fused["d"] == pytest.approx(1 / 63) and fused["b"] == pytest.approx(1 / 62)
    assert [d for d, _ in reciprocal_rank_fusion([dense, lexical], limit=2)] == ["a", "c"]
    weighted = dict(reciprocal_rank_fusion([dense, lexical], k=1, weights=[1.0, 0.0]))
    assert weighted["a"] == pytest.approx(1 / 2) and weighted["d"] == 0.0
    mixed = dict(linear_fusion([dense, lexical], weights=[0.5, 0.5]))
    assert mixed["a"] == pytest.approx(0.5 * 1.0 + 0.5 * (3 - 1) / 11)
    assert mixed["c"] == pytest.approx(0.5 * 0.0 + 0.5 * 1.0)
    assert mixed["d"] == pytest.approx(0.0) and mixed["b"] == pytest.approx(0.5 * 0.5)


def test_a_missing_faiss_is_named_or_searched_around(search_setup, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "faiss", None)  # what `import faiss` sees when it is not installed
    with pytest.raises(PipelineError, match="faiss is not installed"):
        import_faiss()
    with pytest.raises(PipelineError, match="faiss is not installed"):
        search_main("query", search_setup["model"], "--search", "faiss", "what is ask2x1")
    capsys.readouterr()
    search_main("query", search_setup["model"], "what is ask2x1 ask2x3", "-k", "1")  # auto: exact instead
    captured = capsys.readouterr()
    assert "searching exactly instead" in captured.err
    assert hits_by_system(captured.out)["two-tower"] == [["p2"]]


def test_help_describes_every_command(capsys):
    for command in ([], ["index"], ["query"], ["serve"]):
        with pytest.raises(SystemExit) as exit_status:
            search_main(*command, "--help")
        assert exit_status.value.code == 0
    out = capsys.readouterr().out
    assert "--index-dir" in out and "--run-file" in out and "--faiss" in out and "{index,query,faiss,serve}" in out
    assert "--host" in out and "--port" in out
    assert "--fusion-weight" in out and "--fusion-depth" in out and "--weight " not in out and "--depth " not in out


def _ranking(path: Path) -> dict[str, list[str]]:
    """``{qid: [docid, ...]}`` in the file's rank order."""
    return {qid: [docid for docid, _, _ in hits] for qid, hits in _run(path).items()}


def test_search_and_evaluation_write_the_same_runs(search_setup, tmp_path):
    """One retrieval path: the run `search.py query --run-file` writes for each system is the run that
    `evaluate.py` writes for it (full ranking of the same collection, same depth)."""
    folder, depth = search_setup["folder"], 40
    run_script(SEARCH_SCRIPT, "query", search_setup["model"], "--queries", folder / "queries.tsv", "--run-file",
               tmp_path / "search.trec", "--system", "all", "--search", "exact", "-k", depth, cwd=folder)
    run_script("evaluation/evaluate.py", "--model", search_setup["model"], "--collection",
               folder / "collection.tsv", "--queries", folder / "queries.tsv", "--qrels", folder / "qrels.txt",
               "--systems", "two-tower,bm25,hybrid,two-tower-prf,hybrid-prf",
               "--fusion", "rrf", "--run-depth", depth, "--output-dir", tmp_path / "eval", cwd=folder)
    for system, evaluated in [("two-tower", "two-tower"), ("bm25", "bm25"), ("hybrid", "hybrid-rrf"),
                              ("two-tower-prf", "two-tower-prf"), ("hybrid-prf", "hybrid-rrf-prf")]:
        searched = _ranking(tmp_path / f"search.{system}.trec")
        scored = _ranking(tmp_path / "eval" / f"run.full.{evaluated}.trec")
        assert searched == scored, system
        if system != "bm25":  # BM25 returns only passages that share a word with the query
            assert all(len(hits) == depth for hits in searched.values())


# ------------------------------------------------------------------------------------------------------ BM25

STEMMING = ["r1\tRunners running in the marathon races", "c1\tCooking recipes for a quick dinner",
            "h1\tThe history of the printing press"]


def test_bm25_stems_so_that_only_stemming_links_the_query_to_its_passage():
    from msmarco_search.index.bm25 import BM25Index

    ids, texts = zip(*(line.split("\t") for line in STEMMING), strict=True)
    stemmed, plain = BM25Index(ids, texts), BM25Index(ids, texts, stemmer="none")
    assert stemmed.stemmer == "english"  # the default: the field's BM25
    # "runner race" shares no token with any passage; stemmed, "runner"/"runners" and "race"/"races" meet
    assert np.all(plain.scores("runner race") == 0)
    scores = stemmed.scores("runner race")
    assert scores[0] > 0 and np.all(scores[1:] == 0)
    positions, _ = stemmed.search(["cooked recipe"], k=1)
    assert ids[positions[0, 0]] == "c1"


def test_search_uses_the_bm25_index_saved_at_index_time(search_setup, tmp_path, capsys):
    (tmp_path / "collection.tsv").write_text("\n".join(STEMMING) + "\n")
    for stemmer in ("english", "none"):
        search_main("index", search_setup["model"], "--dataset-path", tmp_path / "collection.tsv", "--index-dir",
                    tmp_path / stemmer, "--bm25-stemmer", stemmer)
        manifest = json.loads((tmp_path / stemmer / "manifest.json").read_text())
        assert manifest["bm25"]["stemmer"] == stemmer and manifest["bm25"]["k1"] == 0.9
        assert (tmp_path / stemmer / "bm25" / "bm25.json").is_file()
    capsys.readouterr()
    search_main("query", search_setup["model"], "--index-dir", tmp_path / "english", "--system", "bm25",
                "runner race")
    out = capsys.readouterr().out
    assert "Snowball English stemmer, saved index" in out and hits_by_system(out)["bm25"] == [["r1"]]
    search_main("query", search_setup["model"], "--index-dir", tmp_path / "none", "--system", "bm25", "runner race")
    out = capsys.readouterr().out
    assert "no stemming, saved index" in out and hits_by_system(out)["bm25"] == [[]] and "(no hits)" in out


def test_a_saved_bm25_index_reloads_with_the_same_scores(search_setup, tmp_path):
    from msmarco_search.index.bm25 import BM25Index, BM25Settings

    ids, texts = zip(*(line.split("\t") for line in search_setup["lines"]), strict=True)
    built = BM25Index(ids, texts, k1=1.1, b=0.6)
    identity = {"collection": "fixture", "count": len(ids)}
    built.save(tmp_path / "bm25", identity)
    loaded = BM25Index.load(tmp_path / "bm25", ids, BM25Settings(1.1, 0.6), identity)
    queries = list(search_setup["queries"].values())
    for query in queries:
        assert np.array_equal(built.scores(query), loaded.scores(query))
    for a, b in zip(built.search(queries, 5), loaded.search(queries, 5), strict=True):
        assert np.array_equal(a, b)


def test_a_mismatched_saved_bm25_index_is_refused(search_setup, tmp_path):
    folder, index = search_setup["folder"], search_setup["index"]
    other_settings = run_script(SEARCH_SCRIPT, "query", search_setup["model"], "--system", "bm25", "--bm25-k1", "1.2",
                                "what is ask1x1", cwd=folder, check=False)
    message = _one_line_error(other_settings)
    assert "bm25.json" in message and "k1 0.9" in message and "k1 1.2" in message
    (tmp_path / "collection.tsv").write_text("\n".join(STEMMING) + "\n")
    (tmp_path / "queries.tsv").write_text("q1\trunner race\n")
    (tmp_path / "qrels.txt").write_text("q1 0 r1 1\n")
    other_collection = run_script("evaluation/evaluate.py", "--collection", tmp_path / "collection.tsv", "--queries",
                                  tmp_path / "queries.tsv", "--qrels", tmp_path / "qrels.txt", "--systems", "bm25",
                                  "--index-dir", index, "--output-dir", tmp_path / "eval", cwd=tmp_path, check=False)
    assert "another collection" in _one_line_error(other_collection)
    damaged = shutil.copytree(index, tmp_path / "index")
    vocabulary = damaged / "bm25" / "vocab.index.json"
    vocabulary.write_text(vocabulary.read_text()[:-10])
    truncated = run_script(SEARCH_SCRIPT, "query", search_setup["model"], "--index-dir", damaged, "--system", "bm25",
                           "what is ask1x1", cwd=folder, check=False)
    assert "vocab.index.json" in _one_line_error(truncated)


@pytest.mark.parametrize("flag, value", [("--bm25-k1", "nan"), ("--bm25-k1", "-1"), ("--bm25-b", "nan"),
                                         ("--bm25-b", "1.5")])
def test_bm25_settings_that_would_score_nan_are_refused(tmp_path, flag, value):
    result = run_script("evaluation/evaluate.py", "--systems", "bm25", flag, value, "--collection", "c.tsv",
                        "--queries", "q.tsv", "--qrels", "r.txt", cwd=tmp_path, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"argument {flag}: must" in result.stderr.strip().splitlines()[-1]


def test_an_evaluation_output_folder_that_is_a_file_is_refused_before_the_work(tmp_path):
    blocker = tmp_path / "taken"
    blocker.write_text("a file, not a folder\n")
    result = run_script("evaluation/evaluate.py", "--systems", "bm25", "--output-dir", blocker, "--collection",
                        "missing.tsv", "--queries", "q.tsv", "--qrels", "r.txt", cwd=tmp_path, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {blocker}: cannot write to this output folder")


def test_a_query_of_unknown_words_says_so_instead_of_arbitrary_hits(search_setup):
    result = run_script(SEARCH_SCRIPT, "query", search_setup["model"], "--system", "all", "zqxj wvkp",
                        cwd=search_setup["folder"])
    blocks = result.stdout.split("[")
    for system in ("two-tower]", "hybrid]"):  # the hybrid would fuse the dense half's arbitrary ranking
        block = next(b for b in blocks if b.startswith(system))
        assert "(no known words in the query: the model has never seen any of them)" in block
        assert not any(line.strip()[:1].isdigit() for line in block.splitlines()[1:])
    # a batch of queries prints the same note (the query id before the query once counted as one of its words)
    (search_setup["folder"] / "unknown.tsv").write_text("q1\tzqxj wvkp\n")
    batch = run_script(SEARCH_SCRIPT, "query", search_setup["model"], "--system", "two-tower", "--queries",
                       search_setup["folder"] / "unknown.tsv", cwd=search_setup["folder"]).stdout
    assert "[two-tower] q1: zqxj wvkp\n   (no known words in the query" in batch
