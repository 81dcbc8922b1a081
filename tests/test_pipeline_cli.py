"""The three stages run through their command lines, the way a user runs them."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    CBOW_SCRIPT,
    SHARED_DATA,
    TRAIN_SCRIPT,
    TRIPLETS_SCRIPT,
    claim_held_by_another_process,
    run_main,
    run_script,
)

from msmarco_search.data.triplets import load_triplets, metadata_path
from msmarco_search.data.vocab import Vocabulary, vocabulary_fingerprint
from msmarco_search.embeddings.cbow import load_embeddings
from msmarco_search.training.config import TwoTowerConfig
from msmarco_search.training.model import TwoTowerModel
from msmarco_search.training.model_file import load_model


@pytest.mark.slow
def test_cbow_writes_a_safe_embeddings_file_and_reuses_its_cache(tmp_path, rows_file, capsys):
    first = run_script(CBOW_SCRIPT, "--dataset-path", rows_file, "--min-count", "1", "--vector-size", "16",
                       "--epochs", "2", "-c", tmp_path / "ckpt", cwd=tmp_path)
    assert "Processed and cached" in first.stdout
    assert "=== Model Statistics ===" in first.stdout and "Embedding dimension: 16" in first.stdout
    data = torch.load(tmp_path / "ckpt" / "msmarco_word2vec.pt", weights_only=True)
    assert data["index_to_word"][:2] == ["<pad>", "<unk>"]
    assert data["embeddings"].shape == (len(data["index_to_word"]), 16)
    assert data["word_to_index"]["ask0x1"] == data["index_to_word"].index("ask0x1")
    assert torch.all(data["embeddings"][0] == 0)

    # the reruns go through the same script's main in this process (a fresh interpreter costs seconds of imports)
    second = run_main(capsys, CBOW_SCRIPT, "--dataset-path", rows_file, "--min-count", "1", "--vector-size", "16",
                      "--epochs", "2", "-c", tmp_path / "ckpt", cwd=tmp_path)
    assert "Loading cached processed texts" in second.stdout

    other = run_main(capsys, CBOW_SCRIPT, "--dataset-path", rows_file, "--max-samples", "50", "--min-count", "1",
                     "--vector-size", "16", "--epochs", "1", "-c", tmp_path / "ckpt", cwd=tmp_path)
    assert "Loading cached processed texts" not in other.stdout
    assert len(list((tmp_path / "data").glob("cbow_corpus_*.txt"))) == 2


def test_stemmed_vectors_give_a_model_that_stems_what_it_reads(tmp_path, capsys):
    """CBOW --stemmer english: the vectors are of stems, and the vocabulary (saved with them, then with the
    two-tower trained on them) stems every text it encodes, so "running" and "runs" are one word to the model.
    The export refuses such a model (a sentence-transformers tokenizer cannot stem)."""
    from conftest import assert_one_line_error, cli

    rng = random.Random(0)
    forms = ["running", "runs", "runner", "cats", "cat", "connected", "connection", "connects", "jumping", "jumped"]
    lines = [f"d{i}\t" + " ".join(rng.choices(forms, k=12)) for i in range(150)]
    (tmp_path / "collection.tsv").write_text("\n".join(lines) + "\n")
    run_main(capsys, CBOW_SCRIPT, "--dataset-path", tmp_path / "collection.tsv", "--stemmer", "english",
             "--min-count", "1", "--vector-size", "16", "--epochs", "1", "--workers", "1", "-c", tmp_path / "ck",
             "--no-word-benchmarks", cwd=tmp_path)
    _, vocab, metadata = load_embeddings(tmp_path / "ck" / "msmarco_word2vec.pt")
    assert vocab.stemmer == metadata["stemmer"] == "english"
    assert {"run", "cat", "connect", "jump"} <= set(vocab.index_to_word) and "running" not in vocab.word_to_index
    assert vocab.encode("Running cats") == vocab.encode("runs cat") == [vocab.word_to_index[w] for w in ("run", "cat")]
    assert vocabulary_fingerprint(vocab) != vocabulary_fingerprint(Vocabulary(vocab.index_to_word))

    status, _, err = cli(capsys, TRIPLETS_SCRIPT, "--mode", "ict", "--dataset-path", tmp_path / "collection.tsv",
                         "--output", tmp_path / "t.pkl", "--data-dir", tmp_path / "data")
    assert status == 0, err
    status, _, err = cli(capsys, TRAIN_SCRIPT, tmp_path / "t.pkl", "--embeddings", tmp_path / "ck" /
                         "msmarco_word2vec.pt", "--epochs", "1", "--output", tmp_path / "m.pt",
                         "--data-dir", tmp_path / "data")
    assert status == 0, err
    model = load_model(tmp_path / "m.pt")
    assert model.vocab.stemmer == "english"
    assert np.array_equal(model.encode_queries(["running cats"]), model.encode_queries(["runs cat"]))
    assert_one_line_error(cli(capsys, "training/export_sentence_transformers.py", tmp_path / "m.pt", "--output-dir",
                              tmp_path / "st"), "m.pt", "stems")


def test_triplets_from_rows_match_their_metadata(trained_pipeline, corpus):
    triplets = load_triplets(trained_pipeline["triplets"])
    metadata = json.loads(metadata_path(trained_pipeline["triplets"]).read_text())
    assert trained_pipeline["triplets"].name.startswith("msmarco_triplets_1k_")  # 240 queries: 1k, not 0.24k
    assert metadata["num_triplets"] == len(triplets) == 2 * len(corpus.queries)  # two positives per query
    assert metadata["queries_read"] == len(corpus.queries)
    assert metadata["negative_strategy"] == "hard" and metadata["seed"] == 42
    assert all(p != n for p, n in zip(triplets.positives, triplets.negatives, strict=False))
    assert metadata["hard_negatives"] == len(triplets)


@pytest.mark.parametrize("strategy", ["random", "mixed"])
def test_triplets_from_tsv_folder(tmp_path, tsv_folder, strategy):
    run_script(TRIPLETS_SCRIPT, "--dataset-path", tsv_folder, "--negatives", strategy, "--seed", "3",
               "--output-dir", tmp_path / "out", cwd=tmp_path)
    path = next((tmp_path / "out").glob("msmarco_triplets_*.pkl"))
    triplets = load_triplets(path)
    metadata = json.loads(metadata_path(path).read_text())
    assert metadata["num_triplets"] == len(triplets) > 0
    assert metadata["hard_negatives"] + metadata["random_negatives"] == len(triplets)
    if strategy == "random":
        assert metadata["hard_negatives"] == 0
    assert all(p != n for p, n in zip(triplets.positives, triplets.negatives, strict=False))


def test_hard_negatives_need_candidates(tmp_path, corpus):
    from conftest import write_tsv_folder

    folder = write_tsv_folder(corpus, tmp_path / "nocands", candidates=False)
    result = run_script(TRIPLETS_SCRIPT, "--dataset-path", folder, cwd=tmp_path, check=False)
    assert result.returncode == 2
    assert "candidate passages" in result.stderr and "Traceback" not in result.stderr
    run_script(TRIPLETS_SCRIPT, "--dataset-path", folder, "--negatives", "random", cwd=tmp_path)


def test_validation_holds_out_judged_queries_and_labels_pseudo_queries():
    from msmarco_search.data.triplets import Triplets
    from msmarco_search.evaluation.validation import split_validation

    judged, cloze = Triplets(), Triplets()
    for i in range(30):
        judged.add(f"q{i}", f"question {i}", f"p{i}", f"answer {i}", f"n{i}", f"other {i}")
    for i in range(60):  # the ids generate_triplets.py --mode ict gives
        cloze.add(f"ict:{i}:0", f"sentence {i}", f"c{i}", f"rest {i}", f"d{i}", f"passage {i}")
    both = Triplets(**{name: list(column) for name, column in cloze.columns().items()})
    both.extend(judged)  # as generate_triplets.py --mode ict --include JUDGED.pkl writes it
    train, validation = split_validation(both, count=10)
    assert validation.kind == "judged" and validation.label == "MRR@10" and len(validation.query_ids) == 10
    assert not any(q.startswith("ict:") for q in validation.query_ids) and len(train) == 80
    _, pseudo = split_validation(cloze, count=10)
    assert pseudo.kind == "pseudo" and pseudo.label == "pseudo-query MRR@10"
    _, too_few_judged = split_validation(both, count=40)  # 30 judged queries are not enough for 40
    assert too_few_judged.kind == "pseudo" and too_few_judged.queries_kind == "inverse-cloze pseudo-queries"
    # judged-only files hold out the same queries as before pseudo-queries were told apart
    expected = random.Random(42).sample([f"q{i}" for i in range(30)], 5)
    assert split_validation(judged, count=5)[1].query_ids == sorted(expected)


def _pairwise_accuracy(model, triplets) -> float:
    q = model.encode(triplets.queries, "query")
    p = model.encode(triplets.positives, "passage")
    n = model.encode(triplets.negatives, "passage")
    return float(((q * p).sum(-1) > (q * n).sum(-1)).float().mean())


def test_trained_two_tower_beats_untrained(trained_pipeline):
    model = load_model(trained_pipeline["model"])
    meta = model.metadata
    raw = torch.load(trained_pipeline["model"], weights_only=True)
    assert raw["kind"] == "two-tower-model" and raw["model_id"] == meta["model_id"]
    log = json.loads(trained_pipeline["model"].with_name(
        trained_pipeline["model"].stem + "_training_log.json").read_text())
    assert len(log["epochs"]) == 8 and log["steps"] and log["examples_per_second"] > 0
    assert log["epochs"][-1]["loss"] < log["epochs"][0]["loss"]
    assert (log["validation"]["label"], log["validation"]["queries_kind"]) == ("MRR@10", "judged queries")

    triplets = load_triplets(trained_pipeline["triplets"])
    matrix, cbow_vocab, _ = load_embeddings(trained_pipeline["embeddings"])
    untrained = TwoTowerModel(TwoTowerConfig(vocab_size=len(cbow_vocab), embedding_dim=matrix.shape[1]), cbow_vocab,
                              matrix)
    before = _pairwise_accuracy(untrained, triplets)
    after = _pairwise_accuracy(model, triplets)
    assert after >= 0.95, (before, after)
    assert after - before >= 0.25, (before, after)


def test_training_prints_the_similarity_test_and_honours_no_save(trained_pipeline, tmp_path, capsys):
    result = run_main(capsys, TRAIN_SCRIPT, trained_pipeline["triplets"], "--embeddings",
                      trained_pipeline["embeddings"], "--no-save", "--tower", "gru", "--gru-hidden-dim", "16",
                      "--batch-size", "64", "--output-dir", tmp_path / "models", cwd=tmp_path)
    assert "=== Quick similarity test ===" in result.stdout and "[relevant]" in result.stdout
    assert not (tmp_path / "models").exists() or not list((tmp_path / "models").iterdir())
    # each query's passages are listed once, and labelled by that query's own judgments
    triplets = load_triplets(trained_pipeline["triplets"])
    judged, ids = {}, {}
    for qid, query, positive in zip(triplets.query_ids, triplets.queries, triplets.positives, strict=True):
        judged.setdefault(query, set()).add(positive[:90])
        ids.setdefault(query, set()).add(qid)
    blocks = result.stdout.split("=== Quick similarity test ===")[1].split("Query: ")[1:]
    assert len(blocks) == 3
    for block in blocks:
        query, *lines = block.strip().splitlines()
        shown = [line.split("] ", 1) for line in lines if line.strip()[:1].isdigit()]
        texts = [text for _, text in shown]
        assert len(texts) == len(set(texts)) >= 3
        if len(ids[query]) == 1:  # a text two query ids share is judged per id, not per text
            for label, text in shown:
                assert label.endswith("[relevant") == (text in judged[query]), (query, label, text)


@pytest.mark.parametrize("loss", ["triplet", "softmax"])
def test_frozen_embeddings_and_losses_train(trained_pipeline, tmp_path, loss, capsys):
    run_main(capsys, TRAIN_SCRIPT, trained_pipeline["triplets"], "--embeddings", trained_pipeline["embeddings"],
             "--loss", loss, "--freeze-embeddings", "--output-dir", tmp_path, cwd=tmp_path)
    model = load_model(next(tmp_path.glob("two_tower_model_*.pt")))
    matrix, _, _ = load_embeddings(trained_pipeline["embeddings"])
    assert torch.equal(model.query_tower.embedding.weight.detach()[2:], matrix[2:])


def test_bad_inputs_end_with_one_line(tmp_path, trained_pipeline, capsys):
    # the first through a fresh interpreter, the others through the script's main in this process
    missing = run_script(TRAIN_SCRIPT, tmp_path / "nope.pkl", cwd=tmp_path, check=False)
    empty = tmp_path / "empty.pkl"
    empty.write_bytes(b"")
    wrong_kind = run_main(capsys, TRAIN_SCRIPT, trained_pipeline["embeddings"], "--embeddings",
                          trained_pipeline["embeddings"], cwd=tmp_path, check=False)
    no_embeddings = run_main(capsys, TRAIN_SCRIPT, trained_pipeline["triplets"], "--embeddings", tmp_path / "x.pt",
                             cwd=tmp_path, check=False)
    for result, words in [(missing, "nope.pkl: file not found"),
                          (run_main(capsys, TRAIN_SCRIPT, empty, "--embeddings", trained_pipeline["embeddings"],
                                    cwd=tmp_path, check=False), "empty.pkl: file is empty"),
                          (wrong_kind, "msmarco_word2vec.pt"),
                          (no_embeddings, "x.pt: CBOW embeddings not found")]:
        assert result.returncode == 2, result.stderr
        assert words in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_output_writes_exactly_there_and_never_clobbers(trained_pipeline, tmp_path, capsys, monkeypatch):
    # the runs go through the script's main in this process (each fresh interpreter costs seconds of start-up;
    # the trained_pipeline fixture trains through the command line)
    from conftest import cli

    monkeypatch.chdir(tmp_path)
    quick = [trained_pipeline["triplets"], "--embeddings", trained_pipeline["embeddings"], "--max-steps", "2",
             "--validation-fraction", "0", "--data-dir", trained_pipeline["work"] / "data"]
    target = tmp_path / "models" / "mine.pt"
    done = run_main(capsys, TRAIN_SCRIPT, *quick, "--output", target, cwd=tmp_path)
    assert f"Saved model to {target}" in done.stdout
    assert sorted(p.name for p in target.parent.iterdir()) == ["mine.pt", "mine_training_log.json",
                                                               "mine_training_log.png"]  # no claim, no state
    assert not (tmp_path / "checkpoints").exists()
    first_id = load_model(target).metadata["model_id"]

    def refused(*args: object, words: str) -> None:
        status, _, err = cli(capsys, TRAIN_SCRIPT, *quick, *args)
        assert status == 2 and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1 and words in err, err
        assert load_model(target).metadata["model_id"] == first_id  # untouched

    refused("--output", target, words=f"{target}: already exists; pass --overwrite")
    with claim_held_by_another_process(target) as holder:  # a run writing mine.pt now
        refused("--output", target, "--overwrite", words=f"{target}: another run (process {holder.pid}) is writing")
    state = target.with_name("mine_training_state.pt")  # an interrupted run's state is never overwritten
    state.write_bytes(b"not really a state")
    target.unlink()
    status, _, err = cli(capsys, TRAIN_SCRIPT, *quick, "--output", target)
    assert status == 2 and f"continue it with --resume {state}" in err
    assert state.read_bytes() == b"not really a state" and not target.exists()
    state.unlink()
    status, _, err = cli(capsys, TRAIN_SCRIPT, *quick, "--output", target, "--no-save")
    assert status == 2 and "--output and --no-save" in err

    assert cli(capsys, TRAIN_SCRIPT, *quick, "--output", target)[0] == 0
    assert cli(capsys, TRAIN_SCRIPT, *quick, "--output", target, "--overwrite", "--seed", "7")[0] == 0
    assert load_model(target).metadata["training"]["arguments"]["seed"] == 7
    assert [p.name for p in target.parent.glob(".*")] == []  # no claim markers or temporary files left


@pytest.mark.slow
def test_averaging_writes_exactly_to_output(trained_pipeline, tmp_path, capsys):
    model = trained_pipeline["model"]
    soup = tmp_path / "soup.pt"
    run_script("training/average_two_tower_models.py", model, model, "--output", soup, cwd=tmp_path)
    assert load_model(soup).metadata["averaged_from"] == [str(model), str(model)]
    # the refusal and the overwrite through the same script's main in this process
    again = run_main(capsys, "training/average_two_tower_models.py", model, model, "--output", soup, cwd=tmp_path,
                     check=False)
    assert again.returncode == 2 and f"{soup}: already exists; pass --overwrite" in again.stderr
    run_main(capsys, "training/average_two_tower_models.py", model, model, "--output", soup, "--overwrite",
             cwd=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["soup.pt"]


def test_scripts_have_help(tmp_path, capsys):
    from conftest import cli

    # one script through a fresh interpreter, the others through their main in this process (the same file
    # and argv; each interpreter costs seconds of imports)
    assert run_script(CBOW_SCRIPT, "--help", cwd=tmp_path).stdout.startswith(
        "usage: train_text_embeddings_cbow_msmarco.py ")  # the program named as the user ran it
    for script in (TRIPLETS_SCRIPT, TRAIN_SCRIPT, "training/average_two_tower_models.py",
                   "benchmarks/mean_over_seeds.py"):
        status, out, _ = cli(capsys, script, "--help")
        assert status == 0 and "usage:" in out, script


@pytest.mark.real_data
@pytest.mark.skipif(not (SHARED_DATA / "msmarco-trec-dl-2019").is_dir(), reason="../shared/data is absent")
def test_pipeline_runs_on_real_rows_and_tsvs(tmp_path):
    rows = SHARED_DATA / "msmarco-trec-dl-2019" / "derived" / "hf_rows.bm25top10.dl19.jsonl"
    run_script(CBOW_SCRIPT, "--dataset-path", rows, "--min-count", "1", "--epochs", "1", cwd=tmp_path)
    run_script(TRIPLETS_SCRIPT, "--dataset-path", rows, cwd=tmp_path)
    tsv = SHARED_DATA / "msmarco-v2-trec-dl-2021"
    run_script(TRIPLETS_SCRIPT, "--dataset-path", tsv, "--split", "dl21", "--min-relevance", "2",
               "--output-dir", tmp_path / "tsv", cwd=tmp_path)
    triplets = sorted((tmp_path / "data").glob("msmarco_triplets_*.pkl")) + sorted(
        (tmp_path / "tsv").glob("msmarco_triplets_*.pkl"))
    assert len(triplets) == 2
    for path in triplets:
        run_script(TRAIN_SCRIPT, path, "--batch-size", "64", "--no-save", cwd=tmp_path)
    assert np.isfinite(json.loads(metadata_path(triplets[1]).read_text())["num_triplets"])


@pytest.mark.slow
def test_console_commands_are_installed_and_end_bad_input_with_one_line(tmp_path):
    commands = ["cbow", "triplets", "train", "average", "export", "search", "evaluate", "pipeline"]
    executables = [Path(sys.executable).parent / f"msmarco-{command}" for command in commands]
    assert all(e.is_file() for e in executables), "uv sync installs the [project.scripts] commands"
    # every command's main is the one the scripts wrap (test_scripts_have_help runs them all); one start-up
    # each costs seconds, so two commands stand for the rest here
    env = {**os.environ, "MSMARCO_SEARCH_NO_PROGRESS": "1"}
    shown = subprocess.run([executables[commands.index("pipeline")], "--help"], capture_output=True, text=True,
                           env=env, timeout=300)
    assert shown.returncode == 0 and shown.stdout.startswith("usage: msmarco-pipeline ")
    bad = subprocess.run([executables[commands.index("train")], tmp_path / "missing.pkl"], capture_output=True,
                         text=True, cwd=tmp_path, env=env, timeout=300)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1] == f"error: {tmp_path / 'missing.pkl'}: file not found"


def test_triplets_drop_the_queries_kept_for_evaluation(tmp_path, corpus):
    from conftest import write_tsv_folder

    folder = write_tsv_folder(corpus, tmp_path / "tsv")
    held_out = tmp_path / "queries.eval.tsv"
    # the same texts in another case and with punctuation: still the same queries
    kept_back = corpus.queries[:30]
    held_out.write_text("".join(f"e{qid}\t{text.upper()}?\n" for qid, text, _ in kept_back))
    run_script(TRIPLETS_SCRIPT, "--dataset-path", folder, "--negatives", "random", "--exclude-queries", held_out,
               "--output", tmp_path / "t.pkl", cwd=tmp_path)
    triplets = load_triplets(tmp_path / "t.pkl")
    metadata = json.loads(metadata_path(tmp_path / "t.pkl").read_text())
    excluded = {text for _, text, _ in kept_back}
    assert triplets.queries and not excluded & set(triplets.queries)
    assert metadata["triplets_excluded"] == metadata["triplets_made"] - len(triplets) > 0
    assert metadata["excluded_queries"] == [str(held_out)]


def test_the_python_api_gives_normalised_float32_arrays_that_rank_like_the_model(trained_pipeline):
    import msmarco_search

    model = msmarco_search.load_model(trained_pipeline["model"])
    triplets = load_triplets(trained_pipeline["triplets"])
    queries = model.encode_queries(triplets.queries[:50])
    positives = model.encode_passages(triplets.positives[:50])
    negatives = model.encode_passages(triplets.negatives[:50])
    assert isinstance(queries, np.ndarray) and queries.dtype == np.float32 and queries.shape[0] == 50
    np.testing.assert_allclose(np.linalg.norm(positives, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(queries, model.encode(triplets.queries[:50], "query").numpy())
    assert ((queries * positives).sum(1) > (queries * negatives).sum(1)).mean() >= 0.9


def test_the_levers_benchmark_lists_its_levers_and_refuses_a_work_folder_without_the_levers_step(tmp_path, capsys):
    from conftest import cli

    status, out, _ = cli(capsys, "benchmarks/levers_dl21.py", "--list")
    names = [line.split()[0] for line in out.splitlines()]
    assert status == 0 and names[0] == "control" and {"cbow-40-epochs", "distill-train-queries"} <= set(names)
    for argv, message in ((["control"], "--work is needed"), (["--work", tmp_path / "missing", "control"],
                                                               "missing: run the quality script's levers step"),
                          (["--work", tmp_path, "no-such-lever"], "unknown lever(s) no-such-lever")):
        status, _, err = cli(capsys, "benchmarks/levers_dl21.py", *argv)
        assert status == 2 and message in err.strip().splitlines()[-1] and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # nothing written where the step has not run


def test_the_hybrid_weight_sweep_refuses_what_it_cannot_train_in_one_line(tmp_path, capsys):
    from conftest import cli

    for argv, message in ((["--work", tmp_path, "teacher"], "not a trained lever: teacher"),
                          (["--work", tmp_path / "missing", "control"],
                           "missing: run the quality script's levers step"),
                          (["--work", tmp_path, "--weights", "0.5,2", "control"], "dense shares from 0 to 1")):
        status, _, err = cli(capsys, "benchmarks/hybrid_weight_dl21.py", *argv)
        assert status == 2 and message in err.strip().splitlines()[-1] and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []
