"""Outputs through the command line: a command replaces only its own kind of earlier output, never one of its
inputs, claims what it writes against a concurrent run (a claim whose process is gone is taken over), and
writes a file and the record that describes it so that a reader never trusts a record of another file.

The rule lives in one place (``msmarco_search.io.outputs.check_output`` / ``claim_output`` / ``StagedFolder``);
these tests go through each command that writes (docs/reliability.md, "Outputs, caches, interruptions").
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
import torch
from conftest import (
    CBOW_SCRIPT,
    CBOW_TINY,
    ROOT,
    SEARCH_SCRIPT,
    TRAIN_SCRIPT,
    TRIPLETS_SCRIPT,
    assert_one_line_error,
    claim_held_by_another_process,
    cli,
    run_main,
)

from msmarco_search.data.triplets import load_triplets, metadata_path
from msmarco_search.io import outputs
from msmarco_search.io.records import load_side_record
from msmarco_search.training.model_file import load_model

EVALUATE = "evaluation/evaluate.py"
AVERAGE = "training/average_two_tower_models.py"
EXPORT = "training/export_sentence_transformers.py"


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` and its bytes: what must come out of a refused command unchanged."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def no_claims_left(folder: Path) -> None:
    assert not [p.name for p in folder.rglob(".*.claim")], "a claim marker was left behind"


# ---------------------------------------------------------------------------------------------- class 1


def test_an_index_replaces_only_an_earlier_index(work, capsys, trained_pipeline, tsv_folder):
    model_dir = work / "models"
    model_dir.mkdir()
    model = model_dir / "M.pt"
    shutil.copy(trained_pipeline["model"], model)
    (model_dir / "notes.txt").write_text("the user's notes\n")
    collection = tsv_folder / "collection.tsv"
    before = snapshot(model_dir)
    # the model's own folder as --index-dir
    result = run_main(capsys, SEARCH_SCRIPT, "index", model, "--index-dir", model_dir, "--dataset-path", collection,
                      "--no-bm25", cwd=work, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip() == (f"error: {model_dir}: holds an input of this run ({model}); write the search "
                                     "index elsewhere")
    assert snapshot(model_dir) == before
    # a folder of other files
    other = work / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine\n")
    assert_one_line_error(cli(capsys, SEARCH_SCRIPT, "index", model, "--index-dir", other, "--dataset-path",
                              collection, "--no-bm25"),
                          "other: exists and is not an earlier search index (it has no readable manifest.json)")
    assert snapshot(other) == {"keep.txt": b"mine\n"}
    # a file there
    assert_one_line_error(cli(capsys, SEARCH_SCRIPT, "index", model, "--index-dir", other / "keep.txt",
                              "--dataset-path", collection), "keep.txt: exists and is not a folder")
    # an earlier index is replaced, but not once a file of someone else's is put into it
    index = work / "index"
    assert cli(capsys, SEARCH_SCRIPT, "index", model, "--index-dir", index, "--dataset-path", collection,
               "--no-bm25")[0] == 0
    assert cli(capsys, SEARCH_SCRIPT, "index", model, "--index-dir", index, "--dataset-path", collection)[0] == 0
    (index / "run.trec").write_text("q1 Q0 d1 1 1.0 mine\n")
    built = snapshot(index)
    assert_one_line_error(cli(capsys, SEARCH_SCRIPT, "index", model, "--index-dir", index, "--dataset-path",
                              collection), "index: exists and is not an earlier search index (it also holds run.trec,"
                                           " which no index writes)")
    assert snapshot(index) == built
    # the collection read from inside the folder the index would replace
    inside = work / "inside"
    inside.mkdir()
    shutil.copy(collection, inside / "collection.tsv")
    assert_one_line_error(cli(capsys, SEARCH_SCRIPT, "index", model, "--index-dir", inside, "--dataset-path",
                              inside / "collection.tsv"), "inside: holds an input of this run")
    assert (inside / "collection.tsv").read_bytes() == collection.read_bytes()
    no_claims_left(work)


def test_a_run_file_replaces_only_an_earlier_run(work, capsys, search_setup):
    folder = search_setup["folder"]
    model, queries, index = search_setup["model"], folder / "queries.tsv", search_setup["index"]
    guarded = [model, queries, folder / "collection.tsv", index / "ids.npy", index / "manifest.json"]
    before = {path: path.read_bytes() for path in guarded}
    for target, words in [(model, "is an input of this run"), (queries, "is an input of this run"),
                          (folder / "collection.tsv", "exists and is not an earlier TREC run (its first line is not "
                                                      "'qid Q0 docid rank score tag')"),
                          (index / "ids.npy", "exists and is not an earlier TREC run"),
                          (index / "manifest.json", "exists and is not an earlier TREC run")]:
        assert_one_line_error(cli(capsys, SEARCH_SCRIPT, "query", model, "--queries", queries, "--run-file", target,
                                  "-k", "2"), f"{target.name}: {words}")
    assert {path: path.read_bytes() for path in guarded} == before
    run = work / "run.trec"
    assert cli(capsys, SEARCH_SCRIPT, "query", model, "--queries", queries, "--run-file", run, "-k", "2")[0] == 0
    first = run.read_text()
    assert cli(capsys, SEARCH_SCRIPT, "query", model, "--queries", queries, "--run-file", run, "-k", "3",
               "--tag", "again")[0] == 0  # an earlier run is replaced
    assert run.read_text() != first and run.read_text().split("\n")[0].endswith(" again")
    empty = work / "empty.trec"
    empty.touch()  # nothing to lose: an empty file (mktemp's) is written
    assert cli(capsys, SEARCH_SCRIPT, "query", model, "--queries", queries, "--run-file", empty, "-k", "1")[0] == 0
    with claim_held_by_another_process(run) as holder:  # another query writing this run now
        assert_one_line_error(cli(capsys, SEARCH_SCRIPT, "query", model, "--queries", queries, "--run-file", run),
                              f"run.trec: another run (process {holder.pid}) is writing this TREC run now")
    # that run was killed: its marker is taken over by the next query, which removes it when done
    assert cli(capsys, SEARCH_SCRIPT, "query", model, "--queries", queries, "--run-file", run, "-k", "1")[0] == 0
    no_claims_left(work)


def _official(tsv_folder: Path) -> list[object]:
    return ["--systems", "bm25", "--collection", tsv_folder / "collection.tsv", "--queries",
            tsv_folder / "queries.train.tsv", "--qrels", tsv_folder / "qrels.train.tsv", "--max-queries", "20"]


def test_a_second_evaluation_into_one_folder_at_once_is_refused(work, capsys, tsv_folder):
    out = work / "out"
    out.mkdir()
    with claim_held_by_another_process(out / "evaluation.json") as holder:  # a first evaluation, still running
        result = cli(capsys, EVALUATE, *_official(tsv_folder), "--output-dir", out)
        assert_one_line_error(result, f"evaluation.json: another run (process {holder.pid}) is writing this "
                                      "evaluation record now; wait for it to finish, or choose another --output-dir")
        assert "over" not in result[1] and not (out / "evaluation.json").exists()  # refused before the work
    # the first one was killed: its marker stays, nothing holds it, and the next evaluation takes it over
    assert (out / ".evaluation.json.claim").exists()
    status, out_text, err = cli(capsys, EVALUATE, *_official(tsv_folder), "--output-dir", out)
    assert status == 0, err
    assert json.loads((out / "evaluation.json").read_text())["tasks"]
    no_claims_left(work)


def test_evaluation_replaces_only_its_own_files_and_never_leaves_an_earlier_record_beside_new_runs(
        work, capsys, tsv_folder, monkeypatch):
    out = work / "out"
    out.mkdir()
    (out / "evaluation.json").write_text('{"mine": true}\n')  # someone's JSON of that name
    assert_one_line_error(cli(capsys, EVALUATE, *_official(tsv_folder), "--output-dir", out, "--overwrite"),
                          "evaluation.json: exists and is not an earlier evaluation record")
    (out / "evaluation.json").unlink()
    (out / "run.full.bm25.trec").write_text("not a run\n")  # a file named as a run file is
    assert_one_line_error(cli(capsys, EVALUATE, *_official(tsv_folder), "--output-dir", out),
                          "run.full.bm25.trec: exists and is not an earlier TREC run")
    assert (out / "run.full.bm25.trec").read_text() == "not a run\n"
    (out / "run.full.bm25.trec").unlink()
    assert cli(capsys, EVALUATE, *_official(tsv_folder), "--output-dir", out)[0] == 0
    assert sorted(p.name for p in out.iterdir()) == ["evaluation.json", "run.full.bm25.trec"]

    # --overwrite, interrupted once the new run file is written: the earlier record is gone first, so the folder
    # never shows it beside the new run (a reader would take the run for the record's)
    from msmarco_search.cli import evaluate as module

    real_write_run = module.write_run

    def write_then_stop(*args, **kwargs):
        real_write_run(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "write_run", write_then_stop)
    status, _, err = cli(capsys, EVALUATE, *_official(tsv_folder), "--output-dir", out, "--overwrite",
                         "--max-queries", "10")
    assert status == 130 and err.strip() == "interrupted"
    assert sorted(p.name for p in out.iterdir()) == ["run.full.bm25.trec"]
    assert len({line.split()[0] for line in (out / "run.full.bm25.trec").read_text().splitlines()}) == 10
    no_claims_left(work)


def test_triplets_average_and_training_replace_only_their_own_kind(work, capsys, trained_pipeline, rows_file):
    triplets = work / "t.pkl"
    made = cli(capsys, TRIPLETS_SCRIPT, "--dataset-path", rows_file, "--max-samples", "40", "--output", triplets)
    assert made[0] == 0, made
    before = triplets.read_bytes()
    # --include X --output X: the run's own input replaced by its output
    assert_one_line_error(cli(capsys, TRIPLETS_SCRIPT, "--dataset-path", rows_file, "--max-samples", "40",
                              "--include", triplets, "--output", triplets), "t.pkl: is an input of this run")
    # a pickle of another kind (a gensim model, another program's) is not triplets
    model = trained_pipeline["model"]
    shutil.copy(model, work / "m.pt")
    assert_one_line_error(cli(capsys, TRIPLETS_SCRIPT, "--dataset-path", rows_file, "--max-samples", "40",
                              "--output", work / "m.pt"),
                          "m.pt: exists and is not an earlier triplets file (it holds a two-tower-model file)")
    assert triplets.read_bytes() == before and (work / "m.pt").read_bytes() == model.read_bytes()
    # --overwrite replaces an earlier model only: not the triplets, not an input
    assert_one_line_error(cli(capsys, AVERAGE, model, model, "--output", triplets, "--overwrite"),
                          "t.pkl: exists and is not an earlier two-tower model (it holds a msmarco-triplets file)")
    assert_one_line_error(cli(capsys, AVERAGE, work / "m.pt", model, "--output", work / "m.pt", "--overwrite"),
                          "m.pt: is an input of this run")
    assert triplets.read_bytes() == before
    quick = [triplets, "--embeddings", trained_pipeline["embeddings"], "--max-steps", "2",
             "--validation-fraction", "0"]
    (work / "notes.txt").write_text("the user's notes\n")
    assert_one_line_error(cli(capsys, TRAIN_SCRIPT, *quick, "--output", work / "notes.txt", "--overwrite"),
                          "notes.txt: exists and is not an earlier two-tower model")
    # the log beside a new model's name is someone else's JSON: it would be replaced by the training log
    (work / "new_training_log.json").write_text('{"mine": 1}\n')
    assert_one_line_error(cli(capsys, TRAIN_SCRIPT, *quick, "--output", work / "new.pt"),
                          "new_training_log.json: exists and is not an earlier training log")
    assert not (work / "new.pt").exists() and (work / "notes.txt").read_text() == "the user's notes\n"
    assert (work / "new_training_log.json").read_text() == '{"mine": 1}\n'
    no_claims_left(work)


def test_cbow_replaces_only_its_own_files_and_never_its_resumed_model(work, capsys, rows_file, trained_pipeline):
    ckpt = work / "ckpt"
    ckpt.mkdir()
    shutil.copy(trained_pipeline["model"], ckpt / "msmarco_word2vec.pt")  # a model under the embeddings' name
    assert_one_line_error(cli(capsys, CBOW_SCRIPT, "--dataset-path", rows_file, *CBOW_TINY, "-c", ckpt),
                          "msmarco_word2vec.pt: exists and is not an earlier CBOW embeddings file (it holds a "
                          "two-tower-model file)")
    assert (ckpt / "msmarco_word2vec.pt").read_bytes() == trained_pipeline["model"].read_bytes()
    (ckpt / "msmarco_word2vec.pt").unlink()
    assert cli(capsys, CBOW_SCRIPT, "--dataset-path", rows_file, *CBOW_TINY, "-c", ckpt, "--save-gensim-model",
               "--no-word-benchmarks")[0] == 0
    gensim_model = ckpt / "msmarco_word2vec.gensim"
    saved = gensim_model.read_bytes()
    # continuing the gensim model into its own name: the input would be replaced by its continuation
    assert_one_line_error(cli(capsys, CBOW_SCRIPT, "--dataset-path", rows_file, *CBOW_TINY, "-c", ckpt,
                              "--resume-from", gensim_model, "--save-gensim-model"),
                          "msmarco_word2vec.gensim: is an input of this run")
    assert gensim_model.read_bytes() == saved
    # the earlier CBOW files are replaced, as always
    assert cli(capsys, CBOW_SCRIPT, "--dataset-path", rows_file, *CBOW_TINY, "-c", ckpt, "--resume-from",
               gensim_model, "--no-word-benchmarks")[0] == 0
    no_claims_left(work)


def test_an_export_claims_its_folder(work, capsys, trained_pipeline):
    out = work / "export"
    with claim_held_by_another_process(out) as holder:  # another export writing this folder now
        assert_one_line_error(cli(capsys, EXPORT, trained_pipeline["model"], "--output-dir", out),
                              f"export: another run (process {holder.pid}) is writing this sentence-transformers "
                              "export now")
    assert not out.exists()


def test_odd_output_paths_are_one_line(work, capsys, trained_pipeline, rows_file, tsv_folder):
    model = work / "m.pt"
    shutil.copy(trained_pipeline["model"], model)
    long = "x" * 300  # longer than a file name may be
    os.mkfifo(work / "fifo")
    # "." and "/" as --index-dir, a name too long for the file system, a FIFO, a folder where a file goes
    result = run_main(capsys, SEARCH_SCRIPT, "index", model, "--index-dir", ".", "--dataset-path",
                      tsv_folder / "collection.tsv", cwd=work, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip() == (f"error: {work}: holds an input of this run ({model}); write the search index "
                                     "elsewhere")
    for args, words in [
        ((SEARCH_SCRIPT, "index", model, "--index-dir", "/", "--dataset-path", tsv_folder / "collection.tsv"),
         "/: is the root of the file system"),
        ((CBOW_SCRIPT, "--dataset-path", rows_file, *CBOW_TINY, "-c", long), "cannot write here (File name too long)"),
        ((TRIPLETS_SCRIPT, "--dataset-path", rows_file, "--output", long), "cannot write here (File name too long)"),
        ((TRIPLETS_SCRIPT, "--dataset-path", rows_file, "--output", work / "fifo"),
         "fifo: exists and is not a regular file; --output names the file to write (a triplets file)"),
        ((AVERAGE, model, model, "--output", "."), f"{work}: is a folder; --output names the model file to write"),
        ((EXPORT, model, "--output-dir", long), "cannot write here (File name too long)"),
        ((EVALUATE, *_official(tsv_folder), "--output-dir", "/"), "/: is the root of the file system"),
    ]:
        assert_one_line_error(cli(capsys, *args), words)
    # a link to an earlier index: the index is rebuilt where the link points, and the link stays
    assert cli(capsys, SEARCH_SCRIPT, "index", model, "--dataset-path", tsv_folder / "collection.tsv",
               "--no-bm25")[0] == 0
    (work / "link").symlink_to("m_index")
    assert cli(capsys, SEARCH_SCRIPT, "index", model, "--index-dir", work / "link", "--dataset-path",
               tsv_folder / "collection.tsv")[0] == 0
    assert (work / "link").is_symlink() and (work / "m_index" / "bm25").is_dir()
    no_claims_left(work)


def test_a_second_main_job_in_the_same_second_takes_another_stamp(work, capsys, monkeypatch, rows_file):
    class FrozenClock(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime(2026, 1, 2, 3, 4, 5)

    monkeypatch.setattr(outputs, "datetime", FrozenClock)
    from msmarco_search.cli import pipeline

    stamps = []
    monkeypatch.setattr(pipeline, "run_stages", lambda workflow, evaluation: stamps.append(workflow.stamp) or "m")
    (work / "checkpoints").mkdir()
    # every file of a job carries its stamp: a job already running with it holds the stamp's claim
    with claim_held_by_another_process(work / "checkpoints" / "pipeline_20260102_030405"):
        assert pipeline.main(["100", "--dataset-path", str(rows_file), "--seeds", "1"]) == 0
    assert stamps == ["20260102_030405_1"]
    assert not (work / "checkpoints" / ".pipeline_20260102_030405_1.claim").exists()  # its own claim is dropped


# ---------------------------------------------------------------------------------------------- class 3: claims


def _wait_for(path: Path, process: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert path.exists(), f"{path} never appeared (the process exited {process.poll()})"


@pytest.mark.slow
@pytest.mark.parametrize("named", [True, False], ids=["output", "timestamped"])
def test_a_killed_training_leaves_a_claim_that_the_rerun_and_resume_take_over(work, capsys, trained_pipeline,
                                                                              named):
    common = [trained_pipeline["triplets"], "--embeddings", trained_pipeline["embeddings"], "--epochs", "1000",
              "--checkpoint-every", "3", "--validation-fraction", "0"]
    where = ["--output", work / "out" / "m.pt"] if named else ["--output-dir", work / "out"]
    env = {**os.environ, "MSMARCO_SEARCH_NO_PROGRESS": "1"}
    training = subprocess.Popen([sys.executable, str(ROOT / TRAIN_SCRIPT), *map(str, common + where)], cwd=work,
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        states = (work / "out").glob("*_training_state.pt")
        deadline = time.monotonic() + 180
        while not list(states) and training.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
            states = (work / "out").glob("*_training_state.pt")
        state = next((work / "out").glob("*_training_state.pt"))
        model = state.with_name(state.name.replace("_training_state.pt", ".pt"))
        if named:  # while it runs, a second run into the same --output is refused
            assert_one_line_error(cli(capsys, TRAIN_SCRIPT, *common, "--max-steps", "1", *where, "--overwrite"),
                                  f"m.pt: another run (process {training.pid}) is writing this two-tower model now")
    finally:
        training.send_signal(signal.SIGKILL)
        training.wait(timeout=60)
    marker = model.with_name(f".{model.name}.claim")
    assert marker.exists() and not model.exists()  # the killed run's claim is left behind
    assert marker.read_text().strip() == str(training.pid)
    if named:  # the rerun is told about the state (not blocked by the claim) ...
        assert_one_line_error(cli(capsys, TRAIN_SCRIPT, *common, *where),
                              f"an interrupted run's training state is here; continue it with --resume {state}")
    # ... and --resume takes the claim over and finishes under the interrupted run's name
    status, out, err = cli(capsys, TRAIN_SCRIPT, *common, "--max-steps", "1", *where, "--resume", state)
    assert status == 0, err
    assert f"Saved model to {model}" in out
    assert load_model(model).metadata["model_id"]
    assert not marker.exists() and not state.exists()


# ---------------------------------------------------------------------------------------------- class 3: pairs


def _interrupt_after_main_file(monkeypatch, module) -> None:
    """Make ``module``'s ``save_side_record`` stop the run as Ctrl-C would, once the main file is written."""

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "save_side_record", stop)


def test_triplets_beside_the_metadata_of_other_triplets_are_not_described_by_it(work, capsys, monkeypatch,
                                                                                  rows_file, trained_pipeline):
    from msmarco_search.cli import triplets as module

    triplets = work / "t.pkl"
    common = ["--dataset-path", rows_file, "--max-samples", "60", "--output", triplets]
    assert cli(capsys, TRIPLETS_SCRIPT, *common, "--seed", "1")[0] == 0
    old_metadata = metadata_path(triplets).read_text()
    with monkeypatch.context() as patch:
        _interrupt_after_main_file(patch, module)
        status, _, err = cli(capsys, TRIPLETS_SCRIPT, "--mode", "ict", *common, "--seed", "2")
    assert status == 130 and err.strip() == "interrupted"
    # what a kill between the two writes leaves: the new triplets beside the earlier metadata
    assert metadata_path(triplets).read_text() == old_metadata
    assert json.loads(old_metadata)["mode"] == "queries" and len(load_triplets(triplets)) > 0
    record, why = load_side_record(metadata_path(triplets), triplets)
    assert record is None and "describes another t.pkl than the one there" in why
    # the training that reads them does not record the earlier triplets' source as theirs
    status, _, err = cli(capsys, TRAIN_SCRIPT, triplets, "--embeddings", trained_pipeline["embeddings"],
                         "--max-steps", "2", "--validation-fraction", "0", "--output", work / "m.pt")
    assert status == 0, err
    assert "warning: " in err and "t_metadata.json: describes another t.pkl than the one there" in err
    assert load_model(work / "m.pt").metadata["trained_on"]["triplets_mode"] is None
    # written whole, the pair matches again
    assert cli(capsys, TRIPLETS_SCRIPT, *common, "--seed", "3")[0] == 0
    assert load_side_record(metadata_path(triplets), triplets)[0]["seed"] == 3


def test_a_model_beside_the_log_of_another_model_is_not_described_by_it(work, capsys, monkeypatch,
                                                                          trained_pipeline):
    from msmarco_search.cli import train as module

    model = work / "m.pt"
    common = [trained_pipeline["triplets"], "--embeddings", trained_pipeline["embeddings"], "--max-steps", "2",
              "--validation-fraction", "0", "--output", model]
    assert cli(capsys, TRAIN_SCRIPT, *common)[0] == 0
    log = model.with_name("m_training_log.json")
    assert load_side_record(log, model)[0]["arguments"]["seed"] == 42
    with monkeypatch.context() as patch:
        _interrupt_after_main_file(patch, module)
        status, _, err = cli(capsys, TRAIN_SCRIPT, *common, "--overwrite", "--seed", "7")
    assert status == 130, err
    assert load_model(model).metadata["training"]["arguments"]["seed"] == 7  # the new model ...
    assert json.loads(log.read_text())["arguments"]["seed"] == 42  # ... beside the earlier log
    record, why = load_side_record(log, model)
    assert record is None and "describes another m.pt" in why
    no_claims_left(work)


def test_a_gensim_model_beside_the_record_of_another_is_not_described_by_it(work, capsys, monkeypatch, rows_file):
    from msmarco_search.embeddings import cbow as module

    ckpt = ["-c", work / "ckpt", "--save-gensim-model", "--no-word-benchmarks"]
    assert cli(capsys, CBOW_SCRIPT, "--dataset-path", rows_file, *CBOW_TINY, *ckpt)[0] == 0
    gensim_model = work / "ckpt" / "msmarco_word2vec.gensim"
    with monkeypatch.context() as patch:
        _interrupt_after_main_file(patch, module)
        status, _, err = cli(capsys, CBOW_SCRIPT, "--dataset-path", rows_file, *CBOW_TINY, *ckpt, "--stemmer",
                             "english")
    assert status == 130, err
    # the stemmed model beside the record that says "none": the record no longer describes it, so the stemmer
    # given is taken (with a warning), not refused against the earlier model's
    assert json.loads(gensim_model.with_name("msmarco_word2vec.gensim.json").read_text())["stemmer"] == "none"
    status, _, err = cli(capsys, CBOW_SCRIPT, "--dataset-path", rows_file, *CBOW_TINY, "-c", work / "next",
                         "--resume-from", gensim_model, "--stemmer", "english", "--no-word-benchmarks")
    assert status == 0, err
    assert "msmarco_word2vec.gensim.json: does not describe msmarco_word2vec.gensim as it is now" in err
    assert torch.load(work / "next" / "msmarco_word2vec.pt", weights_only=True)["stemmer"] == "english"


def test_benchmark_outputs_replace_nothing_of_another_kind(work, capsys, trained_pipeline):
    data = work / "rows.jsonl"
    data.write_text('{"query": "mine"}\n')
    assert_one_line_error(cli(capsys, "benchmarks/make_dataset.py", "--size", "3", "--synthetic", "--output", data),
                          "rows.jsonl: already exists, and this script replaces no file")
    assert data.read_text() == '{"query": "mine"}\n'
    made = cli(capsys, "benchmarks/make_dataset.py", "--size", "3", "--synthetic", "--output", work / "new.jsonl")
    assert made[0] == 0, made
    assert len((work / "new.jsonl").read_text().splitlines()) == 3
    notes = work / "notes.json"
    notes.write_text('{"mine": 1}\n')
    assert_one_line_error(cli(capsys, "benchmarks/train_throughput.py", "--triplets", trained_pipeline["triplets"],
                              "--embeddings", trained_pipeline["embeddings"], "--json", notes),
                          "notes.json: exists and is not an earlier throughput record")
    assert notes.read_text() == '{"mine": 1}\n'
    no_claims_left(work)
