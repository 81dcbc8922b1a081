"""What a search answers with is the index it opened, whole, or a one-line error (docs/reliability.md, "An index
answers with what it holds"): a running server after a rebuild of its index, an index opened while a rebuild or
``search.py faiss`` changes it, manifests that name files outside the index, crafted faiss indexes, a BM25 index
or shard of another build, ids of any length, and the faiss build's own failures.

Each case works on a copy of the search fixture's index (``conftest.search_setup``), through the command line.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, SEARCH_SCRIPT, hits_by_system, make_corpus
from test_reliability import assert_one_line_error, cli

from msmarco_search.index import faiss as index_faiss
from msmarco_search.index import load as index_load
from msmarco_search.index.layout import ARRAY_FILES, FAISS_FILE, ID_OFFSETS, IDS, MANIFEST, OFFSETS, VECTORS
from msmarco_search.index.load import load_index
from msmarco_search.io.atomic import content_sample
from msmarco_search.search.options import SYSTEMS

faiss = pytest.importorskip("faiss")

SEARCH = SEARCH_SCRIPT


@pytest.fixture
def work(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MSMARCO_SEARCH_NO_PROGRESS", "1")
    return tmp_path


def _copy(search_setup, work: Path, name: str = "model_index") -> tuple[Path, Path]:
    """The fixture's model as ``model.pt`` and its index (dense, BM25, faiss flat) as ``name``; the index's
    collection stays the fixture's ``collection.tsv``."""
    model = work / "model.pt"
    if not model.exists():
        shutil.copy(search_setup["model"], model)
    return model, Path(shutil.copytree(search_setup["index"], work / name))


def _other_collection(path: Path) -> Path:
    """Another collection, smaller than the fixture's (24 passages, ids ``b<topic>-<n>``), on the same topics."""
    corpus = make_corpus(seed=9)
    lines = [f"b{topic}-{number}\t{text}" for number, (_, text, topic) in enumerate(corpus.passages) if number % 10 < 2]
    path.write_text("\n".join(lines) + "\n")
    return path


def _manifest(index: Path) -> dict:
    return json.loads((index / MANIFEST).read_text())


def _edit_manifest(index: Path, change) -> None:
    manifest = _manifest(index)
    change(manifest)
    (index / MANIFEST).write_text(json.dumps(manifest))


def _vouch(index: Path, *names: str) -> None:
    """Make the manifest vouch for ``names`` as they are now (sizes, content samples), as a crafted index would,
    so that the checks behind the manifest's are the ones tested."""

    def change(manifest: dict) -> None:
        for name in names:
            manifest["files"][name] = (index / name).stat().st_size
            if name == FAISS_FILE:
                manifest["samples"][name] = content_sample(index / name)

    _edit_manifest(index, change)


def _query(capsys, model: Path, index: Path, query: str, *flags: str) -> tuple[int, str, str]:
    return cli(capsys, SEARCH, "query", model, "--index-dir", index, *flags, query)


def _printed(out: str) -> dict[str, list[tuple[str, str]]]:
    """``{system: [(pid, snippet), ...]}`` of the first hit list of each system printed by ``query``."""
    found: dict[str, list[tuple[str, str]]] = {}
    system = None
    for line in out.splitlines():
        if line.startswith("["):
            system = line[1:line.index("]")]
            found.setdefault(system, [])
        elif system is not None and line.split() and line.split()[0].isdigit():
            _, pid, _, text = line.split(None, 3)
            found[system].append((pid, text))
    return found


# ------------------------------------------------------------------------------------- rebuilt under a reader


@contextmanager
def _server(model: Path, index: Path, cwd: Path, *flags: str):
    """``search/search.py serve`` as a user starts it, on any free port; its base URL. Stopped with Ctrl-C
    (SIGINT), which must end it with status 0 and no traceback."""
    env = {**os.environ, "MSMARCO_SEARCH_NO_PROGRESS": "1", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, str(ROOT / SEARCH), "serve", str(model), "--index-dir", str(index),
                                "--port", "0", *flags], cwd=cwd, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    watchdog = threading.Timer(180, process.kill)
    watchdog.start()
    lines = []
    for line in process.stdout:
        lines.append(line)
        if "Serving the search page on " in line:
            break
    watchdog.cancel()
    try:
        assert lines and "Serving" in lines[-1], "".join(lines) + process.stderr.read()
        yield lines[-1].split(" on ", 1)[1].split()[0].rstrip("/")
    finally:
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
        assert process.returncode == 0 and "Traceback" not in err, err


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_a_running_server_answers_from_the_index_it_opened_after_a_rebuild(search_setup, work, capsys):
    """The server opened the index of the fixture's 52 passages; the folder is then rebuilt over 24 others (the
    old folder is removed). The server answers every system's queries as before, ids and texts of the index it
    opened, each text its id's; a command started afterwards opens the new index."""
    model, index = _copy(search_setup, work)
    other = _other_collection(work / "collection_b.tsv")
    texts = dict(line.split("\t", 1) for line in search_setup["lines"])
    queries = [search_setup["queries"][qid] for qid in ("m3", "q7", "s5", "m10")]
    with _server(model, index, work, "--search", "exact") as base:  # exact: the vectors are read at each query
        def answers() -> dict:
            found = {}
            for query in queries:
                for system in SYSTEMS:
                    params = urllib.parse.urlencode({"q": query, "system": system, "k": 10})
                    status, body = _get(f"{base}/api/search?{params}")
                    assert status == 200, body
                    found[(query, system)] = body["hits"]
            return found

        before = answers()
        assert all(hit["text"] == texts[hit["id"]] for hits in before.values() for hit in hits)
        assert before[(queries[0], "two-tower")][0]["id"] == "p3"
        assert cli(capsys, SEARCH, "index", model, "--dataset-path", other, "--index-dir", index)[0] == 0
        assert _manifest(index)["count"] == 24 and not (work / ".model_index.old").exists()
        assert answers() == before  # ids, texts and scores: the index the server opened, whole
    status, out, _ = _query(capsys, model, index, queries[0], "--system", "all")
    assert status == 0 and all(pid.startswith("b") for hits in hits_by_system(out).values() for pid in hits[0])


def _swap_in_while_opening(monkeypatch, swap) -> list[int]:
    """Run ``swap()`` once, while an index is being opened: after its manifest is read, before its files are."""
    calls: list[int] = []
    original = index_load._open_files

    def open_files(folder, files, samples, prefix=""):
        if not calls:
            swap()
        calls.append(1)
        return original(folder, files, samples, prefix)

    monkeypatch.setattr(index_load, "_open_files", open_files)
    return calls


@pytest.mark.parametrize("old_folder_removed", [False, True])
def test_an_index_opened_while_a_rebuild_swaps_it_is_one_whole_index(search_setup, work, capsys, monkeypatch,
                                                                      old_folder_removed):
    """A rebuild swaps its folder in (two renames, then the old folder is removed) just after a query read the
    manifest, and the query goes on opening the old folder's files: it finds them gone, or whole but no longer
    at the path; either way it opens the new index again and answers from it whole, never one build's ids or
    texts with the other's vectors."""
    model, index = _copy(search_setup, work)
    other = _other_collection(work / "collection_b.tsv")
    assert cli(capsys, SEARCH, "index", model, "--dataset-path", other, "--index-dir", work / "rebuilt")[0] == 0

    def swap() -> None:
        os.replace(index, work / ".model_index.old")
        os.replace(work / "rebuilt", index)
        if old_folder_removed:
            shutil.rmtree(work / ".model_index.old")

    _swap_in_while_opening(monkeypatch, swap)
    status, out, err = _query(capsys, model, index, search_setup["queries"]["m3"], "--system", "all", "--search",
                              "exact")
    assert status == 0, err
    lines = dict(line.split("\t", 1) for line in other.read_text().splitlines())
    printed = _printed(out)
    assert set(printed) == set(SYSTEMS)
    for hits in printed.values():
        assert hits and all(lines[pid].startswith(text.rstrip("…")) for pid, text in hits)
    assert "Index: 24 passages" in out


def test_an_index_opened_while_its_faiss_index_is_replaced_is_opened_again(search_setup, work, capsys, monkeypatch):
    """``search.py faiss`` replaces faiss.index, then the manifest, in place: a query that read the old manifest
    and finds the new faiss file opens the index again, and searches with the new faiss index and manifest."""
    model, index = _copy(search_setup, work)
    _, other = _copy(search_setup, work, "other_index")
    assert cli(capsys, SEARCH, "faiss", model, "--index-dir", other, "--faiss", "hnsw")[0] == 0
    calls = _swap_in_while_opening(monkeypatch, lambda: (os.replace(other / FAISS_FILE, index / FAISS_FILE),
                                                         os.replace(other / MANIFEST, index / MANIFEST)))
    status, out, err = _query(capsys, model, index, search_setup["queries"]["m3"], "--search", "faiss")
    assert status == 0, err
    assert "two-tower: faiss hnsw" in out and hits_by_system(out)["two-tower"][0][0] == "p3"
    assert len(calls) == 2  # opened twice


def test_a_bm25_index_replaced_while_it_is_read_is_refused(search_setup, work, capsys, monkeypatch):
    """A rebuild swaps the index folder in after the saved BM25 index's record was checked and before bm25s reads
    its files by name: one line, never one build's record with the other's arrays."""
    from msmarco_search.index import bm25 as bm25_module

    model, index = _copy(search_setup, work)
    other = _other_collection(work / "collection_b.tsv")
    assert cli(capsys, SEARCH, "index", model, "--dataset-path", other, "--index-dir", work / "rebuilt")[0] == 0
    original = bm25_module.check_saved

    def check_then_swap(*args, **kwargs):
        record = original(*args, **kwargs)
        os.replace(index, work / ".model_index.old")
        os.replace(work / "rebuilt", index)
        return record

    monkeypatch.setattr(bm25_module, "check_saved", check_then_swap)
    result = _query(capsys, model, index, "what is doc3y1", "--system", "bm25")
    assert_one_line_error(result, "model_index/bm25: BM25 index was replaced while it was being read")


# --------------------------------------------------------------------------------- names in the manifest


SECRET = "TOP SECRET: the launch code is 0000"


def _secret_beside(work: Path, like: Path) -> Path:
    """A file that is no collection of the index, of the collection's size, its lines made to start with the
    collection's ids (as an attacker who knows them would), one text swapped for a secret."""
    lines = like.read_text().splitlines()
    pid, text = lines[3].split("\t", 1)
    lines[3] = f"{pid}\t{(SECRET + ' ' + text)[:len(text)]}"
    secret = work / "secret.txt"
    secret.write_text("\n".join(lines) + "\n")
    assert secret.stat().st_size == like.stat().st_size
    return secret


def _inside_collection(index: Path) -> None:
    """The index's collection copied into its folder as passages.tsv, as a row-layout source's index has it."""
    manifest = _manifest(index)
    shutil.copy(manifest["collection"], index / "passages.tsv")
    _edit_manifest(index, lambda m: (m.update(collection="passages.tsv"),
                                     m["files"].update({"passages.tsv": (index / "passages.tsv").stat().st_size})))


MANIFEST_NAMES = {
    "a relative path out of the folder": (
        lambda index, secret: _edit_manifest(index, lambda m: m.update(collection="../secret.txt")),
        "manifest's collection '../secret.txt' is neither the index's own passages.tsv nor the absolute path"),
    "an absolute path to another file of the collection's size": (
        lambda index, secret: _edit_manifest(index, lambda m: m.update(collection=str(secret))),
        "secret.txt: is not the collection the index was built from (its content differs from the sample"),
    "the index's passages.tsv a link to another file": (
        lambda index, secret: (_inside_collection(index), (index / "passages.tsv").unlink(),
                               (index / "passages.tsv").symlink_to(secret)),
        "passages.tsv: cannot read (Too many levels of symbolic links; an index's files are plain files"),
    "a file outside the index's files": (
        lambda index, secret: _edit_manifest(index, lambda m: m["files"].update({"../secret.txt": 10})),
        "manifest lists '../secret.txt', which is none of an index's files"),
    "a shard outside the index's shards folder": (
        lambda index, secret: _edit_manifest(index, lambda m: m.update(shards=[{"name": "../x", "start": 0,
                                                                                 "stop": m["count"]}])),
        "manifest names shard 0 '../x', not shards/0-of-1"),
}


@pytest.mark.parametrize("case", MANIFEST_NAMES)
def test_a_manifest_naming_a_file_outside_what_the_index_was_built_from_is_refused(search_setup, work, capsys,
                                                                                    case):
    """Query and the page refuse the index in one line, before anything is shown; the other file's text never is."""
    model, index = _copy(search_setup, work)
    secret = _secret_beside(work, Path(_manifest(index)["collection"]))
    damage, words = MANIFEST_NAMES[case]
    damage(index, secret)
    for command in (["query", model, "--index-dir", index, "--system", "all", "what is doc3y1"],
                    ["serve", model, "--index-dir", index, "--port", "0"]):
        result = cli(capsys, SEARCH, *command)
        assert_one_line_error(result, words)
        assert SECRET not in result[1] + result[2]


def test_the_index_own_passages_file_still_answers(search_setup, work, capsys):
    """The control of the cases above: the collection as the index's own passages.tsv is read (the two-tower's
    hits: the saved BM25 index names the collection it was built over, the fixture's)."""
    model, index = _copy(search_setup, work)
    _inside_collection(index)
    status, out, err = _query(capsys, model, index, search_setup["queries"]["m3"], "--search", "exact")
    assert status == 0, err
    assert _printed(out)["two-tower"][0] == ("p3", search_setup["passages"][3])


# ------------------------------------------------------------------------------------------- crafted faiss


def _vectors(index: Path) -> np.ndarray:
    return np.load(index / VECTORS).astype(np.float32)


def _ivf_with_ids_moved(index: Path) -> None:
    built = faiss.IndexIVFFlat(faiss.IndexFlatIP(_vectors(index).shape[1]), _vectors(index).shape[1], 1,
                               faiss.METRIC_INNER_PRODUCT)
    built.train(_vectors(index))
    built.add(_vectors(index))
    lists = faiss.downcast_InvertedLists(built.invlists)
    faiss.rev_swig_ptr(lists.get_ids(0), lists.list_size(0))[:] += 1000
    faiss.write_index(built, str(index / FAISS_FILE))
    _edit_manifest(index, lambda m: m.update(faiss={"type": "ivf", "lists": 1}))
    _vouch(index, FAISS_FILE)


def _write_faiss(index: Path, built, kind: str = "flat") -> None:
    faiss.write_index(built, str(index / FAISS_FILE))
    _edit_manifest(index, lambda m: m.update(faiss={"type": kind}))
    _vouch(index, FAISS_FILE)


def _hnsw_by_distance(index: Path) -> None:
    built = faiss.IndexHNSWFlat(_vectors(index).shape[1], 4, faiss.METRIC_L2)
    built.add(_vectors(index))
    _write_faiss(index, built, "hnsw")


def _flat(metric, dim_extra: int = 0):
    def make(index: Path) -> None:
        vectors = _vectors(index)
        vectors = np.hstack([vectors, np.zeros((len(vectors), dim_extra), np.float32)])
        built = faiss.IndexFlat(vectors.shape[1], metric)
        built.add(vectors)
        _write_faiss(index, built)
    return make


def _id_map(index: Path) -> None:
    built = faiss.IndexIDMap(faiss.IndexFlatIP(_vectors(index).shape[1]))
    built.add_with_ids(_vectors(index), np.arange(len(_vectors(index))) + 10**6)
    _write_faiss(index, built)


def _hnsw_neighbour_outside(index: Path) -> None:
    built = faiss.IndexHNSWFlat(_vectors(index).shape[1], 4, faiss.METRIC_INNER_PRODUCT)
    built.add(_vectors(index))
    faiss.rev_swig_ptr(built.hnsw.neighbors.data(), built.hnsw.neighbors.size())[5] = 10**8
    _write_faiss(index, built, "hnsw")


def _flat_of_other_vectors_same_size(index: Path) -> None:
    built = faiss.IndexFlatIP(_vectors(index).shape[1])
    built.add(_vectors(index)[::-1].copy())
    faiss.write_index(built, str(index / FAISS_FILE))  # same size: the manifest's size still matches


# (craft, the error's words, whether the manifest vouches for the crafted file: then exact search still answers,
# the faiss index being checked when it is read; a file the manifest does not vouch for refuses the whole index)
CRAFTED_FAISS = {
    "IVF lists whose ids are not rows of the index": (
        _ivf_with_ids_moved, "faiss IVF lists hold 52 entries (ids 1000-1051), not each row 0-51 of the index once",
        True),
    "another metric (L2)": (_hnsw_by_distance, "faiss index ranks by another metric (faiss metric 1)", True),
    "a flat index of another metric": (_flat(faiss.METRIC_L2), "holds a faiss IndexFlatL2, not the IndexFlatIP", True),
    "another dimension": (_flat(faiss.METRIC_INNER_PRODUCT, 1), "faiss index holds 52 x 33 vectors, the index 52 x 32",
                          True),
    "an id map with ids of its own": (_id_map, "holds a faiss IndexIDMap, not the IndexFlatIP of a flat index", True),
    "an HNSW neighbour outside the index": (_hnsw_neighbour_outside,
                                            "not a readable faiss index (Error in void faiss::validate_HNSW", True),
    "replaced at the same size": (_flat_of_other_vectors_same_size,
                                  "faiss.index: changed since the index was built (its content is not the one", False),
}


@pytest.mark.parametrize("case", CRAFTED_FAISS)
def test_a_crafted_faiss_index_is_one_line(search_setup, work, capsys, case):
    model, index = _copy(search_setup, work)
    craft, words, vouched = CRAFTED_FAISS[case]
    craft(index)
    result = _query(capsys, model, index, search_setup["queries"]["m3"], "--search", "faiss")
    assert_one_line_error(result, words)
    exact = cli(capsys, SEARCH, "query", model, "--index-dir", index, "--search", "exact", "what is doc3y1")
    if vouched:
        assert exact[0] == 0, exact[2]
    else:
        assert_one_line_error(exact, words)


def test_faiss_answers_that_are_no_row_are_one_line_even_unchecked(search_setup, work, capsys, monkeypatch):
    """Behind the check of an IVF index's ids, each search's answers are checked to be rows of the index."""
    model, index = _copy(search_setup, work)
    _ivf_with_ids_moved(index)
    monkeypatch.setattr(index_faiss, "_check_ivf", lambda *args: None)
    result = _query(capsys, model, index, search_setup["queries"]["m3"], "--search", "faiss")
    assert_one_line_error(result, "faiss.index: the faiss index answered with row 10", "outside the index's 52")


# ----------------------------------------------------------------------------------- parts of other builds


def test_a_bm25_index_of_another_collection_at_the_same_path_is_refused(search_setup, work, capsys):
    """Two builds over one collection path whose content changed in between (same size, same passage count): the
    first build's BM25 folder copied into the second's index is refused, where it would rank the old texts."""
    model = work / "model.pt"
    shutil.copy(search_setup["model"], model)
    collection = work / "collection.tsv"
    collection.write_text("\n".join(search_setup["lines"]) + "\n")
    assert cli(capsys, SEARCH, "index", model, "--dataset-path", collection, "--index-dir", work / "first")[0] == 0
    lines = [f"{pid}\t{' '.join(reversed(text.split()))}" for pid, text in
             (line.split("\t", 1) for line in search_setup["lines"])]
    collection.write_text("\n".join(lines) + "\n")
    assert collection.stat().st_size == sum(len(line) + 1 for line in search_setup["lines"])
    assert cli(capsys, SEARCH, "index", model, "--dataset-path", collection, "--index-dir", work / "second")[0] == 0
    shutil.rmtree(work / "second" / "bm25")
    shutil.copytree(work / "first" / "bm25", work / "second" / "bm25")
    result = _query(capsys, model, work / "second", "what is doc3y1", "--system", "bm25")
    assert_one_line_error(result, "bm25.json: BM25 index was built over another collection")


def _split_into_shards(index: Path, cut: int) -> None:
    """The index's arrays split into the two shards a two-process build writes, with their records."""
    manifest = _manifest(index)
    vectors, id_bytes, id_offsets, offsets = (np.load(index / name) for name in ARRAY_FILES)
    identity = {key: manifest[key] for key in ("format_version", "model_id", "vocabulary_fingerprint", "tokenizer",
                                               "collection", "collection_size", "collection_sample", "count",
                                               "dtype", "dim")}
    entries = []
    for rank, (start, stop) in enumerate(((0, cut), (cut, manifest["count"]))):
        folder = index / "shards" / f"{rank}-of-2"
        folder.mkdir(parents=True)
        first, last = id_offsets[start], id_offsets[stop]
        for name, part in ((VECTORS, vectors[start:stop]), (IDS, id_bytes[first:last]),
                           (ID_OFFSETS, id_offsets[start:stop + 1] - first), (OFFSETS, offsets[start:stop])):
            np.save(folder / name, part)
        record = {"kind": "two-tower-index-shard", **identity, "shards": 2, "start": start, "stop": stop,
                  "encode_seconds": 0, "files": {name: (folder / name).stat().st_size for name in ARRAY_FILES}}
        (folder / "shard.json").write_text(json.dumps(record))
        entries.append({"name": f"shards/{rank}-of-2", "start": start, "stop": stop})
    for name in ARRAY_FILES:
        (index / name).unlink()
    _edit_manifest(index, lambda m: (m.update(shards=entries), [m["files"].pop(name) for name in ARRAY_FILES]))


def test_a_shard_of_another_collection_is_refused(search_setup, work, capsys):
    """Split into two shards, the index answers as it did whole; a shard recorded over another collection's
    content (same path and size) is refused."""
    model, index = _copy(search_setup, work)
    query = search_setup["queries"]["m3"]
    whole = _query(capsys, model, index, query, "--system", "all", "--search", "exact")
    _split_into_shards(index, 20)
    split = _query(capsys, model, index, query, "--system", "all", "--search", "exact")
    assert split[0] == 0 and _printed(split[1]) == _printed(whole[1]) and _printed(whole[1])
    record = index / "shards" / "1-of-2" / "shard.json"
    record.write_text(json.dumps({**json.loads(record.read_text()), "collection_sample": "0" * 16}))
    assert_one_line_error(_query(capsys, model, index, query), "1-of-2/shard.json: shard built by another collection")


DAMAGED_IDS = {
    "fewer id offsets than vectors": (lambda i: np.save(i / ID_OFFSETS, np.load(i / ID_OFFSETS)[:-3]),
                                      "id_offsets.npy: holds (50,) int64, expected 53 int64 id offsets"),
    "id offsets past the ids": (lambda i: np.save(i / ID_OFFSETS, np.load(i / ID_OFFSETS) * 2),
                                "id_offsets.npy: id offsets end at byte"),
    "id offsets that go back": (lambda i: np.save(i / ID_OFFSETS, np.load(i / ID_OFFSETS)[[0, 2, 1, *range(3, 53)]]),
                                "id_offsets.npy: id offsets decrease or do not start at 0"),
    "ids as fixed-width text": (lambda i: np.save(i / IDS, np.array([b"p1", b"p2"])),
                                "ids.npy: holds (2,) |S2, expected the ids' UTF-8 bytes (uint8)"),
    "an older index format": (lambda i: _edit_manifest(i, lambda m: m.update(format_version=2)),
                              "manifest.json: index format version 2 is older than this program reads (3"),
}


@pytest.mark.parametrize("case", DAMAGED_IDS)
def test_ids_that_do_not_fit_the_index_are_one_line(search_setup, work, capsys, case):
    model, index = _copy(search_setup, work)
    damage, words = DAMAGED_IDS[case]
    damage(index)
    _vouch(index, IDS, ID_OFFSETS)
    assert_one_line_error(_query(capsys, model, index, "what is doc3y1"), words)


def test_a_collection_changed_in_place_under_a_server_is_refused_not_shown(search_setup, work):
    """The collection edited in place (same size, lines moved) under a serving index: a hit whose line no longer
    starts with its id is the server's one-line error, never another passage's text beside the id."""
    from fastapi.testclient import TestClient

    from msmarco_search.search.options import SearchOptions
    from msmarco_search.search.server import create_app
    from msmarco_search.search.session import SearchSession, make_retrievers
    from msmarco_search.training.model_file import load_model

    model, index = _copy(search_setup, work)
    collection = work / "collection.tsv"
    shutil.copy(_manifest(index)["collection"], collection)
    _edit_manifest(index, lambda m: m.update(collection=str(collection)))
    loaded = load_model(model)
    opened = load_index(index, loaded, model)
    # the two-tower's hits (the saved BM25 index names the collection path it was built over, the fixture's)
    session = SearchSession(opened, make_retrievers(["two-tower"], opened, loaded, model, SearchOptions("exact")))
    params = {"q": search_setup["queries"]["m3"], "system": "two-tower", "k": 3}
    try:
        with TestClient(create_app(session), raise_server_exceptions=False) as client:
            hits = client.get("/api/search", params=params).json()["hits"]
            assert hits[0]["id"] == "p3" and hits[0]["text"] == search_setup["passages"][3]
            lines = collection.read_text().splitlines()
            with open(collection, "r+") as handle:  # in place: the open index reads these very bytes
                handle.write("\n".join(lines[1:] + lines[:1]) + "\n")
            response = client.get("/api/search", params=params)
    finally:
        session.close()
    assert response.status_code == 500 and search_setup["passages"][4] not in response.text
    assert response.json() == {"error": "internal error: the search failed; the server's log has the details"}


# ---------------------------------------------------------------------------------------------------- ids


def test_a_long_id_costs_its_own_bytes_on_disk(search_setup, work, capsys):
    """One passage id of 1 MB among 52: ids.npy holds the ids' bytes (about 1 MB, not 53 x 1 MB at a fixed
    width), and the id reads back whole."""
    model = work / "model.pt"
    shutil.copy(search_setup["model"], model)
    long_id = "x" * 2**20
    collection = work / "collection.tsv"
    collection.write_text("\n".join([*search_setup["lines"], f"{long_id}\tzebra giraffe okapi"]) + "\n")
    assert cli(capsys, SEARCH, "index", model, "--dataset-path", collection)[0] == 0
    index = work / "model_index"
    id_bytes = sum(len(line.split("\t")[0]) for line in search_setup["lines"]) + len(long_id)
    assert (index / IDS).stat().st_size <= id_bytes + 128  # the bytes and a .npy header
    assert (index / ID_OFFSETS).stat().st_size <= 8 * 54 + 128
    status, out, _ = _query(capsys, model, index, "zebra okapi", "--system", "bm25", "-k", "1")
    assert status == 0 and _printed(out)["bm25"][0] == (long_id, "zebra giraffe okapi")


# ---------------------------------------------------------------------------------------- the faiss build


def _limit_files_to(size: int):
    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write then fails with EFBIG, as a full disk's fails
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
    return limit


def test_a_faiss_index_that_cannot_be_written_is_one_line_and_the_index_is_left_whole(search_setup, work):
    """``search.py faiss`` whose write fails (a file-size limit: the same failed write as a full disk's) ends with
    one line and status 2; the index keeps its manifest and faiss index, and no temporary file is left."""
    model, index = _copy(search_setup, work)
    before = {name: (index / name).read_bytes() for name in (MANIFEST, FAISS_FILE)}
    env = {**os.environ, "MSMARCO_SEARCH_NO_PROGRESS": "1"}
    result = subprocess.run([sys.executable, str(ROOT / SEARCH), "faiss", str(model), "--index-dir", str(index),
                             "--faiss", "flat"], cwd=work, env=env, capture_output=True, text=True, timeout=600,
                            preexec_fn=_limit_files_to(4096))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0] == f"error: {index / FAISS_FILE}: cannot write (File too large)"
    assert {name: (index / name).read_bytes() for name in before} == before
    assert sorted(p.name for p in index.iterdir() if p.name.startswith(".")) == []


def test_faiss_search_settings_faiss_cannot_hold_are_refused_before_the_build(search_setup, work, capsys):
    model = work / "model.pt"
    shutil.copy(search_setup["model"], model)
    collection = work / "collection.tsv"
    collection.write_text("\n".join(search_setup["lines"]) + "\n")
    # refused before the build: in one line here, or by argparse where the flag's own range already excludes it
    status, out, err = cli(capsys, SEARCH, "index", model, "--dataset-path", collection, "--faiss", "hnsw",
                           "--ef-search", 2**31)
    last = err.strip().splitlines()[-1]
    assert status == 2 and "Traceback" not in err and "--ef-search" in last and str(2**31) in last, err
    assert "Indexing" not in out and not (work / "model_index").exists()
    assert not (work / ".model_index.new").exists()
    model_copy, index = _copy(search_setup, work, "copied_index")
    before = (index / MANIFEST).read_bytes()
    status, out, err = cli(capsys, SEARCH, "faiss", model_copy, "--index-dir", index, "--faiss", "ivf", "--nprobe",
                           2**64)
    last = err.strip().splitlines()[-1]
    assert status == 2 and "Traceback" not in err and "--nprobe" in last and str(2**64) in last, err
    assert (index / MANIFEST).read_bytes() == before and "Built faiss" not in out
