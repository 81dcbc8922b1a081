"""The index at scale: BM25 streamed into bm25s's matrix, builds swapped in whole (a SIGKILLed build
leaves the old index answering), and sharded builds under torchrun read as one index."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import FILLER, ROOT, built_once, run_main

from msmarco_search.cli.search import main as search_command
from msmarco_search.core.errors import PipelineError
from msmarco_search.index.bm25 import BM25Index, BM25Settings
from msmarco_search.index.bm25_build import build_streamed
from msmarco_search.index.load import load_index
from msmarco_search.io.outputs import StagedFolder
from msmarco_search.search.options import SYSTEMS
from msmarco_search.training.model_file import load_model

SEARCH_SCRIPT = "search/search.py"
WORDS = ["running", "runs", "ran", "cat", "cats", "Dogs", "dog", "x1", "compute", "computers", "computing",
         *FILLER, *(f"w{i}" for i in range(200))]


def _texts(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(0, 30))) for _ in range(count)]


@pytest.mark.parametrize("stemmer", ["english", "none"])
def test_streamed_bm25_scores_are_bm25s_own(tmp_path, stemmer):
    """Chunked tokenising and the term-block writer give bit for bit the scores of bm25s's ``index`` on token
    lists (many chunks and blocks here; empty and token-less passages included)."""
    texts = _texts(1500)
    texts[3], texts[8] = "", "!!! ???"
    ids = [str(i) for i in range(len(texts))]
    settings = BM25Settings(0.9, 0.4, stemmer)
    reference = BM25Index(ids, texts, settings.k1, settings.b, stemmer)
    record = build_streamed(iter(texts), len(texts), settings, tmp_path / "bm25", {"c": 1}, chunk=97, block=700)
    assert record["count"] == len(texts) and record["postings"] > 700 * 5  # several blocks
    assert not list((tmp_path / "bm25").glob(".spill*"))  # the pass-1 spill is removed
    saved = BM25Index.load(tmp_path / "bm25", ids, settings, {"c": 1})
    rng = random.Random(1)
    queries = [" ".join(rng.choices(WORDS, k=rng.randint(1, 4))) for _ in range(100)] + ["", "unseenword"]
    for query in queries:
        assert np.array_equal(saved.scores(query), reference.scores(query)), query
    (got_rows, got_scores), (want_rows, want_scores) = saved.search(queries, 10), reference.search(queries, 10)
    assert np.array_equal(got_scores, want_scores) and np.array_equal(got_rows, want_rows)


def _collection(path: Path, count: int, seed: int = 0) -> Path:
    path.write_text("".join(f"d{i}\t{text or 'empty'}\n" for i, text in enumerate(_texts(count, seed))))
    return path


def _leftovers(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}"))


@pytest.mark.slow
def test_a_killed_build_leaves_the_old_index_answering_and_the_next_build_cleans_up(tmp_path, trained_pipeline,
                                                                                   capsys):
    model = tmp_path / "model.pt"
    shutil.copy(trained_pipeline["model"], model)
    small = _collection(tmp_path / "collection_small.tsv", 60)
    big = _collection(tmp_path / "collection_big.tsv", 40_000, seed=1)
    index = tmp_path / "model_index"
    assert search_command(["index", str(model), "--dataset-path", str(small), "--batch-size", "16"]) == 0
    before = json.loads((index / "manifest.json").read_text())

    env = {**os.environ, "MSMARCO_SEARCH_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    build = subprocess.Popen([sys.executable, str(ROOT / SEARCH_SCRIPT), "index", str(model), "--dataset-path",
                              str(big), "--batch-size", "8"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    staging = tmp_path / ".model_index.new"
    deadline = time.monotonic() + 120
    while not list(staging.glob(".vectors.npy.*")) and build.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    build.send_signal(signal.SIGKILL)  # mid-encoding: its full-size temporary vectors file is being written
    build.wait(timeout=30)
    assert list(staging.glob(".vectors.npy.*")), "the build was not caught mid-encoding"
    assert (tmp_path / ".model_index.lock").exists()  # the lock file stays, but its flock died with the build

    # the old index is untouched and answers
    assert json.loads((index / "manifest.json").read_text()) == before
    capsys.readouterr()
    assert search_command(["query", str(model), "--system", "all", "-k", "3", "w1", "w2", "cats"]) == 0
    out = capsys.readouterr().out
    hits = re.findall(r"^ +[1-3]  d\d+ ", out, flags=re.M)
    # three from BM25, and three from each system with the two-tower in it unless the toy model knows none of the
    # words (then each of those says so instead: tests/test_search.py)
    dense = len(SYSTEMS) - 1
    assert len(hits) >= 3 and (len(hits) == 3 * len(SYSTEMS) or out.count("(no known words in the query") == dense), out

    # the next build succeeds and leaves nothing behind
    assert search_command(["index", str(model), "--dataset-path", str(small), "--batch-size", "16",
                           "--max-passages", "50"]) == 0
    assert json.loads((index / "manifest.json").read_text())["count"] == 50
    assert _leftovers(tmp_path, "model_index") == []
    assert not [p for p in index.rglob("*") if p.name.startswith(".")]
    load_index(index, load_model(model), model).close()


def test_a_build_killed_between_the_two_renames_of_its_swap_puts_the_old_index_back(tmp_path, trained_pipeline):
    model = tmp_path / "model.pt"
    shutil.copy(trained_pipeline["model"], model)
    small = _collection(tmp_path / "collection_small.tsv", 30)
    index = tmp_path / "model_index"
    assert search_command(["index", str(model), "--dataset-path", str(small), "--no-bm25"]) == 0
    os.replace(index, tmp_path / ".model_index.old")  # the state a kill after the first rename leaves
    assert search_command(["index", str(model), "--dataset-path", str(small), "--no-bm25",
                           "--max-passages", "20"]) == 0
    assert json.loads((index / "manifest.json").read_text())["count"] == 20
    assert _leftovers(tmp_path, "model_index") == []


def _torchrun_index(model: Path, collection: Path, index: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MSMARCO_SEARCH_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(ROOT / SEARCH_SCRIPT), "index", str(model), "--dataset-path", str(collection),
                           "--index-dir", str(index), "--batch-size", "16", "--device", "cpu"],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _build_sharded(work: Path, trained_model: Path) -> None:
    model = work / "model.pt"
    shutil.copy(trained_model, model)
    collection = _collection(work / "collection.tsv", 81)
    # the one-process build runs in this process; the sharded builds need torchrun's processes
    assert search_command(["index", str(model), "--dataset-path", str(collection), "--index-dir",
                           str(work / "one")]) == 0
    first = _torchrun_index(model, collection, work / "two", work)
    assert first.returncode == 0, first.stdout + first.stderr
    # an interrupted sharded build: shard 0 finished, shard 1 half-written (no record)
    staging = work / ".again.new" / "shards"
    staging.mkdir(parents=True)
    shutil.copytree(work / "two" / "shards" / "0-of-2", staging / "0-of-2")
    shutil.copytree(work / "two" / "shards" / "1-of-2", staging / "1-of-2")
    (staging / "1-of-2" / "shard.json").unlink()
    again = _torchrun_index(model, collection, work / "again", work)
    assert again.returncode == 0, again.stdout + again.stderr
    (work / "first.out").write_text(first.stdout)
    (work / "again.out").write_text(again.stdout)


@pytest.fixture(scope="session")
def sharded(tmp_path_factory, trained_pipeline) -> dict:
    """One collection indexed by one process and by 2 gloo processes (torchrun); the second sharded build
    resumes from a shard that an interrupted build had finished. Built once for all pytest-xdist workers (three
    torchrun launches); the tests only read it."""
    work = built_once(tmp_path_factory, "sharded", lambda folder: _build_sharded(folder, trained_pipeline["model"]))
    return {"work": work, "model": work / "model.pt", "first": (work / "first.out").read_text(),
            "again": (work / "again.out").read_text()}


def _read(index_dir: Path, model_path: Path):
    return load_index(index_dir, load_model(model_path), model_path)


@pytest.mark.slow
def test_two_gloo_processes_index_like_one(sharded, tmp_path):
    work, model = sharded["work"], sharded["model"]
    assert "2 shards" in sharded["first"] and sharded["first"].count("Saved index of 81") == 1
    manifest = json.loads((work / "two" / "manifest.json").read_text())
    assert [(s["name"], s["start"], s["stop"]) for s in manifest["shards"]] == [("shards/0-of-2", 0, 40),
                                                                                 ("shards/1-of-2", 40, 81)]
    one, two = _read(work / "one", model), _read(work / "two", model)
    assert np.array_equal(np.asarray(one.vectors), np.asarray(two.vectors))
    assert np.array_equal(one.ids, two.ids) and np.array_equal(one.offsets, two.offsets)
    rows = np.array([80, 0, 39, 40, 41])
    assert np.array_equal(two.vectors[rows], one.vectors[rows])  # rows across the shard boundary
    assert np.array_equal(two.vectors[35:45], one.vectors[35:45])
    one.close(), two.close()
    queries = tmp_path / "queries.tsv"
    queries.write_text("".join(f"q{i}\t{text}\n" for i, text in enumerate(_texts(8, seed=3)) if text))
    for name in ("one", "two"):
        assert search_command(["query", str(model), "--index-dir", str(work / name), "--system", "all",
                               "--queries", str(queries), "--run-file", str(tmp_path / f"{name}.trec")]) == 0
    for system in ("two-tower", "bm25", "hybrid"):
        assert (tmp_path / f"one.{system}.trec").read_text() == (tmp_path / f"two.{system}.trec").read_text()


@pytest.mark.slow
def test_an_interrupted_sharded_build_resumes_with_the_shards_done(sharded):
    out = sharded["again"]
    assert "Reusing 0-of-2 (passages 0-40)" in out and "Indexing passages 40-81" in out
    assert "Indexing passages 0-40" not in out
    work = sharded["work"]
    again, two = _read(work / "again", sharded["model"]), _read(work / "two", sharded["model"])
    assert np.array_equal(np.asarray(again.vectors), np.asarray(two.vectors))
    assert _leftovers(work, "again") == []


def _edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.mark.parametrize("damage, message", [
    (lambda d: shutil.rmtree(d / "shards" / "1-of-2"), "1-of-2: shard missing"),
    (lambda d: (d / "shards" / "0-of-2" / "shard.json").unlink(), "0-of-2: half-written shard (no shard.json"),
    (lambda d: (d / "shards" / "1-of-2" / "vectors.npy").write_bytes(
        (d / "shards" / "1-of-2" / "vectors.npy").read_bytes()[:-64]), "vectors.npy: truncated or changed"),
    (lambda d: _edit_json(d / "shards" / "1-of-2" / "shard.json", model_id="0" * 32), "shard built by another model"),
    (lambda d: _edit_json(d / "shards" / "0-of-2" / "shard.json", collection_size=5),
     "shard built by another collection"),
])
@pytest.mark.slow
def test_bad_shards_are_refused_in_one_line(sharded, tmp_path, damage, message):
    index = tmp_path / "index"
    shutil.copytree(sharded["work"] / "two", index)
    damage(index)
    with pytest.raises(PipelineError, match=message.replace("(", r"\(")):
        _read(index, sharded["model"])


@pytest.mark.slow
def test_a_bad_shard_ends_search_with_one_line_and_exit_2(sharded, tmp_path, capsys):
    index = tmp_path / "index"
    shutil.copytree(sharded["work"] / "two", index)
    shutil.rmtree(index / "shards" / "0-of-2")
    result = run_main(capsys, SEARCH_SCRIPT, "query", sharded["model"], "--index-dir", index, "w1", cwd=tmp_path,
                      check=False)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("error: ") and "0-of-2: shard missing" in result.stderr


def test_a_second_build_at_once_and_a_bad_pq_m_are_refused_before_any_work(tmp_path, trained_pipeline):
    model = tmp_path / "model.pt"
    shutil.copy(trained_pipeline["model"], model)
    small = _collection(tmp_path / "collection_small.tsv", 30)
    running = StagedFolder(tmp_path / "model_index")
    running.acquire()  # another build holds the index
    with pytest.raises(PipelineError, match="another build is writing this folder now"):
        search_command(["index", str(model), "--dataset-path", str(small)])
    assert running.staging.is_dir()  # the refused build left the running one's folder alone
    running.release()
    with pytest.raises(PipelineError, match="--pq-m 7 does not divide the model's 32 dimensions"):
        search_command(["index", str(model), "--dataset-path", str(small), "--faiss", "ivfpq", "--pq-m", "7"])
    assert not list((tmp_path / ".model_index.new").iterdir())  # nothing was encoded


def _trec(path: Path) -> dict[str, dict[str, float]]:
    run: dict[str, dict[str, float]] = {}
    for line in path.read_text().splitlines():
        qid, _, docid, _, score, _ = line.split()
        run.setdefault(qid, {})[docid] = float(score)
    return run


def test_faiss_is_added_to_a_built_index_without_encoding_again(tmp_path, trained_pipeline, capsys):
    """`search.py faiss` builds faiss from the stored vectors (untouched), records it in the manifest, measures
    its recall, and replaces it when run again; searches then use it; a running build's lock refuses it."""
    model = tmp_path / "model.pt"
    shutil.copy(trained_pipeline["model"], model)
    collection = _collection(tmp_path / "collection.tsv", 81)
    assert search_command(["index", str(model), "--dataset-path", str(collection), "--no-bm25"]) == 0
    index_dir = tmp_path / "model_index"
    vectors = (index_dir / "vectors.npy").read_bytes()
    capsys.readouterr()
    assert search_command(["faiss", str(model), "--faiss", "ivfpq", "--pq-m", "8"]) == 0
    out = capsys.readouterr().out
    assert "faiss ivfpq: recall@10 1.000 against exact search on 81 sampled pseudo-queries" in out
    assert "Added faiss ivfpq to the index of 81 passages" in out
    assert (index_dir / "vectors.npy").read_bytes() == vectors
    manifest = json.loads((index_dir / "manifest.json").read_text())
    assert manifest["faiss"]["type"] == "ivfpq" and manifest["faiss"]["measured"]["recall@10"] == 1.0
    assert manifest["files"]["faiss.index"] == (index_dir / "faiss.index").stat().st_size
    queries = tmp_path / "queries.tsv"
    queries.write_text("".join(f"q{i}\t{text}\n" for i, text in enumerate(_texts(6, seed=4)) if text))
    assert search_command(["faiss", str(model), "--faiss", "flat"]) == 0  # replaces the IVF-PQ one
    assert json.loads((index_dir / "manifest.json").read_text())["faiss"]["type"] == "flat"
    for mode in ("exact", "faiss"):
        assert search_command(["query", str(model), "--queries", str(queries), "--search", mode, "--run-file",
                               str(tmp_path / f"{mode}.trec"), "--tag", "t"]) == 0
    assert "two-tower: faiss flat" in capsys.readouterr().out
    exact, found = _trec(tmp_path / "exact.trec"), _trec(tmp_path / "faiss.trec")
    assert exact.keys() == found.keys()
    for qid, hits in exact.items():
        assert found[qid].keys() == hits.keys() and all(abs(found[qid][d] - s) < 1e-5 for d, s in hits.items())
    running = StagedFolder(index_dir)
    running.acquire()
    with pytest.raises(PipelineError, match="another build is writing this folder now"):
        search_command(["faiss", str(model), "--faiss", "hnsw"])
    running.release()
    result = run_main(capsys, SEARCH_SCRIPT, "faiss", model, "--index-dir", tmp_path / "nowhere", "--faiss", "flat",
                      cwd=tmp_path, check=False)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_ivfpq_is_built_measured_and_its_candidates_rescored_exactly(tmp_path, trained_pipeline, capsys):
    """IVF-PQ through the command line: the manifest says what it is and its measured recall; with the
    re-scored candidates covering the whole (tiny) collection its run is exact search's."""
    model = tmp_path / "model.pt"
    shutil.copy(trained_pipeline["model"], model)
    collection = _collection(tmp_path / "collection.tsv", 81)
    assert search_command(["index", str(model), "--dataset-path", str(collection), "--faiss", "ivfpq",
                           "--no-bm25", "--pq-m", "8"]) == 0
    assert "faiss ivfpq: recall@10 1.000 against exact search on 81 sampled pseudo-queries" in capsys.readouterr().out
    faiss = json.loads((tmp_path / "model_index" / "manifest.json").read_text())["faiss"]
    assert faiss["type"] == "ivfpq" and faiss["pq_m"] == 8 and faiss["measured"]["refine"] == 10
    queries = tmp_path / "queries.tsv"
    queries.write_text("".join(f"q{i}\t{text}\n" for i, text in enumerate(_texts(6, seed=4)) if text))
    for mode in ("exact", "faiss"):
        assert search_command(["query", str(model), "--queries", str(queries), "--search", mode, "--run-file",
                               str(tmp_path / f"{mode}.trec"), "--tag", "t"]) == 0
    runs = {}
    for mode in ("exact", "faiss"):
        for line in (tmp_path / f"{mode}.trec").read_text().splitlines():
            qid, _, docid, _, score, _ = line.split()
            runs.setdefault(mode, {}).setdefault(qid, {})[docid] = float(score)
    assert runs["exact"].keys() == runs["faiss"].keys()
    for qid, exact in runs["exact"].items():  # the same hits, scores equal up to float32 rounding
        assert runs["faiss"][qid].keys() == exact.keys(), qid
        assert all(abs(runs["faiss"][qid][d] - score) < 1e-5 for d, score in exact.items())
