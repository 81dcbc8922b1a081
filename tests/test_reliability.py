"""Bad input, hostile files, interrupted writes and concurrent runs, through the scripts' command lines.

Most cases call a script's ``main(argv)`` in this process through ``cli.run`` (what ``python script.py``
runs), which is fast; a few run the script as a real subprocess to prove the exit status and that no
traceback reaches the user. docs/reliability.md lists each case with the message the user sees.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import re
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CBOW_SCRIPT, ROOT, TRAIN_SCRIPT, TRIPLETS_SCRIPT, run_script, write_tsv_folder

from msmarco_search.cli import run
from msmarco_search.core.commands import SCRIPT
from msmarco_search.core.errors import PipelineError
from msmarco_search.data.tokens import tokenise_triplets
from msmarco_search.data.triplets import load_triplets, metadata_path
from msmarco_search.data.vocab import Vocabulary, vocabulary_fingerprint
from msmarco_search.io import atomic, outputs, safe_load
from msmarco_search.io.atomic import atomic_write
from msmarco_search.io.safe_load import KIND_TRIPLETS, load_pickle
from msmarco_search.training.model_file import load_model

# ------------------------------------------------------------------------------------------- shared checks

_MODULES: dict[str, object] = {}


def _script(path: str):
    """The script as a module (scripts are files, not package modules), loaded once."""
    if path not in _MODULES:
        spec = importlib.util.spec_from_file_location(f"script_{Path(path).stem}", ROOT / path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # as importing does: a script's dataclasses look their module up there
        spec.loader.exec_module(module)
        _MODULES[path] = module
    return _MODULES[path]


def cli(capsys, script: str, *args) -> tuple[int, str, str]:
    """Run ``script``'s main with ``args`` the way ``python script.py args`` does: (exit status, stdout, stderr)."""
    module = _script(script)
    with pytest.raises(SystemExit) as stop:
        run(module.main, [str(a) for a in args], form=SCRIPT)
    captured = capsys.readouterr()
    return stop.value.code, captured.out, captured.err


def assert_one_line_error(result: tuple[int, str, str], *words: str) -> str:
    status, _, err = result
    lines = err.strip().splitlines()
    assert status == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def assert_usage_error(result: tuple[int, str, str], *words: str) -> None:
    """argparse's answer: the usage line, then ``prog: error: argument --flag: problem``, exit 2."""
    status, _, err = result
    assert status == 2 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert "error: argument" in last, err
    for word in words:
        assert word in last, (word, last)


@pytest.fixture
def work(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MSMARCO_SEARCH_NO_PROGRESS", "1")
    return tmp_path


@pytest.fixture
def blocked(work) -> Path:
    """A path no one can create a folder at, even root: its parent is a regular file."""
    blocker = work / "blocker"
    blocker.write_text("a file, not a folder\n")
    return blocker / "out"


class Evil:
    """Unpickling this runs ``touch marker``: a stand-in for any code hidden in a data file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


CBOW_TINY = ("--min-count", "1", "--vector-size", "8", "--epochs", "1", "--workers", "1")


def _row(query: str, texts: list[str], selected: list[int]) -> str:
    return json.dumps({"query": query, "query_id": abs(hash(query)) % 10**6,
                       "passages": {"is_selected": selected, "passage_text": texts}}) + "\n"


# ------------------------------------------------------------------------------------- hostile files


def test_code_in_a_triplets_pickle_is_refused_and_never_runs(work, capsys, trained_pipeline):
    marker = work / "pwned"
    evil = work / "evil.pkl"
    evil.write_bytes(pickle.dumps({"kind": KIND_TRIPLETS, "format_version": 1, "queries": Evil(marker)}))
    line = assert_one_line_error(cli(capsys, TRAIN_SCRIPT, evil, "--embeddings", trained_pipeline["embeddings"]),
                                 "evil.pkl: unsafe pickle refused: it names posix.system, which could run code")
    assert "plain data only" in line and not marker.exists()
    # the control: unpickled without the guard, the same file does run its code
    pickle.loads(evil.read_bytes())
    assert marker.exists()


def test_code_in_a_pickle_never_runs_through_the_real_command_line(work, trained_pipeline):
    marker = work / "pwned"
    evil = work / "evil.pkl"
    evil.write_bytes(pickle.dumps({"kind": KIND_TRIPLETS, "format_version": 1, "queries": Evil(marker)}))
    result = run_script(TRAIN_SCRIPT, evil, "--embeddings", trained_pipeline["embeddings"], cwd=work, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "evil.pkl: unsafe pickle refused: it names posix.system" in result.stderr
    assert not marker.exists()


def test_code_in_a_torch_file_or_gensim_model_is_refused(work, capsys, trained_pipeline):
    marker = work / "pwned"
    evil_pt = work / "evil.pt"
    torch.save({"kind": safe_load.KIND_EMBEDDINGS, "format_version": 1, "x": Evil(marker)}, evil_pt)
    assert_one_line_error(cli(capsys, TRAIN_SCRIPT, trained_pipeline["triplets"], "--embeddings", evil_pt),
                          "evil.pt: unsafe torch file refused: it names posix.system, which could run code")
    evil_gensim = work / "evil.gensim"
    evil_gensim.write_bytes(pickle.dumps(Evil(marker)))
    assert_one_line_error(cli(capsys, CBOW_SCRIPT, "--dataset-path", trained_pipeline["rows"], *CBOW_TINY,
                              "--resume-from", evil_gensim),
                          "evil.gensim: unsafe gensim Word2Vec model refused: it names posix.system")
    assert not marker.exists()


def test_gensim_models_saved_by_the_script_resume_through_the_safe_loader(work, capsys, rows_file):
    assert cli(capsys, CBOW_SCRIPT, "--dataset-path", rows_file, *CBOW_TINY, "--save-gensim-model")[0] == 0
    gensim_model = work / "checkpoints" / "msmarco_word2vec.gensim"
    status, out, err = cli(capsys, CBOW_SCRIPT, "--dataset-path", rows_file, *CBOW_TINY, "--resume-from",
                           gensim_model)
    assert status == 0, err
    assert "Vocabulary size" in out
    assert json.loads(gensim_model.with_name("msmarco_word2vec.gensim.json").read_text())["stemmer"] == "none"
    # continued on stemmed text, its words and the stems would mix in one vocabulary that claims to be stems
    assert_one_line_error(cli(capsys, CBOW_SCRIPT, "--dataset-path", rows_file, *CBOW_TINY, "--resume-from",
                              gensim_model, "--stemmer", "english"), "msmarco_word2vec.gensim",
                          "trained with --stemmer none; continue it with --stemmer none, not english")
    # copied without its record: the stemmer cannot be told, so the run says so and takes the one given
    gensim_model.with_name("msmarco_word2vec.gensim.json").unlink()
    status, _, err = cli(capsys, CBOW_SCRIPT, "--dataset-path", rows_file, *CBOW_TINY, "--resume-from",
                         gensim_model, "--stemmer", "english")
    assert status == 0 and "no msmarco_word2vec.gensim.json beside it to say which --stemmer" in err
    # a triplets pickle is no gensim model
    triplets = safe_load.save_pickle({"queries": []}, work / "t.pkl", KIND_TRIPLETS)
    assert_one_line_error(cli(capsys, CBOW_SCRIPT, "--dataset-path", rows_file, *CBOW_TINY, "--resume-from",
                              triplets), "t.pkl", "not a gensim Word2Vec model (it holds a dict)")


# ----------------------------------- gensim side files, torch writes, model files, the CBOW output folder

SEARCH_SCRIPT = "search/search.py"


def _saved_gensim_model(capsys, rows_file: Path, folder: Path) -> Path:
    """A real model saved by the CBOW script with --save-gensim-model."""
    assert cli(capsys, CBOW_SCRIPT, "--dataset-path", rows_file, *CBOW_TINY, "--save-gensim-model", "-c", folder,
               "--no-word-benchmarks")[0] == 0
    return folder / "msmarco_word2vec.gensim"


def _forge(original: Path, target: Path, change) -> Path:
    """``original`` (trusted: just written by the script) with ``change(model)`` applied, pickled as gensim
    pickles a model (the bookkeeping lists are plain attributes), to ``target``."""
    from msmarco_search.io.gensim_safe import load_gensim_model

    model = load_gensim_model(original)
    change(model)
    target.parent.mkdir(parents=True, exist_ok=True)
    data = pickle.dumps(model, protocol=4)
    if target.name.endswith(".gz"):
        import gzip

        data = gzip.compress(data)
    target.write_bytes(data)
    return target


def _side(obj, name: str, attributes: list[str]) -> None:
    obj.__dict__[name] = attributes


def test_gensim_side_files_that_would_run_code_never_run(work, capsys, rows_file):
    from gensim.models import KeyedVectors, Word2Vec

    real = _saved_gensim_model(capsys, rows_file, work / "real")
    marker = work / "pwned"
    evil = pickle.dumps(Evil(marker))

    def nested(model):  # the attack: a sub-object of a sub-object with a pickled "scipy" side file
        model.wv.extra = KeyedVectors(vector_size=8)
        _side(model.wv, "__recursive_saveloads", ["extra"])
        _side(model.wv.extra, "__scipys", ["matrix"])

    def detach(name):
        def change(model):
            del model.__dict__[name]
            _side(model, "__numpys", [name])
        return change

    def loop(model):
        model.wv.back = model
        _side(model.wv, "__recursive_saveloads", ["back"])

    evil_npy = work / "object.npy"
    np.save(evil_npy, np.array([Evil(marker)], dtype=object), allow_pickle=True)
    evil_npz = work / "object.npz"
    np.savez(evil_npz, val=np.array([Evil(marker)], dtype=object))
    cases = [  # (folder, model change, side files, what the user is told, whether gensim itself runs the code)
        ("nested", nested, {"wv.extra.matrix.npy": evil}, "scipy matrices in pickled side files", True),
        ("top", lambda m: _side(m, "__scipys", ["syn1neg"]), {"syn1neg.npy": evil}, "could run code", True),
        ("wv", lambda m: _side(m.wv, "__scipys", ["vectors"]), {"wv.vectors.npy": evil}, "could run code", True),
        ("npy", detach("syn1neg"), {"syn1neg.npy": evil}, "side file m.gensim.syn1neg.npy holds pickled Python", False),
        ("objnpy", detach("syn1neg"), {"syn1neg.npy": evil_npy.read_bytes()}, "holds pickled Python objects", False),
        ("npz", detach("syn1neg"), {"syn1neg.npz": evil_npz.read_bytes()}, "holds pickled Python objects", False),
        ("random", lambda m: _side(m, "__recursive_saveloads", ["wv", "random"]), {},
         "sub-object 'random' is a RandomState", False),
        ("escape", lambda m: _side(m, "__numpys", ["/../../object"]), {}, "is not a list of attribute names", False),
        ("loop", loop, {}, "refer to each other in a loop", False),
    ]
    for folder, change, sides, words, gensim_runs_it in cases:
        name = "m.gensim.gz" if folder == "npz" else "m.gensim"
        path = _forge(real, work / folder / name, change)
        for suffix, data in sides.items():
            (work / folder / f"{name}.{suffix}").write_bytes(data)
        result = cli(capsys, CBOW_SCRIPT, "--dataset-path", rows_file, *CBOW_TINY, "--resume-from", path)
        assert_one_line_error(result, str(path), words)
        assert "Data source" not in result[1]  # refused before the corpus is read, let alone trained on
        assert not marker.exists(), folder
        if gensim_runs_it:  # the control: gensim's own loader runs the same folder's code
            with pytest.raises(Exception):  # noqa: B017 - it fails after running the code, any which way
                Word2Vec.load(str(path))
            assert marker.exists(), folder
            marker.unlink()
    # and a real saved model still resumes, through the same loader
    status, out, err = cli(capsys, CBOW_SCRIPT, "--dataset-path", rows_file, *CBOW_TINY, "--resume-from", real,
                           "-c", work / "again", "--no-word-benchmarks")
    assert status == 0, err
    assert "Saved embeddings" in out and torch.load(work / "again" / "msmarco_word2vec.pt",
                                                    weights_only=True)["metadata"]["resumed_from"] == str(real)


def test_damaged_gensim_models_are_one_line_errors(work, capsys, rows_file):
    from gensim.models import Word2Vec

    from msmarco_search.io.gensim_safe import load_gensim_model

    real = _saved_gensim_model(capsys, rows_file, work / "real")

    def set_attribute(name, value, on_wv=False):
        return lambda m: setattr(m.wv if on_wv else m, name, value)

    def missing_side(model):
        del model.__dict__["syn1neg"]
        _side(model, "__numpys", ["syn1neg"])

    def fewer_rows(model):
        model.syn1neg = model.syn1neg[:-1]

    def nan_vectors(model):
        model.wv.vectors[0, 0] = np.nan

    cases = [
        (missing_side, "its side file m.gensim.syn1neg.npy is missing"),
        (fewer_rows, "syn1neg should be a float32 array of shape"),  # gensim's C loop would read past its end
        (nan_vectors, "weights hold NaN or infinite values"),
        (set_attribute("window", "5"), "window is 5, not a whole number >= 1"),
        (set_attribute("sg", 1), "not a CBOW model with negative sampling"),
        (set_attribute("hashfxn", int), "hash function or random generator is not gensim's"),
        (set_attribute("key_to_index", {}, on_wv=True), "key_to_index does not match its word list"),
        (set_attribute("index_to_key", "words", on_wv=True), "has no list of words"),
        (set_attribute("vectors", np.zeros((3, 3), dtype=np.float64), on_wv=True), "vectors should be a float32"),
        (lambda m: _side(m, "__ignoreds", ["wv"]), "has no word vectors (its wv was replaced or dropped)"),
    ]
    for number, (change, words) in enumerate(cases):
        path = _forge(real, work / f"case{number}" / "m.gensim", change)
        with pytest.raises(PipelineError) as refused:
            load_gensim_model(path)
        message = str(refused.value)
        assert message.startswith(f"{path}: ") and words in message and "\n" not in message, (number, message)
    assert_one_line_error(cli(capsys, CBOW_SCRIPT, "--dataset-path", rows_file, *CBOW_TINY, "--resume-from",
                              work / "case1" / "m.gensim"), "syn1neg should be a float32 array")
    cut = work / "cut.gensim"
    cut.write_bytes(real.read_bytes()[:1000])
    assert_one_line_error(cli(capsys, CBOW_SCRIPT, "--dataset-path", rows_file, *CBOW_TINY, "--resume-from", cut),
                          "cut.gensim: not a readable gensim Word2Vec model")
    garbage = work / "garbage.gensim.gz"
    garbage.write_bytes(b"\x1f\x8b\x08\x00 not gzip data at all")
    assert_one_line_error(cli(capsys, CBOW_SCRIPT, "--dataset-path", rows_file, *CBOW_TINY, "--resume-from",
                              garbage), "garbage.gensim.gz: not a readable compressed gensim model")
    # gensim's own layouts load: side files (.npy), and compressed (.gz with .npz side files)
    model = Word2Vec.load(str(real))
    for name in ("side.gensim", "packed.gensim.gz"):
        model.save(str(work / name), separately=["syn1neg"])
        status, _, err = cli(capsys, CBOW_SCRIPT, "--dataset-path", rows_file, *CBOW_TINY, "--resume-from",
                             work / name, "-c", work / f"out_{name}", "--no-word-benchmarks")
        assert status == 0, err
    assert (work / "packed.gensim.gz.syn1neg.npz").is_file()


def test_a_big_gensim_model_is_saved_as_one_file_that_resumes(work):
    """gensim puts arrays of 10M+ elements in side files named after the file it writes: the temporary one."""
    from gensim.models import Word2Vec

    from msmarco_search.embeddings.cbow import save_gensim_model
    from msmarco_search.io.gensim_safe import load_gensim_model

    model = Word2Vec(sentences=[["alpha", "beta", "gamma"]] * 5, vector_size=8, min_count=1, workers=1, seed=1)
    wide = 3_600_000  # 3 words x 3.6M columns: one array above gensim's 10M-element limit
    model.vector_size = model.layer1_size = model.wv.vector_size = wide
    model.wv.vectors = np.zeros((3, wide), dtype=np.float32)
    model.syn1neg = np.zeros((3, wide), dtype=np.float32)
    save_gensim_model(model, work / "big" / "m.gensim")
    # the model and its stemmer record, no side file
    assert sorted(p.name for p in (work / "big").iterdir()) == ["m.gensim", "m.gensim.json"]
    assert load_gensim_model(work / "big" / "m.gensim").wv.vectors.shape == (3, wide)


def test_a_full_disk_while_torch_writes_is_one_line(work, capsys, monkeypatch, rows_file):
    real_save = torch.save
    if Path("/dev/full").exists():
        def full_disk(obj, path, *args, **kwargs):  # torch's real writer, onto a device that is always full
            Path(path).write_bytes(b"PK\x03\x04 a few bytes")
            real_save(obj, "/dev/full")

        monkeypatch.setattr(torch, "save", full_disk)
        line = assert_one_line_error(cli(capsys, CBOW_SCRIPT, "--dataset-path", rows_file, *CBOW_TINY, "-c",
                                         work / "ckpt"),
                                     "ckpt/msmarco_word2vec.pt: cannot write (torch's file writer failed",
                                     "disk is full", "MiB free there", "free some space or choose another folder")
        assert "Traceback" not in line and list((work / "ckpt").iterdir()) == []

    def stream_writer_failed(obj, path, *args, **kwargs):  # torch's other wording of a failed write
        raise RuntimeError("[enforce fail at inline_container.cc:603] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    monkeypatch.setattr(torch, "save", stream_writer_failed)
    assert_one_line_error(cli(capsys, CBOW_SCRIPT, "--dataset-path", rows_file, *CBOW_TINY, "-c", work / "ckpt2"),
                          "msmarco_word2vec.pt: cannot write (torch's file writer failed", "file write failed")
    assert list((work / "ckpt2").iterdir()) == []
    monkeypatch.setattr(torch, "save", real_save)

    def bug(tmp):  # a RuntimeError that is no failed write stays a bug, with its traceback
        raise RuntimeError("shape mismatch in a computation")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        atomic_write(work / "x.pt", bug)
    assert not (work / "x.pt").exists()


def _model_variant(trained_pipeline, target: Path, change) -> Path:
    data = torch.load(trained_pipeline["model"], weights_only=True)
    change(data)
    torch.save(data, target)
    return target


def _first_float_weight(data) -> torch.Tensor:
    return next(t for t in data["state_dict"].values() if t.is_floating_point())


def test_models_with_non_finite_weights_are_refused(work, capsys, trained_pipeline):
    def nan(data):
        _first_float_weight(data)[2, 0] = float("nan")

    def inf(data):
        data["state_dict"][sorted(data["state_dict"])[-1]].view(-1)[0] = float("inf")

    for name, change in (("nan.pt", nan), ("inf.pt", inf)):
        bad = _model_variant(trained_pipeline, work / name, change)
        result = cli(capsys, SEARCH_SCRIPT, "index", bad, "--dataset-path", trained_pipeline["rows"])
        assert_one_line_error(result, f"{name}: its weights hold NaN or infinite values",
                              "the training that wrote it diverged")
        assert not (work / f"{bad.stem}_index").exists()
        with pytest.raises(PipelineError, match="NaN or infinite"):
            load_model(bad)
    load_model(trained_pipeline["model"])  # the control: the file they were made from loads


def _ill_typed_model_cases(trained_pipeline):
    sample = torch.load(trained_pipeline["model"], weights_only=True)
    key = sorted(sample["state_dict"])[0]
    return [
        (lambda d: d.pop("config"), "incomplete or inconsistent ('config')"),
        (lambda d: d.update(config=[1, 2]), "its config is a list, not a dict"),
        (lambda d: d["config"].update(embedding_dim="32"), "config field embedding_dim is 32, not a whole number"),
        (lambda d: d["config"].update(embedding_dim=10**9), "do not fit its config"),  # refused, not allocated
        (lambda d: d["config"].update(vocab_size=-1), "vocabulary has"),
        (lambda d: d["config"].update(tower=["mean"]), "unknown tower ['mean']"),
        (lambda d: d["config"].update(tower="transformer"), "unknown tower 'transformer'"),
        (lambda d: d["config"].update(shared_towers="no"), "config field shared_towers"),
        (lambda d: d.update(index_to_word="<pad><unk>"), "its vocabulary is not a list of words"),
        (lambda d: d.update(index_to_word=[*d["index_to_word"][:-1], 7]), "its vocabulary is not a list of words"),
        (lambda d: d.update(state_dict=[1, 2]), "its state_dict is not a dict of tensors"),
        (lambda d: d["state_dict"].update({key: "weights"}), "its state_dict is not a dict of tensors"),
        (lambda d: d["state_dict"].pop(key), "do not fit its config"),
        (lambda d: d["state_dict"].update({key: d["state_dict"][key][:-1]}), "do not fit its config"),
        (lambda d: d.update(model_id=5), "its model_id is 5, not a string"),
    ]


def test_model_files_with_missing_or_ill_typed_fields_are_one_line(work, capsys, trained_pipeline):
    for number, (change, words) in enumerate(_ill_typed_model_cases(trained_pipeline)):
        bad = _model_variant(trained_pipeline, work / f"bad{number}.pt", change)
        with pytest.raises(PipelineError) as refused:
            load_model(bad)
        message = str(refused.value)
        assert message.startswith(f"{bad}: ") and words in message and "\n" not in message, (number, message)
    assert_one_line_error(cli(capsys, SEARCH_SCRIPT, "index", work / "bad3.pt", "--dataset-path",
                              trained_pipeline["rows"]), "bad3.pt: model file is incomplete or inconsistent")


def test_model_fields_replaced_by_anything_load_or_are_one_line(trained_pipeline):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    folder = trained_pipeline["work"] / "hypothesis-models"
    folder.mkdir(exist_ok=True)
    original = torch.load(trained_pipeline["model"], weights_only=True)
    plain = st.recursive(st.none() | st.booleans() | st.integers(-2, 10**12) | st.floats() | st.text(max_size=5),
                         lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                     max_size=3), max_leaves=5)
    fields = st.sampled_from(["config", "state_dict", "index_to_word", "model_id", "vocabulary_fingerprint"])
    config_fields = st.sampled_from(sorted(original["config"]))

    @settings(max_examples=40, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(fields, config_fields, plain, st.booleans())
    def check(field, config_field, value, in_config):
        data = {**original, "config": dict(original["config"]), "state_dict": dict(original["state_dict"])}
        if in_config:
            data["config"][config_field] = value
        else:
            data[field] = value
        path = folder / "model.pt"
        torch.save(data, path)
        try:
            load_model(path)
        except PipelineError as error:
            assert str(error).startswith(f"{path}: ") and "\n" not in str(error)

    check()


def test_a_second_cbow_run_into_a_claimed_folder_is_refused(work, capsys, rows_file):
    ready = work / "ready"
    code = ("import pathlib, time\nfrom msmarco_search.embeddings.cbow import claim_output_folder\n"
            "with claim_output_folder('ckpt'):\n    pathlib.Path('ready').touch()\n    time.sleep(300)\n")
    (work / "ckpt").mkdir()
    holder = subprocess.Popen([sys.executable, "-c", code], cwd=work)  # a first run, still writing
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and holder.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists(), "the first run never took its claim"
        result = cli(capsys, CBOW_SCRIPT, "--dataset-path", rows_file, *CBOW_TINY, "-c", work / "ckpt")
        assert_one_line_error(result, f"ckpt: another CBOW run (process {holder.pid}) is writing its files into "
                                      "this folder", "pass another -c")
        assert "Data source" not in result[1] and not (work / "ckpt" / "msmarco_word2vec.pt").exists()
    finally:
        holder.kill()  # SIGKILL: its marker file stays, its lock goes with the process
        holder.wait()
    assert [p.name for p in (work / "ckpt").iterdir()] == [".msmarco_word2vec.pt.claim"]
    status, _, err = cli(capsys, CBOW_SCRIPT, "--dataset-path", rows_file, *CBOW_TINY, "-c", work / "ckpt",
                         "--no-word-benchmarks")
    assert status == 0, err  # a claim left by a killed run does not block
    assert sorted(p.name for p in (work / "ckpt").iterdir()) == ["msmarco_word2vec.pt"]  # and is cleaned up


def test_cbow_output_paths_are_checked_before_the_work(work, capsys, rows_file):
    (work / "a-file").write_text("not a folder\n")
    (work / "taken" / "msmarco_word2vec.pt").mkdir(parents=True)
    (work / "gensim-taken" / "msmarco_word2vec.gensim").mkdir(parents=True)
    for args, words in [(("-c", work / "a-file"), "a-file: is a file, not a folder; pass another -c"),
                        (("--output-dir", work / "taken"), "taken/msmarco_word2vec.pt: is in the way of the output"),
                        (("-c", work / "gensim-taken", "--save-gensim-model"),
                         "gensim-taken/msmarco_word2vec.gensim: is in the way of the output file")]:
        result = cli(capsys, CBOW_SCRIPT, "--dataset-path", rows_file, *CBOW_TINY, *args)
        assert_one_line_error(result, words)
        assert "Data source" not in result[1]
    status, _, err = cli(capsys, CBOW_SCRIPT, "--dataset-path", rows_file, *CBOW_TINY, "--output-dir", work / "alias",
                         "--no-word-benchmarks")
    assert status == 0 and (work / "alias" / "msmarco_word2vec.pt").is_file(), err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders; the blocked-path test covers it")
def test_a_read_only_cbow_output_folder_is_refused_before_the_work(work, capsys, rows_file):
    folder = work / "read-only"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        result = cli(capsys, CBOW_SCRIPT, "--dataset-path", rows_file, *CBOW_TINY, "-c", folder)
        assert_one_line_error(result, "read-only: cannot write to this checkpoint folder", "ermission denied")
        assert "Data source" not in result[1]
    finally:
        folder.chmod(0o700)


def test_cbow_flags_beyond_what_gensim_can_take_are_refused(work, capsys):
    # above 2**31 these were OverflowError tracebacks from gensim's C code, after the corpus was built
    for flag, value in [("--window", "100000000000"), ("--epochs", "100000000000"), ("--vector-size", "1000000"),
                        ("--workers", "100000"), ("--vector-size", "0"), ("--window", "-1")]:
        assert_usage_error(cli(capsys, CBOW_SCRIPT, flag, value), flag)
    assert_usage_error(cli(capsys, CBOW_SCRIPT, "--window", "100000000000"), "must be at most 10,000")


def test_the_cbow_command_ends_with_its_status(work, capsys, rows_file):
    """``main`` returns 0 when done and raises a problem the user can fix, which ``cli.run`` prints as one line
    with exit status 2; argparse ends a bad flag (2) and --help (0) itself."""
    from msmarco_search.cli.cbow import main

    for flags, expected in ((["--vector-size", "0"], 2), (["--help"], 0)):
        with pytest.raises(SystemExit) as stop:
            main(flags)
        assert stop.value.code == expected
    assert "--checkpoint-dir" in capsys.readouterr().out
    with pytest.raises(PipelineError, match="missing.jsonl: not found; "):
        main(["--dataset-path", str(work / "missing.jsonl"), *CBOW_TINY])
    status, _, err = cli(capsys, CBOW_SCRIPT, "--dataset-path", work / "missing.jsonl", *CBOW_TINY)
    assert status == 2 and err.strip().startswith(f"error: {work / 'missing.jsonl'}: not found; ")
    result = run_script(CBOW_SCRIPT, "--dataset-path", work / "missing.jsonl", cwd=work, check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"error: {work / 'missing.jsonl'}: "
                                                                              "not found; ")


def test_odd_embeddings_files_and_a_pt_given_as_gensim_model_are_one_line(work, capsys, rows_file, trained_pipeline):
    from msmarco_search.embeddings.cbow import load_embeddings, save_embeddings

    vocab = Vocabulary.from_words(["alpha", "beta"])
    cases = [(torch.zeros(4, 0), {}, "not a matrix of real word vectors (torch.float32, shape (4, 0))"),
             (torch.zeros(4, 3, dtype=torch.complex64), {}, "not a matrix of real word vectors"),
             (torch.zeros(4, 3, dtype=torch.bool), {}, "not a matrix of real word vectors"),
             (torch.zeros(4, 3), ["metadata", "as", "a", "list"], "metadata is a list, not a dict")]
    for number, (matrix, metadata, words) in enumerate(cases):
        path = save_embeddings(work / f"odd{number}.pt", matrix, vocab, {})
        data = torch.load(path, weights_only=True)
        data["metadata"] = metadata
        torch.save(data, path)
        with pytest.raises(PipelineError, match=re.escape(words)):
            load_embeddings(path)
    assert_one_line_error(cli(capsys, TRAIN_SCRIPT, trained_pipeline["triplets"], "--embeddings", work / "odd0.pt"),
                          "odd0.pt: embedding matrix is not a matrix of real word vectors")
    # the .pt beside the .gensim file, given to --resume-from
    assert_one_line_error(cli(capsys, CBOW_SCRIPT, "--dataset-path", rows_file, *CBOW_TINY, "--resume-from",
                              trained_pipeline["embeddings"]),
                          "msmarco_word2vec.pt: this is a torch .pt file, not a gensim model; pass the "
                          "msmarco_word2vec.gensim file")


def test_word_benchmark_files_missing_or_of_another_layout_are_one_line(work):
    from msmarco_search.embeddings.word_benchmarks import word_embedding_quality

    vocab = Vocabulary.from_words(["king", "queen", "man", "woman"])
    matrix = torch.randn(len(vocab), 4)
    with pytest.raises(PipelineError, match="nowhere/questions-words.txt: word benchmark file not found"):
        word_embedding_quality(matrix, vocab, folder=work / "nowhere")
    (work / "bench").mkdir()
    for name in ("wordsim353.tsv", "simlex999.txt"):
        (work / "bench" / name).write_text("king\tqueen\t8.5\nman\twoman\t8.3\n")
    for content, words in [(b"", "holds no word-analogy questions"),
                           (b"king queen man woman\n", "not a word-analogy file (': section' lines"),
                           (b"\xff\xfe garbage\n", "not a word-analogy file")]:
        (work / "bench" / "questions-words.txt").write_bytes(content)
        with pytest.raises(PipelineError, match=re.escape(words)):
            word_embedding_quality(matrix, vocab, folder=work / "bench")
    (work / "bench" / "questions-words.txt").write_text(": family\nking queen man woman\n")
    assert word_embedding_quality(matrix, vocab, folder=work / "bench")["analogies"]["in_vocabulary"] == 1



def test_files_of_the_wrong_kind_are_named(work, capsys, trained_pipeline):
    embeddings, triplets, model = (trained_pipeline[k] for k in ("embeddings", "triplets", "model"))
    assert_one_line_error(cli(capsys, TRAIN_SCRIPT, embeddings, "--embeddings", embeddings),
                          "msmarco_word2vec.pt", "torch/zip file, not a pickle", "msmarco-triplets .pkl")
    assert_one_line_error(cli(capsys, TRAIN_SCRIPT, triplets, "--embeddings", triplets),
                          triplets.name, "this is a msmarco-triplets file (a pickle), expected a cbow-embeddings")
    assert_one_line_error(cli(capsys, TRAIN_SCRIPT, triplets, "--embeddings", model),
                          model.name, "this is a two-tower-model file, expected a cbow-embeddings file")
    with pytest.raises(PipelineError, match="this is a cbow-embeddings file, expected a two-tower-model file"):
        load_model(embeddings)


def test_a_newer_triplets_format_is_refused(work, capsys, trained_pipeline):
    data = load_pickle(trained_pipeline["triplets"], KIND_TRIPLETS)
    newer = work / "newer.pkl"
    newer.write_bytes(pickle.dumps({**data, "format_version": safe_load.FORMAT_VERSION + 1}))
    assert_one_line_error(cli(capsys, TRAIN_SCRIPT, newer, "--embeddings", trained_pipeline["embeddings"]),
                          "newer.pkl", f"format version {safe_load.FORMAT_VERSION + 1} is newer", "upgrade")


def test_a_model_with_another_vocabulary_is_refused(work, trained_pipeline):
    model_path = trained_pipeline["model"]
    model = load_model(model_path, expected_vocabulary=meta_fp(trained_pipeline["embeddings"]),
                       expected_from=trained_pipeline["embeddings"])
    assert model.metadata["vocabulary_fingerprint"] == vocabulary_fingerprint(model.vocab)
    other = vocabulary_fingerprint(Vocabulary.from_words(["other", "words"]))
    with pytest.raises(PipelineError, match=r"two_tower_model_.*does not match the vocabulary of other_index"):
        load_model(model_path, expected_vocabulary=other, expected_from="other_index")
    # a file whose word list was changed after it was written no longer matches its own fingerprint
    for path, loader in ((model_path, load_model), (trained_pipeline["embeddings"], _load_embeddings)):
        data = torch.load(path, weights_only=True)
        data["index_to_word"] = data["index_to_word"][:-1] + ["tampered"]
        tampered = work / f"tampered_{path.name}"
        torch.save(data, tampered)
        with pytest.raises(PipelineError, match="tampered_.*the file was changed after it was written"):
            loader(tampered)


def meta_fp(embeddings: Path) -> str:
    return torch.load(embeddings, weights_only=True)["vocabulary_fingerprint"]


def _load_embeddings(path):
    from msmarco_search.embeddings.cbow import load_embeddings

    return load_embeddings(path)


# -------------------------------------------------------------------------------- damaged input files


def _truncated(path: Path, target: Path, fraction: float = 0.5) -> Path:
    data = path.read_bytes()
    target.write_bytes(data[: int(len(data) * fraction)])
    return target


def test_damaged_triplets_and_embeddings_are_one_line_errors(work, capsys, trained_pipeline):
    embeddings, triplets = trained_pipeline["embeddings"], trained_pipeline["triplets"]
    garbage = work / "garbage.pkl"
    garbage.write_bytes(b"\x00\x01 not a pickle" * 8)
    cases = [
        ((_truncated(triplets, work / "cut.pkl"), "--embeddings", embeddings), ("cut.pkl", "truncated or corrupt")),
        ((garbage, "--embeddings", embeddings), ("garbage.pkl", "pickle")),
        ((work / "missing.pkl", "--embeddings", embeddings), ("missing.pkl: file not found",)),
        ((triplets, "--embeddings", _truncated(embeddings, work / "cut.pt")),
         ("cut.pt", "cannot load as a cbow-embeddings file (truncated, corrupt or unsafe)")),
        ((triplets, "--embeddings", _truncated(embeddings, work / "tiny.pt", 0.01)), ("tiny.pt", "cbow-embeddings")),
    ]
    for args, words in cases:
        assert_one_line_error(cli(capsys, TRAIN_SCRIPT, *args), *words)
    data = load_pickle(triplets, KIND_TRIPLETS)
    for name, change, words in [("nocol.pkl", {"negatives": None}, "no list of strings 'negatives'"),
                                ("ragged.pkl", {"negatives": data["negatives"][:-1]}, "columns differ in length"),
                                ("none.pkl", {c: [] for c in ("queries", "positives", "negatives", "query_ids",
                                                              "positive_ids", "negative_ids")}, "holds no triplets")]:
        (work / name).write_bytes(pickle.dumps({**data, **change}))
        assert_one_line_error(cli(capsys, TRAIN_SCRIPT, work / name, "--embeddings", embeddings), name, words)


def _parquet(path: Path, columns: dict) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path)
    return path


def _source_cases(work: Path, rows_file: Path, tsv_folder: Path) -> list[tuple[list, tuple[str, ...]]]:
    lines = rows_file.read_text().splitlines(keepends=True)
    (work / "cut.jsonl").write_text("".join(lines[:2]) + lines[2][: len(lines[2]) // 2])
    (work / "empty.jsonl").write_text("")
    (work / "columns.jsonl").write_text(json.dumps({"question": "q", "passages": {"is_selected": [1],
                                                                                  "passage_text": ["p"]}}) + "\n")
    (work / "notrows.json").write_text("[1, 2, 3]")
    (work / "deep.jsonl").write_text('{"query": ' + "[" * 100_000 + "\n")
    good_parquet = _parquet(work / "good.parquet", {"query": ["q"], "passages": [{"is_selected": [1],
                                                                                   "passage_text": ["p"]}]})
    _parquet(work / "columns.parquet", {"question": ["q"], "answer": ["a"]})
    (work / "cut.parquet").write_bytes(good_parquet.read_bytes()[:-30])
    (work / "random.parquet").write_bytes(os.urandom(200))
    (work / "tsv").mkdir()
    (work / "tsv" / "queries.train.tsv").write_text("1 a query without a tab\n")
    (work / "tsv" / "qrels.train.tsv").write_text("1 0 1000 1\n")
    (work / "qrels3").mkdir()
    (work / "qrels3" / "queries.train.tsv").write_text("1\tq\n")
    (work / "qrels3" / "qrels.train.tsv").write_text("1 0 1000\n")
    (work / "grade").mkdir()
    (work / "grade" / "queries.train.tsv").write_text("1\tq\n")
    (work / "grade" / "qrels.train.tsv").write_text("1 0 1000 high\n")
    (work / "top").mkdir()
    (work / "top" / "qrels.train.tsv").write_text("1 0 1000 1\n")
    (work / "top" / "top1000.train.tsv").write_text("1\t1000\tonly three fields\n")
    (work / "collection.tsv.gz").write_bytes(b"\x1f\x8b\x08\x00")
    (work / "nothing").mkdir()
    (work / "nothing" / "readme.md").write_text("no data here\n")
    (work / "disk").mkdir()
    (work / "disk" / "dataset_info.json").write_text("{not json")
    return [
        ([work / "missing.jsonl"], ("missing.jsonl: not found",)),
        ([work / "empty.jsonl"], ("empty.jsonl: file is empty",)),
        ([work / "cut.jsonl"], ("cut.jsonl: line 3 is not valid JSON", "truncated")),
        ([work / "columns.jsonl"], ("columns.jsonl (line 1)", "not in the MS MARCO row layout", "'query'")),
        ([work / "notrows.json"], ("notrows.json (row 1)", "row layout")),
        ([work / "deep.jsonl"], ("deep.jsonl", "nested too deeply")),
        ([work / "columns.parquet"], ("columns.parquet (row 1)", "row layout")),
        ([work / "cut.parquet"], ("cut.parquet: not a readable parquet file",)),
        ([work / "random.parquet"], ("random.parquet: not a readable parquet file",)),
        ([work / "tsv"], ("queries.train.tsv: line 1 has 1 tab-separated field(s)", "needs 2")),
        ([work / "qrels3"], ("qrels.train.tsv: line 1 is not a qrels line",)),
        ([work / "grade"], ("qrels.train.tsv: line 1: relevance 'high' is not an integer",)),
        ([work / "top"], ("top1000.train.tsv: line 1 has 3 tab-separated field(s)",)),
        ([tsv_folder / "qrels.train.tsv", work / "collection.tsv.gz"],
         ("collection.tsv.gz: is compressed; decompress it first",)),
        ([work / "nothing"], ("nothing: holds no MS MARCO data",)),
        ([work / "disk"], ("disk: not a readable datasets folder",)),
    ]


def test_bad_source_files_are_one_line_errors(work, capsys, rows_file, tsv_folder):
    for paths, words in _source_cases(work, rows_file, tsv_folder):
        result = cli(capsys, TRIPLETS_SCRIPT, "--dataset-path", *paths, "--negatives", "random")
        assert_one_line_error(result, *words)
        assert not list((work / "data").glob("msmarco_triplets_*"))


def test_bad_collection_and_datasets_folder_columns(work, capsys, rows_file):
    (work / "c").mkdir()
    (work / "c" / "collection.tsv").write_text("1000 a passage with spaces, no tab\n")
    assert_one_line_error(cli(capsys, CBOW_SCRIPT, "--dataset-path", work / "c", *CBOW_TINY),
                          "collection.tsv: line 1 has 1 tab-separated field(s), a collection (pid<TAB>text)")
    import datasets

    datasets.Dataset.from_list([{"question": "q", "answer": "a"}]).save_to_disk(str(work / "disk"))
    capsys.readouterr()  # datasets' own progress bar while saving the fixture
    assert_one_line_error(cli(capsys, TRIPLETS_SCRIPT, "--dataset-path", work / "disk"),
                          "disk: is not in the MS MARCO row layout (no column passages, query")


def test_queries_without_a_selected_passage_are_skipped_and_counted(work, capsys):
    rows = work / "rows.jsonl"
    with open(rows, "w") as handle:
        for i in range(6):
            handle.write(_row(f"query {i}", [f"passage {i} a", f"passage {i} b"], [1, 0] if i % 3 else [0, 0]))
    status, out, err = cli(capsys, TRIPLETS_SCRIPT, "--dataset-path", rows)
    assert status == 0, err
    assert "4 triplets from 6 queries (2 skipped without a selected passage" in out
    path = next((work / "data").glob("msmarco_triplets_*.pkl"))
    metadata = json.loads(metadata_path(path).read_text())
    assert metadata["queries_without_selected"] == 2 and metadata["num_triplets"] == 4
    assert set(load_triplets(path).queries) == {"query 1", "query 2", "query 4", "query 5"}


def test_empty_results_after_filtering(work, capsys, tsv_folder):
    rows = work / "rows.jsonl"
    rows.write_text("".join(_row(f"q{i}", ["p", "o"], [0, 0]) for i in range(3)))
    assert_one_line_error(cli(capsys, TRIPLETS_SCRIPT, "--dataset-path", rows),
                          "no triplets could be made", "3 queries read, 3 without a selected passage")
    assert_one_line_error(cli(capsys, TRIPLETS_SCRIPT, "--dataset-path", tsv_folder, "--min-relevance", "5"),
                          "0 queries read", "check --split, --min-relevance")
    words = work / "punctuation.jsonl"
    words.write_text(_row("?!", ["...", "--"], [1, 0]))
    assert_one_line_error(cli(capsys, CBOW_SCRIPT, "--dataset-path", words, *CBOW_TINY),
                          "no text with any word was read")
    rows.write_text("".join(_row(f"q{i}", [f"alpha{i} beta", "gamma"], [1, 0]) for i in range(3)))
    assert_one_line_error(cli(capsys, CBOW_SCRIPT, "--dataset-path", rows, "--min-count", "1000"),
                          "no word occurs at least min_count=1000 times; lower --min-count")


# ------------------------------------------------------------------------------------ flags and devices

BAD_FLAGS = [
    (CBOW_SCRIPT, "--max-samples", "0"), (CBOW_SCRIPT, "--max-samples", "-5"), (CBOW_SCRIPT, "--vector-size", "0"),
    (CBOW_SCRIPT, "--window", "-1"), (CBOW_SCRIPT, "--min-count", "0"), (CBOW_SCRIPT, "--epochs", "0"),
    (CBOW_SCRIPT, "--workers", "-1"), (CBOW_SCRIPT, "--seed", "-1"), (CBOW_SCRIPT, "--seed", "4294967296"),
    (CBOW_SCRIPT, "--min-relevance", "one"),
    (TRIPLETS_SCRIPT, "--max-samples", "0"), (TRIPLETS_SCRIPT, "--max-samples", "-3"),
    (TRIPLETS_SCRIPT, "--max-samples", "1.5"), (TRIPLETS_SCRIPT, "--seed", "-1"),
    (TRAIN_SCRIPT, "--epochs", "0"), (TRAIN_SCRIPT, "--batch-size", "-1"), (TRAIN_SCRIPT, "--learning-rate", "inf"),
    (TRAIN_SCRIPT, "--learning-rate", "nan"), (TRAIN_SCRIPT, "--learning-rate", "0"),
    (TRAIN_SCRIPT, "--embedding-learning-rate", "-1"), (TRAIN_SCRIPT, "--num-workers", "-1"),
    (TRAIN_SCRIPT, "--output-dim", "-1"), (TRAIN_SCRIPT, "--gru-hidden-dim", "0"),
    (TRAIN_SCRIPT, "--max-query-length", "0"), (TRAIN_SCRIPT, "--max-passage-length", "-1"),
    (TRAIN_SCRIPT, "--scale", "0"), (TRAIN_SCRIPT, "--margin", "-0.5"), (TRAIN_SCRIPT, "--log-every", "0"),
    (TRAIN_SCRIPT, "--seed", "-1"),
]


def test_every_numeric_flag_refuses_zero_negative_and_nonsense(work, capsys):
    for script, flag, value in BAD_FLAGS:
        args = ["x.pkl"] if script == TRAIN_SCRIPT else []
        assert_usage_error(cli(capsys, script, *args, flag, value), flag)


def test_bad_flags_exit_2_without_traceback_through_the_real_command_line(work):
    result = run_script(TRIPLETS_SCRIPT, "--max-samples", "0", cwd=work, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "argument --max-samples: must be a positive number, got 0" in result.stderr


def test_a_device_that_does_not_exist_is_refused(work, capsys, trained_pipeline):
    args = (trained_pipeline["triplets"], "--embeddings", trained_pipeline["embeddings"], "--device")
    assert_one_line_error(cli(capsys, TRAIN_SCRIPT, *args, "tpu"), "unknown device 'tpu'", "cpu, cuda")
    assert_one_line_error(cli(capsys, TRAIN_SCRIPT, *args, "cuda:abc"), "unknown device 'cuda:abc'")
    if not torch.cuda.is_available():
        assert_one_line_error(cli(capsys, TRAIN_SCRIPT, *args, "cuda"), "'cuda' asked for", "CUDA is not available")
    if not torch.backends.mps.is_available():
        assert_one_line_error(cli(capsys, TRAIN_SCRIPT, *args, "mps"), "MPS is not available")


# ---------------------------------------------------------------------------------------- the hub


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def no_datasets_download(monkeypatch):
    """Fail the test if the hub path ever gets as far as datasets.load_dataset (its ~25 s of retries)."""
    import datasets

    def refuse(*args, **kwargs):
        raise AssertionError("datasets.load_dataset was called despite the hub being out of reach")

    monkeypatch.setattr(datasets, "load_dataset", refuse)


def test_an_unreachable_hub_fails_fast_with_the_remedy(work, capsys, monkeypatch, no_datasets_download):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    port = _closed_port()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    for script in (CBOW_SCRIPT, TRIPLETS_SCRIPT):
        assert_one_line_error(cli(capsys, script), f"cannot reach the Hugging Face hub at http://127.0.0.1:{port}",
                              "refused", "use --dataset-path with local files")
    # a cached copy is pointed out
    (work / "data" / "microsoft___ms_marco" / "v1.1").mkdir(parents=True)
    assert_one_line_error(cli(capsys, TRIPLETS_SCRIPT), "set HF_HUB_OFFLINE=1 to use the copy cached in data")


def test_offline_mode_without_a_cache_fails_at_once(work, capsys, monkeypatch, no_datasets_download):
    for variable in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
        monkeypatch.setenv(variable, "1")
        assert_one_line_error(cli(capsys, CBOW_SCRIPT, *CBOW_TINY),
                              f"{variable} is set (no network) and microsoft/ms_marco v1.1 is not cached in data",
                              "--dataset-path")


def test_offline_mode_with_a_cache_reads_it(work, capsys, monkeypatch, rows_file):
    import datasets

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (work / "data" / "microsoft___ms_marco" / "v1.1").mkdir(parents=True)
    rows = [json.loads(line) for line in rows_file.read_text().splitlines()]
    calls = []

    def cached_copy(name, config, split, cache_dir):
        calls.append((name, config, split, cache_dir))
        return rows

    monkeypatch.setattr(datasets, "load_dataset", cached_copy)
    status, out, err = cli(capsys, TRIPLETS_SCRIPT, "--max-samples", "10")
    assert status == 0, err
    assert calls == [("microsoft/ms_marco", "v1.1", "train", "data")]
    assert "20 triplets from 10 queries" in out


def test_an_unreachable_hub_through_the_real_command_line(work):
    env_port = _closed_port()
    env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{env_port}", "MSMARCO_SEARCH_NO_PROGRESS": "1"}
    env.pop("HF_HUB_OFFLINE", None)
    env.pop("HF_DATASETS_OFFLINE", None)
    result = subprocess.run([sys.executable, str(ROOT / TRIPLETS_SCRIPT)], cwd=work, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: cannot reach the Hugging Face hub") and result.stderr.count("\n") == 1


# ------------------------------------------------------------------------------- outputs and caches


def test_unwritable_output_folders_are_refused_before_the_work(work, capsys, blocked, rows_file, trained_pipeline):
    assert_one_line_error(cli(capsys, CBOW_SCRIPT, "--dataset-path", rows_file, *CBOW_TINY, "-c", blocked),
                          "blocker/out: cannot write to this checkpoint folder")
    assert_one_line_error(cli(capsys, CBOW_SCRIPT, "--dataset-path", rows_file, *CBOW_TINY, "--data-dir", blocked),
                          "blocker/out: cannot write to this data folder")
    assert_one_line_error(cli(capsys, TRIPLETS_SCRIPT, "--dataset-path", rows_file, "--output-dir", blocked),
                          "blocker/out: cannot write to this output folder")
    result = cli(capsys, TRAIN_SCRIPT, trained_pipeline["triplets"], "--embeddings", trained_pipeline["embeddings"],
                 "--output-dir", blocked)
    assert_one_line_error(result, "blocker/out: cannot write to this output folder")
    assert "Training completed" not in result[1]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders; the blocked-path test covers it")
def test_a_read_only_output_folder_is_refused(work, capsys, rows_file):
    folder = work / "read-only"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        assert_one_line_error(cli(capsys, TRIPLETS_SCRIPT, "--dataset-path", rows_file, "--output-dir", folder),
                              "read-only: cannot write to this output folder", "ermission denied")
    finally:
        folder.chmod(0o700)


def test_damaged_token_caches_are_rebuilt_not_fatal(work, capsys, trained_pipeline, blocked):
    triplets_path = trained_pipeline["triplets"]
    # no held-out validation queries: the script's cache key is then the one this test rebuilds below
    args = (triplets_path, "--embeddings", trained_pipeline["embeddings"], "--no-save", "--batch-size", "512",
            "--validation-fraction", "0")
    assert cli(capsys, TRAIN_SCRIPT, *args)[0] == 0
    cache = next((work / "data").glob("triplet_tokens_*"))
    ids = np.load(cache / "queries.ids.npy")
    (cache / "queries.ids.npy").write_bytes(b"\x93NUMPY garbage" * 20)
    status, out, err = cli(capsys, TRAIN_SCRIPT, *args)
    assert status == 0, err
    assert "damaged token cache, rebuilding it" in err and "queries.ids.npy: not a readable .npy array" in err
    assert "Loading cached token arrays" not in out and "Training completed" in out

    # the other damages, through the function the script calls with the key the script uses
    _, vocab, _ = _load_embeddings(trained_pipeline["embeddings"])
    triplets = load_triplets(triplets_path)
    stat = triplets_path.stat()
    identity = f"{triplets_path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    damages = [
        (lambda: np.save(cache / "queries.ids.npy", np.full_like(ids, 10**6)), "outside the vocabulary"),
        (lambda: np.save(cache / "queries.ids.npy", ids[: len(ids) // 2]), "do not match their offsets"),
        (lambda: (cache / "positives.offsets.npy").unlink(), "positives.offsets.npy: file not found"),
    ]
    for damage, words in damages:
        damage()
        arrays = tokenise_triplets(triplets, vocab, 32, 128, cache_dir=work / "data", source_identity=identity)
        err = capsys.readouterr().err
        assert "damaged token cache, rebuilding it" in err and words in err, err
        assert np.array_equal(np.asarray(arrays.queries.ids), ids)
    tokenise_triplets(triplets, vocab, 32, 128, cache_dir=work / "data", source_identity=identity)
    assert "Loading cached token arrays" in capsys.readouterr().out

    # a cache folder that cannot be written only costs the cache
    status, out, err = cli(capsys, TRAIN_SCRIPT, *args, "--data-dir", blocked)
    assert status == 0 and "cannot cache the token arrays, going on without" in err


def test_a_damaged_cbow_corpus_cache_is_rebuilt(work, capsys, rows_file):
    assert cli(capsys, CBOW_SCRIPT, "--dataset-path", rows_file, *CBOW_TINY)[0] == 0
    corpus = next((work / "data").glob("cbow_corpus_*.txt"))
    text = corpus.read_text()
    corpus.write_text(text[: len(text) // 3])  # cut short, as by a full disk under an older version
    status, out, err = cli(capsys, CBOW_SCRIPT, "--dataset-path", rows_file, *CBOW_TINY)
    assert status == 0 and "does not match its record" in err and "Processed and cached" in out
    assert corpus.read_text() == text
    assert "Loading cached processed texts" in cli(capsys, CBOW_SCRIPT, "--dataset-path", rows_file, *CBOW_TINY)[1]


# ------------------------------------------------------------------------- atomic and concurrent writes


def test_a_failed_write_leaves_nothing_under_the_final_name(work, capsys, monkeypatch, rows_file, trained_pipeline):
    real_save = torch.save

    def interrupted_save(obj, path, *args, **kwargs):
        Path(path).write_bytes(b"PK\x03\x04 half a model")
        raise KeyboardInterrupt  # Ctrl-C in the middle of the write

    monkeypatch.setattr(torch, "save", interrupted_save)
    status, _, err = cli(capsys, TRAIN_SCRIPT, trained_pipeline["triplets"], "--embeddings",
                         trained_pipeline["embeddings"], "--output-dir", work / "models", "--batch-size", "512")
    assert status == 130 and err.strip() == "interrupted"
    assert list((work / "models").iterdir()) == []  # no model, no log, no temporary file, no claim marker

    def full_disk(obj, path, *args, **kwargs):
        Path(path).write_bytes(b"PK\x03\x04 a few bytes")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    assert_one_line_error(cli(capsys, CBOW_SCRIPT, "--dataset-path", rows_file, *CBOW_TINY, "-c", work / "ckpt"),
                          "ckpt/msmarco_word2vec.pt: cannot write (No space left on device)")
    assert list((work / "ckpt").iterdir()) == []
    monkeypatch.setattr(torch, "save", real_save)

    def failed_rename(source, target):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(atomic.os, "replace", failed_rename)
    assert_one_line_error(cli(capsys, TRIPLETS_SCRIPT, "--dataset-path", rows_file, "--output-dir", work / "out"),
                          ".pkl: cannot write (Input/output error)")
    assert list((work / "out").iterdir()) == []


def test_a_writer_killed_mid_write_leaves_nothing_under_the_final_name(work):
    final, ready = work / "model.pt", work / "ready"
    code = (f"import time\nfrom pathlib import Path\nfrom msmarco_search.io.atomic import atomic_write\n"
            f"def write(tmp):\n    with open(tmp, 'wb') as handle:\n        handle.write(b'x' * 4096)\n"
            f"        handle.flush()\n        Path({str(ready)!r}).touch()\n        time.sleep(60)\n"
            f"atomic_write({str(final)!r}, write)\n")
    writer = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and writer.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists(), "the writer never started writing"
    finally:
        writer.kill()  # SIGKILL: no handler, no cleanup runs
        writer.wait()
    assert not final.exists()
    assert [p.name.startswith(".model.pt.") for p in work.iterdir() if p.suffix == ".tmp"] == [True]


def test_two_runs_in_the_same_second_write_two_sets_of_files(work, monkeypatch, rows_file):
    class FrozenClock(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime(2026, 1, 2, 3, 4, 5)

    monkeypatch.setattr(outputs, "datetime", FrozenClock)
    from msmarco_search.cli import triplets as module  # where the script's main lives

    real_timestamped_path = module.timestamped_path
    both_ready = threading.Barrier(2, timeout=60)

    def at_the_same_time(*args, **kwargs):
        both_ready.wait()  # both runs pick their name together
        return real_timestamped_path(*args, **kwargs)

    monkeypatch.setattr(module, "timestamped_path", at_the_same_time)
    errors: list[BaseException] = []

    def run(seed: int) -> None:
        try:
            status = module.main(["--dataset-path", str(rows_file), "--seed", str(seed), "--negatives", "random"])
            assert status == 0, f"run {seed} exited {status}"
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(seed,)) for seed in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    files = {p.name for p in (work / "data").iterdir()}
    assert files == {"msmarco_triplets_1k_20260102_030405.pkl", "msmarco_triplets_1k_20260102_030405_1.pkl",
                     "msmarco_triplets_1k_20260102_030405_metadata.json",
                     "msmarco_triplets_1k_20260102_030405_1_metadata.json"}  # and no claim marker left
    for pickle_path in (work / "data").glob("*.pkl"):
        stored = load_pickle(pickle_path, KIND_TRIPLETS)["metadata"]
        assert json.loads(metadata_path(pickle_path).read_text())["seed"] == stored["seed"]
    assert {load_pickle(p, KIND_TRIPLETS)["metadata"]["seed"] for p in (work / "data").glob("*.pkl")} == {1, 2}


def test_atomic_write_refuses_a_folder_under_a_file(blocked):
    with pytest.raises(PipelineError, match="blocker/out: cannot write here"):
        atomic_write(blocked / "x.json", lambda tmp: tmp.write_text("{}"))


def test_tsv_folders_without_candidates_still_work_after_hardening(work, capsys, corpus):
    folder = write_tsv_folder(corpus, work / "plain", candidates=False)
    status, out, err = cli(capsys, TRIPLETS_SCRIPT, "--dataset-path", folder, "--negatives", "random")
    assert status == 0, err
    assert "triplets from" in out


def test_out_of_memory_and_ctrl_c_are_one_line(capsys):
    def too_big(argv):
        raise MemoryError

    def interrupted(argv):
        raise KeyboardInterrupt

    for main, status, line in [(too_big, 2, "error: out of memory; lower --batch-size, --vector-size or --max-samples"),
                               (interrupted, 130, "interrupted")]:
        with pytest.raises(SystemExit) as stop:
            run(main)
        assert stop.value.code == status
        assert capsys.readouterr().err.strip() == line


# =====================================================================================================
# Inputs the readers refuse or read right: qrels grades, row value types, repeated ids, CR-only line ends,
# and the triplets command's --output.
# =====================================================================================================

EVALUATE_SCRIPT = "evaluation/evaluate.py"


def _tiny_tsv_files(folder: Path, qrels: str) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "collection.tsv").write_text("10\tcat and dog\n11\tfish swim\n12\tbird song\n")
    (folder / "queries.tsv").write_text("1\tcat dog\n2\tfish\n")
    (folder / "qrels.txt").write_text(qrels)
    return ["--systems", "bm25", "--collection", str(folder / "collection.tsv"), "--queries",
            str(folder / "queries.tsv"), "--qrels", str(folder / "qrels.txt"), "--output-dir", str(folder / "out")]


def test_negative_and_huge_qrels_grades_through_the_evaluation_script(tmp_path):
    # query 2 is judged only -2 (spam, as in the TREC Web tracks): pytrec_eval segfaulted (exit 139) on it
    spam = run_script(EVALUATE_SCRIPT, *_tiny_tsv_files(tmp_path / "spam", "1 0 10 1\n2 0 11 -2\n2 0 12 -99\n"),
                      cwd=tmp_path, check=False)
    assert spam.returncode == 0, spam.stderr
    report = json.loads((tmp_path / "spam" / "out" / "evaluation.json").read_text())
    assert report["tasks"]["full"]["metrics"]["bm25"]["nDCG@10"] >= 0
    huge = run_script(EVALUATE_SCRIPT, *_tiny_tsv_files(tmp_path / "huge", "1 0 10 99999999999999999999\n"),
                      cwd=tmp_path, check=False)
    assert huge.returncode == 2 and "Traceback" not in huge.stderr, huge.stderr
    assert huge.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'huge' / 'qrels.txt'}: line 1: relevance 99999999999999999999 is too large "
        "(at most 2147483647)"]


def test_qrels_grades_negative_read_as_judged_not_relevant(tmp_path):
    from msmarco_search.io.msmarco_files import read_qrels

    path = tmp_path / "qrels.txt"
    path.write_text("1 0 a -2\n1 0 b +3\n1 0 c -99999999999999999999999\n2 Q0 d 0\n")
    assert read_qrels(path) == {"1": {"a": 0, "b": 3, "c": 0}, "2": {"d": 0}}
    for text, words in [("1 0 a 1_000\n", "relevance '1_000' is not an integer"),
                        ("1 0 a ١\n", "is not an integer"),
                        ("1 0 a 1\n1 0 a 2\n", "line 2 judges passage a for query 1 a second time")]:
        path.write_text(text)
        with pytest.raises(PipelineError, match=words):
            read_qrels(path)


def _write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _good_row(number: int, **passages) -> dict:
    return {"query": f"query {number}", "query_id": number,
            "passages": {"is_selected": [1, 0], "passage_text": [f"passage {number} a", f"passage {number} b"],
                         **passages}}


@pytest.mark.parametrize(("passages", "words"), [
    ({"is_selected": ["0", 1]}, "passages.is_selected[0] is string '0', expected 0 or 1"),
    ({"is_selected": [1, 2]}, "passages.is_selected[1] is number 2, expected 0 or 1"),
    ({"is_selected": [1, [0]]}, "passages.is_selected[1] is list [0], expected 0 or 1"),
    ({"passage_text": [None, "b"]}, "passages.passage_text[0] is null, expected text"),
    ({"passage_text": ["a", {"text": "b"}]}, "passages.passage_text[1] is object {'text': 'b'}, expected text"),
    ({"passage_id": ["p1", {"x": 1}]}, "passage ids[1] is object"),
    ({"passage_id": ["p1", True]}, "passage ids[1] is true/false True"),
])
def test_row_values_of_the_wrong_type_are_refused(work, capsys, passages, words):
    rows = _write_rows(work / "rows.jsonl", [_good_row(1), _good_row(2, **passages)])
    assert_one_line_error(cli(capsys, TRIPLETS_SCRIPT, "--dataset-path", rows, "--negatives", "random"),
                          "rows.jsonl (line 2): ", words)


def test_a_query_id_of_the_wrong_type_is_refused_and_good_values_pass(work, capsys):
    bad = _good_row(2)
    bad["query_id"] = {"id": 2}
    rows = _write_rows(work / "rows.jsonl", [_good_row(1), bad])
    assert_one_line_error(cli(capsys, TRIPLETS_SCRIPT, "--dataset-path", rows, "--negatives", "random"),
                          "rows.jsonl (line 2): query_id is object {'id': 2}, expected text")
    fine = _good_row(2, is_selected=[True, False], passage_id=["p1", 7])
    rows = _write_rows(work / "rows.jsonl", [_good_row(1), fine])
    status, _, err = cli(capsys, TRIPLETS_SCRIPT, "--dataset-path", rows, "--negatives", "random")
    assert status == 0, err


def test_row_values_of_the_wrong_type_in_parquet_are_refused(work, capsys):
    import pyarrow
    import pyarrow.parquet as pq

    table = pyarrow.Table.from_pylist([_good_row(1), _good_row(2, passage_text=[None, "b"])])
    pq.write_table(table, work / "rows.parquet")
    assert_one_line_error(cli(capsys, TRIPLETS_SCRIPT, "--dataset-path", work / "rows.parquet", "--negatives",
                              "random"), "rows.parquet (row 2): passages.passage_text[0] is null")


def test_repeated_ids_are_refused_naming_the_id_and_lines(work, capsys, corpus):
    rows = _write_rows(work / "rows.jsonl", [_good_row(1), _good_row(2), _good_row(1)])
    assert_one_line_error(cli(capsys, TRIPLETS_SCRIPT, "--dataset-path", rows, "--negatives", "random"),
                          "rows.jsonl (line 3): repeats query id 1 of", "rows.jsonl (line 1)")

    folder = write_tsv_folder(corpus, work / "tsv")
    queries = folder / "queries.train.tsv"
    queries.write_text(queries.read_text() + "\n0\tthe same id again\n")
    assert_one_line_error(cli(capsys, TRIPLETS_SCRIPT, "--dataset-path", folder),
                          f"queries.train.tsv: line {len(corpus.queries) + 2} repeats the query id 0 of line 1")

    folder = write_tsv_folder(corpus, work / "tsv2")
    top = folder / "top1000.train.tsv"
    first = top.read_text().splitlines()[0]
    top.write_text(top.read_text() + first + "\n")
    assert_one_line_error(cli(capsys, TRIPLETS_SCRIPT, "--dataset-path", folder),
                          "top1000.train.tsv: line", "repeats the query and passage id", "of line 1")

    folder = write_tsv_folder(corpus, work / "tsv3", candidates=False)
    collection = folder / "collection.tsv"
    pid = (folder / "qrels.train.tsv").read_text().split()[2]
    collection.write_text(collection.read_text() + f"{pid}\tanother text under a relevant id\n")
    assert_one_line_error(cli(capsys, TRIPLETS_SCRIPT, "--dataset-path", folder, "--negatives", "random"),
                          f"collection.tsv: passage id {pid} repeats in the collection")


def test_the_tsv_reader_one_rule(tmp_path):
    from msmarco_search.io.msmarco_files import iter_tsv_lines, read_collection

    path = tmp_path / "collection.tsv"
    path.write_bytes("\ufeff1\tone\ttab inside\r\n\n2\tcarriage \r inside\n3\tlast, no newline".encode())
    assert list(read_collection(path)) == [["1", "one\ttab inside"], ["2", "carriage \r inside"],
                                           ["3", "last, no newline"]]
    with_offsets = list(read_collection(path, with_offsets=True))
    assert [fields for _, fields in with_offsets] == list(read_collection(path))
    with open(path, "rb") as handle:  # what a search index does with an offset: one seek, one line
        for offset, (pid, _) in with_offsets:
            handle.seek(offset)
            assert handle.readline().decode("utf-8").lstrip("\ufeff").startswith(pid + "\t")
    path.write_bytes(b"1\tone\n\n2\n")
    with pytest.raises(PipelineError, match="line 3 has 1 tab-separated field"):
        list(iter_tsv_lines(path, 2, "collection"))
    path.write_bytes(b"1\ta\n\n2\tb\n1\tc\n")
    with pytest.raises(PipelineError, match="line 4 repeats the passage id 1 of line 1"):
        list(read_collection(path, unique=True))
    assert len(list(read_collection(path))) == 3  # streamed without the check: memory stays flat


def test_cr_only_line_ends_are_refused_in_tsvs_and_read_in_qrels(work, capsys, corpus):
    folder = write_tsv_folder(corpus, work / "tsv")
    queries = folder / "queries.train.tsv"
    queries.write_bytes(queries.read_bytes().replace(b"\n", b"\r"))
    assert_one_line_error(cli(capsys, TRIPLETS_SCRIPT, "--dataset-path", folder),
                          "queries.train.tsv: has CR-only line ends", "convert them to LF")
    folder = write_tsv_folder(corpus, work / "tsv2")
    qrels = folder / "qrels.train.tsv"
    qrels.write_bytes(qrels.read_bytes().replace(b"\n", b"\r"))
    status, out, err = cli(capsys, TRIPLETS_SCRIPT, "--dataset-path", folder)
    assert status == 0, err
    assert f"from {len(corpus.queries)} queries" in out


def test_triplets_output_file_and_sensible_names(work, capsys, rows_file):
    from msmarco_search.data.triplets import triplets_prefix

    assert [triplets_prefix(n) for n in (53, 499, 500, 1000, 1499, 1500, 50000)] == [
        "msmarco_triplets_1k", "msmarco_triplets_1k", "msmarco_triplets_1k", "msmarco_triplets_1k",
        "msmarco_triplets_1k", "msmarco_triplets_2k", "msmarco_triplets_50k"]
    target = work / "out" / "judged.pkl"
    status, out, err = cli(capsys, TRIPLETS_SCRIPT, "--dataset-path", rows_file, "--output", target)
    assert status == 0, err
    assert sorted(p.name for p in target.parent.iterdir()) == ["judged.pkl", "judged_metadata.json"]
    assert len(load_triplets(target)) == json.loads((work / "out" / "judged_metadata.json").read_text())[
        "num_triplets"]
    assert not (work / "data").exists() or not list((work / "data").glob("msmarco_triplets_*"))
    assert_one_line_error(cli(capsys, TRIPLETS_SCRIPT, "--dataset-path", rows_file, "--output", work / "out"),
                          "out: is a folder; --output names the triplets file itself")
    assert_usage_error(cli(capsys, TRIPLETS_SCRIPT, "--output", target, "--output-dir", work),
                       "not allowed with argument")


def test_the_triplets_command_is_importable_and_ends_with_its_status(work, capsys, rows_file):
    from msmarco_search.cli.triplets import main

    assert main(["--dataset-path", str(rows_file), "--output", str(work / "t.pkl")]) == 0
    with pytest.raises(PipelineError, match="missing.jsonl: not found; "):  # and what its folder holds
        main(["--dataset-path", str(work / "missing.jsonl")])
    with pytest.raises(SystemExit) as stop:
        main(["--help"])
    assert stop.value.code == 0


def test_min_relevance_must_be_at_least_1(work, capsys):
    assert_usage_error(cli(capsys, TRIPLETS_SCRIPT, "--min-relevance", "0"), "--min-relevance",
                       "must be a positive number, got 0")


def test_rows_with_a_byte_order_mark_and_typed_datasets_folders(work, capsys):
    rows = work / "rows.jsonl"
    rows.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(_good_row(n)) + "\n" for n in (1, 2)).encode())
    status, out, err = cli(capsys, TRIPLETS_SCRIPT, "--dataset-path", rows, "--negatives", "random")
    assert status == 0 and "from 2 queries" in out, err
    listed = work / "rows.json"  # one JSON list, with the mark too
    listed.write_bytes(b"\xef\xbb\xbf" + json.dumps([_good_row(1), _good_row(2)]).encode())
    status, _, err = cli(capsys, TRIPLETS_SCRIPT, "--dataset-path", listed, "--negatives", "random")
    assert status == 0, err
    import datasets

    typed = [_good_row(1, is_selected=["1", "0"]), _good_row(2, is_selected=["0", "1"])]
    datasets.Dataset.from_list(typed).save_to_disk(str(work / "disk"))
    capsys.readouterr()  # datasets' own progress bar while saving the fixture
    assert_one_line_error(cli(capsys, TRIPLETS_SCRIPT, "--dataset-path", work / "disk", "--negatives", "random"),
                          "disk (row 1): passages.is_selected[0] is string '1', expected 0 or 1")
    repeated = [_good_row(1), _good_row(2), _good_row(2)]
    datasets.Dataset.from_list(repeated).save_to_disk(str(work / "disk2"))
    capsys.readouterr()
    assert_one_line_error(cli(capsys, TRIPLETS_SCRIPT, "--dataset-path", work / "disk2", "--negatives", "random"),
                          "disk2 (row 3): repeats query id 2 of", "disk2 (row 2)")
