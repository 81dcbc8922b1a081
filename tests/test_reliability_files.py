"""Bad inputs of every saved file (docs/reliability.md, "Saved indexes, run files and outputs"): every file kind
the scripts read or write, edited, damaged or in the wrong place, through the scripts' command lines.

The search and evaluation cases share one index of the trained fixture model, built once per module; each case
damages a copy of it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import TRAIN_SCRIPT, TRIPLETS_SCRIPT, make_corpus, write_tsv_folder
from test_reliability import assert_one_line_error, assert_usage_error, cli

from msmarco_search.training.model_file import load_model

SEARCH = "search/search.py"
EVALUATE = "evaluation/evaluate.py"
AVERAGE = "training/average_two_tower_models.py"


@pytest.fixture
def work(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MSMARCO_SEARCH_NO_PROGRESS", "1")
    return tmp_path


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, trained_pipeline) -> dict[str, Path]:
    """The fixture model's index (dense + BM25) over a TSV collection, made through ``search.py index``."""
    folder = tmp_path_factory.mktemp("indexed")
    tsv = write_tsv_folder(make_corpus(), folder / "tsv")
    index = folder / "index"
    from msmarco_search.cli.search import main

    assert main(["index", str(trained_pipeline["model"]), "--index-dir", str(index), "--dataset-path",
                 str(tsv / "collection.tsv")]) == 0
    return {"folder": folder, "tsv": tsv, "index": index, "model": trained_pipeline["model"]}


def _copy(indexed, work: Path) -> Path:
    return Path(shutil.copytree(indexed["index"], work / "index"))


def _edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _resave(path: Path, change) -> None:
    np.save(path, change(np.load(path)))


def _record_sizes(index: Path) -> None:
    """Make bm25.json vouch for the files as they are now (a user copying files between indexes, record and
    all), so that the checks behind the record's are the ones tested."""
    from msmarco_search.index.bm25 import _digest

    bm25 = index / "bm25"
    _edit_json(bm25 / "bm25.json", lambda r: r.update(
        files={n: (bm25 / n).stat().st_size for n in r["files"]}, digests={n: _digest(bm25 / n) for n in r["files"]},
        stamps={n: (bm25 / n).stat().st_mtime_ns for n in r["files"]}))


def _swap_two_words(index: Path) -> None:
    path = index / "bm25" / "vocab.index.json"
    vocab = json.loads(path.read_text())
    first, second = sorted(w for w in vocab if w.startswith("doc0"))[:2]
    vocab[first], vocab[second] = vocab[second], vocab[first]
    path.write_text(json.dumps(vocab))  # same size: the size check alone let it through


BM25_DAMAGE = {
    "vocabulary edited, same size": (_swap_two_words, "vocab.index.json: changed since the BM25 index was built"),
    "column pointers cut short": (lambda i: (_resave(i / "bm25" / "indptr.csc.index.npy", lambda a: a[:-5]),
                                             _record_sizes(i)), "score arrays do not fit together"),
    "scores rewritten in place, same size": (lambda i: _resave(i / "bm25" / "data.csc.index.npy", lambda a: a[::-1]),
                                             "data.csc.index.npy: changed since the BM25 index was built (its content"),
    "rows beyond the collection": (lambda i: (_resave(i / "bm25" / "indices.csc.index.npy", lambda a: a + 10**5),
                                              _record_sizes(i)), "BM25 index is damaged (index"),
    "NaN scores": (lambda i: (_resave(i / "bm25" / "data.csc.index.npy", lambda a: np.full_like(a, np.nan)),
                              _record_sizes(i)), "scores hold NaN"),
    "scores as a matrix": (lambda i: (_resave(i / "bm25" / "data.csc.index.npy", lambda a: a.reshape(-1, 1)),
                                      _record_sizes(i)), "not one-dimensional"),
    "scores as text": (lambda i: (_resave(i / "bm25" / "data.csc.index.npy", lambda a: a.astype("U8")),
                                  _record_sizes(i)), "score arrays have types <U8"),
    "record's files not a mapping": (lambda i: _edit_json(i / "bm25" / "bm25.json", lambda r: r.update(files=[1])),
                                     "files, digests or stamps not a mapping"),
}


@pytest.mark.parametrize("case", BM25_DAMAGE)
def test_a_damaged_saved_bm25_index_is_one_line(indexed, work, capsys, case):
    damage, words = BM25_DAMAGE[case]
    index = _copy(indexed, work)
    damage(index)
    result = cli(capsys, SEARCH, "query", indexed["model"], "--index-dir", index, "--system", "bm25",
                 "what is doc0y1 doc0y2")
    assert_one_line_error(result, words)


def test_an_intact_saved_bm25_index_still_searches(indexed, work, capsys):
    index = _copy(indexed, work)
    status, out, err = cli(capsys, SEARCH, "query", indexed["model"], "--index-dir", index,
                           "--system", "bm25", "what is doc0y1 doc0y2")
    assert status == 0 and "error" not in err and "   1  " in out + err
    # copied without its modification times (cp without -p): the arrays are hashed instead, and pass
    for file in (index / "bm25").glob("*.npy"):
        os.utime(file, ns=(file.stat().st_atime_ns, file.stat().st_mtime_ns + 10**9))
    again = cli(capsys, SEARCH, "query", indexed["model"], "--index-dir", index, "--system", "bm25",
                "what is doc0y1 doc0y2")
    assert again[0] == 0 and again[1] == out


DENSE_DAMAGE = {
    "a size as text": (lambda i: _edit_json(i / "manifest.json", lambda m: m["files"].update({"ids.npy": "608"})),
                       "manifest is incomplete (file sizes are not whole numbers"),
    "collection size as text": (lambda i: _edit_json(i / "manifest.json", lambda m: m.update(
        collection_size=str(m["collection_size"]))), "file sizes are not whole numbers"),
    "an offset before the file": (lambda i: _resave(i / "offsets.npy", lambda a: a - a[1]),
                                  "offsets.npy: holds offsets outside the collection"),
    "an offset past its end": (lambda i: _resave(i / "offsets.npy", lambda a: a + 10**9),
                               "offsets.npy: holds offsets outside the collection"),
    "a NaN vector": (lambda i: _resave(i / "vectors.npy", lambda a: np.where(np.arange(len(a))[:, None] == 3,
                                                                             np.float32(np.nan), a)),
                     "vectors.npy: the index's vectors hold NaN"),
}


@pytest.mark.parametrize("case", DENSE_DAMAGE)
def test_a_damaged_dense_index_is_one_line(indexed, work, capsys, case):
    damage, words = DENSE_DAMAGE[case]
    index = _copy(indexed, work)
    damage(index)
    result = cli(capsys, SEARCH, "query", indexed["model"], "--index-dir", index, "-k", "200", "what is ask0x1")
    assert_one_line_error(result, words)


def test_run_files_are_checked_before_the_search_and_ids_fit_trec(indexed, work, capsys):
    queries = work / "queries.tsv"
    queries.write_text("1\twhat is ask0x1\n")
    (work / "runs").mkdir()
    common = ("query", indexed["model"], "--index-dir", indexed["index"], "--queries", queries)
    status, out, err = cli(capsys, SEARCH, *common, "--run-file", work / "runs")
    assert status == 2 and err.strip() == f"error: {work / 'runs'}: is a folder; --run-file names the TREC run file " \
                                          "to write"
    assert "Index:" not in out + err  # refused before the index was opened, not after the search
    # a query id with a space would make a seven-column TREC line (it was written so)
    queries.write_text("1 2\twhat is ask0x1\n")
    assert_one_line_error(cli(capsys, SEARCH, *common, "--run-file", work / "run.trec"), "query id '1 2'",
                          "cannot carry")
    assert not (work / "run.trec").exists()
    assert_usage_error(cli(capsys, SEARCH, "query", indexed["model"], "--snippet", "-5", "x"),
                       "--snippet", "must not be negative")


def test_evaluation_refuses_bad_thresholds_baselines_ids_and_earlier_results(indexed, work, capsys):
    tsv = indexed["tsv"]
    files = ("--collection", tsv / "collection.tsv", "--queries", tsv / "queries.train.tsv", "--qrels",
             tsv / "qrels.train.tsv", "--systems", "bm25", "--max-queries", "5")
    for value, words in (("0", "must be a positive number"), ("-3", "must be a positive number"),
                         ("99999999999", "must be at most 2,147,483,647")):  # 0 and huge were tracebacks, -3 taken
        assert_usage_error(cli(capsys, EVALUATE, *files, "--relevance-threshold", value), words)
    status, out, err = cli(capsys, EVALUATE, *files, "--baseline", "nosuch", "--output-dir", work / "a")
    assert status == 2 and err.strip().endswith("--baseline nosuch is not one of the systems (bm25)")
    assert "over" not in out + err  # before any system ran
    # a passage id with a space: refused before the work, not a broken run file after it
    spaced = work / "collection.tsv"
    spaced.write_text((tsv / "collection.tsv").read_text().replace("1000\t", "10 00\t", 1))
    spaced_files = ("--collection", spaced, *files[2:])
    assert_one_line_error(cli(capsys, EVALUATE, *spaced_files, "--output-dir", work / "b"), "passage id '10 00'")
    # an earlier evaluation in --output-dir is kept unless --overwrite
    assert cli(capsys, EVALUATE, *files, "--output-dir", work / "c")[0] == 0
    first = (work / "c" / "evaluation.json").read_text()
    assert_one_line_error(cli(capsys, EVALUATE, *files, "--output-dir", work / "c"),
                          "already holds an evaluation.json; pass --overwrite")
    assert (work / "c" / "evaluation.json").read_text() == first
    assert cli(capsys, EVALUATE, *files, "--output-dir", work / "c", "--overwrite")[0] == 0


def test_triplets_output_never_replaces_a_file_that_is_not_triplets(work, capsys, rows_file):
    source = work / "train.jsonl"
    source.write_bytes(rows_file.read_bytes())
    result = cli(capsys, TRIPLETS_SCRIPT, "--dataset-path", source, "--output", source)
    assert_one_line_error(result, "train.jsonl: is an input of this run")
    assert source.read_bytes() == rows_file.read_bytes()  # it was replaced by the pickle
    # an earlier triplets file is replaced, as --output says
    assert cli(capsys, TRIPLETS_SCRIPT, "--dataset-path", source, "--output", work / "t.pkl")[0] == 0
    assert cli(capsys, TRIPLETS_SCRIPT, "--dataset-path", source, "--output", work / "t.pkl", "--seed", "7")[0] == 0


def test_damaged_triplets_metadata_does_not_cost_the_training(work, capsys, trained_pipeline):
    triplets = work / "t.pkl"
    shutil.copy(trained_pipeline["triplets"], triplets)
    (work / "t_metadata.json").write_text('{"source": ')  # cut short: it was read only after the training
    status, _, err = cli(capsys, TRAIN_SCRIPT, triplets, "--embeddings", trained_pipeline["embeddings"], "--epochs",
                         "1", "--output", work / "m.pt")
    assert status == 0, err
    assert "warning: " in err and "t_metadata.json: not valid JSON" in err
    assert load_model(work / "m.pt").metadata["trained_on"]["triplets_source"] is None


def test_averaging_a_model_with_itself_says_so(work, capsys, trained_pipeline):
    model = trained_pipeline["model"]
    status, _, err = cli(capsys, AVERAGE, model, model, "--output", work / "soup.pt")
    assert status == 0 and "is the same model as" in err and "weighs it more" in err


def test_a_word_listed_twice_in_a_model_or_embeddings_file_is_refused(work, capsys, trained_pipeline):
    """Edited or hand-made files: the word's first row could never be looked up, so its vector was dead weight
    and the export's tokenizer (a word -> id map) would disagree with the model."""
    import torch

    for source, script, args in ((trained_pipeline["model"], SEARCH, ("query", work / "dup.pt", "what is x")),
                                 (trained_pipeline["embeddings"], TRAIN_SCRIPT,
                                  (trained_pipeline["triplets"], "--embeddings", work / "dup.pt", "--no-save"))):
        data = torch.load(source, weights_only=True)
        data["index_to_word"][5] = data["index_to_word"][6]
        torch.save(data, work / "dup.pt")
        word = data["index_to_word"][6]
        assert_one_line_error(cli(capsys, script, *args), "dup.pt", f"lists the word {word!r} twice")


@pytest.mark.parametrize("stemmer", [3, "porter", None])
def test_a_model_or_embeddings_file_with_a_bad_stemmer_is_refused(work, capsys, trained_pipeline, stemmer):
    """The stemmer a vocabulary records (CBOW --stemmer) decides how every text is encoded: one that is not a
    known name is refused in one line, not guessed."""
    import torch

    for source, script, args in ((trained_pipeline["model"], SEARCH, ("query", work / "stem.pt", "what is x")),
                                 (trained_pipeline["embeddings"], TRAIN_SCRIPT,
                                  (trained_pipeline["triplets"], "--embeddings", work / "stem.pt", "--no-save"))):
        data = torch.load(source, weights_only=True)
        data["stemmer"] = stemmer
        torch.save(data, work / "stem.pt")
        assert_one_line_error(cli(capsys, script, *args), "stem.pt", "stemmer")


def test_training_never_writes_its_model_over_its_own_input(work, capsys, trained_pipeline):
    triplets = work / "t.pkl"
    shutil.copy(trained_pipeline["triplets"], triplets)
    before = triplets.read_bytes()
    result = cli(capsys, TRAIN_SCRIPT, triplets, "--embeddings", trained_pipeline["embeddings"], "--output", triplets,
                 "--overwrite")
    assert_one_line_error(result, "t.pkl: is an input of this run")
    assert triplets.read_bytes() == before


def test_a_damaged_training_state_or_one_of_other_triplets_is_refused(work, capsys, trained_pipeline):
    import torch

    triplets, embeddings = trained_pipeline["triplets"], trained_pipeline["embeddings"]
    common = ("--embeddings", embeddings, "--epochs", "2", "--checkpoint-every", "5")
    assert cli(capsys, TRAIN_SCRIPT, triplets, *common, "--output", work / "m.pt", "--keep-training-state")[0] == 0
    state = work / "m_training_state.pt"
    for change, words in ((lambda d: d["position"].update(extra=1), "unexpected keyword argument 'extra'"),
                          (lambda d: d.update(rng={}), "('torch')"),
                          (lambda d: d.update(epoch="2"), "not supported between"),
                          (lambda d: d["model"].update({name: tensor[:5] for name, tensor in d["model"].items()
                                                        if name.endswith("embedding.weight")}), "state_dict")):
        data = torch.load(state, weights_only=True)
        change(data)
        torch.save(data, work / "bad.pt")  # each found after the data and model are loaded
        result = cli(capsys, TRAIN_SCRIPT, triplets, *common, "--output", work / "m2.pt", "--resume", work / "bad.pt")
        assert_one_line_error(result, "bad.pt: training state is damaged or does not fit this run", words)
    # other triplets of the same size passed every check, and the run went on over other data
    other = work / "other.pkl"
    assert cli(capsys, TRIPLETS_SCRIPT, "--dataset-path", trained_pipeline["rows"], "--seed", "7", "--output",
               other)[0] == 0
    result = cli(capsys, TRAIN_SCRIPT, other, *common, "--output", work / "m3.pt", "--resume", state)
    assert_one_line_error(result, "cannot resume: this state was trained on other triplets than")
    assert cli(capsys, TRAIN_SCRIPT, triplets, *common, "--output", work / "m4.pt", "--resume", state)[0] == 0
