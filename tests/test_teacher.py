"""The teacher, through the command lines: triplets labelled with its vectors (cached), the training that distils
them, its reference row in the evaluation, the main job with and without one, and the teacher folders and caches
that are refused.

The teacher is a tiny sentence-transformers model built offline (conftest's ``teacher_folder``): every code path of
a real one, in milliseconds a text. Nothing here touches the network (conftest sets HF_HUB_OFFLINE).
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, TRIPLETS_SCRIPT, Corpus, make_corpus, write_tsv_folder
from conftest import assert_one_line_error as one_line_error

from msmarco_search.cli import run
from msmarco_search.core.text import tokenize
from msmarco_search.data.triplets import load_triplets, metadata_path
from msmarco_search.teacher.settings import DISTILL_WEIGHT, TEACHER_SCALE


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """Training and evaluation files: a TSV folder of the test corpus, and CBOW-format embeddings of its words
    (random vectors: the teacher is under test here, not CBOW)."""
    from msmarco_search.data.vocab import Vocabulary
    from msmarco_search.embeddings.cbow import save_embeddings

    work = tmp_path_factory.mktemp("teacher-work")
    corpus = make_corpus()
    write_tsv_folder(corpus, work / "tsv")
    words = sorted({word for _, text, _ in corpus.passages + corpus.queries for word in tokenize(text)})
    vocab = Vocabulary.from_words(words)
    matrix = torch.randn(len(vocab), 16, generator=torch.Generator().manual_seed(3))
    matrix[0] = 0.0
    save_embeddings(work / "embeddings.pt", matrix, vocab, {})
    return work


def command(name: str, *args: object) -> tuple[int, str, str]:
    """The package's command ``name`` run as its console command runs it (``cli.run``), in this process:
    (exit status, stdout, stderr)."""
    from msmarco_search.cli import COMMANDS

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err), pytest.raises(SystemExit) as stop:
        run(COMMANDS[name][0](), [str(a) for a in args])
    return stop.value.code or 0, out.getvalue(), err.getvalue()



def ict_triplets(work: Path, output: Path, *flags: object) -> tuple[int, str, str]:
    """Inverse-cloze triplets of the corpus's collection (their positives are cuts of their passages)."""
    return command("triplets", "--mode", "ict", "--dataset-path", work / "tsv" / "collection.tsv",
                   "--data-dir", work / "data", "--output", output, *flags)


@pytest.fixture(scope="module")
def labelled(work, teacher_folder) -> dict[str, Path | str]:
    """The same triplets made twice with the teacher (the second run reads every vector from the cache) and once
    without it."""
    made: dict[str, Path | str] = {}
    for name in ("plain", "taught", "again"):
        flags = [] if name == "plain" else ["--teacher", teacher_folder]
        status, out, err = ict_triplets(work, work / f"{name}.pkl", *flags)
        assert status == 0, out + err
        made[name], made[f"{name}_out"] = work / f"{name}.pkl", out
    return made


# --------------------------------------------------------------------------------------------- triplets


def test_triplets_carry_the_teachers_vectors_of_whole_passages_and_a_second_run_encodes_nothing(
        labelled, teacher_folder, work):
    from msmarco_search.teacher.model import load_teacher

    plain, taught, again = (load_triplets(labelled[name]) for name in ("plain", "taught", "again"))
    assert plain.teacher is None and taught.columns() == plain.columns()  # the teacher changes no triplet
    labels = taught.teacher
    assert len(labels) == len(taught) and labels.queries.shape[1] == labels.passages.shape[1] == 32
    teacher = load_teacher(teacher_folder)
    assert labels.identity == teacher.identity and labels.name == str(teacher_folder)

    # each row is the teacher's vector of the text: the query, and the positive's passage whole (an inverse-cloze
    # positive is the passage less its pseudo-query), not the cut the triplet holds
    collection = dict(line.split("\t", 1) for line in (work / "tsv" / "collection.tsv").read_text().splitlines())
    rows = [i for i, pid in enumerate(taught.positive_ids) if taught.positives[i] != collection[pid]][::40]
    assert len(rows) >= 3
    queries, positives, _ = labels.batch(np.array(rows))
    np.testing.assert_allclose(queries, teacher.encode([taught.queries[i] for i in rows]), atol=2e-3)
    np.testing.assert_allclose(positives, teacher.encode([collection[taught.positive_ids[i]] for i in rows]),
                               atol=2e-3)
    assert not np.allclose(positives, teacher.encode([taught.positives[i] for i in rows]), atol=2e-3)

    first = json.loads(metadata_path(labelled["taught"]).read_text())["teacher"]
    second = json.loads(metadata_path(labelled["again"]).read_text())["teacher"]
    cache = work / "data" / f"teacher_vectors_{teacher.identity}.npz"
    assert first["cache"] == second["cache"] == str(cache) and cache.is_file()
    assert first["identity"] == teacher.identity and first["dim"] == 32
    assert first["texts_encoded"] == first["queries"] + first["passages"] > 0
    assert second["texts_encoded"] == 0  # every vector from the cache
    assert "0 texts encoded now" in labelled["again_out"]
    np.testing.assert_array_equal(load_triplets(labelled["again"]).teacher.queries, labels.queries)


def test_teacher_queries_are_labelled_over_the_pool_and_never_the_evaluation_queries(work, teacher_folder):
    collection = [line.split("\t", 1) for line in (work / "tsv" / "collection.tsv").read_text().splitlines()]
    unjudged = work / "queries.unjudged.tsv"
    unjudged.write_text("".join(f"u{pid}\t{' '.join(text.lower().rstrip('.').split()[:6])}\n"
                                for pid, text in collection[::4]))
    output = work / "with-queries.pkl"
    status, out, err = ict_triplets(work, output, "--teacher", teacher_folder, "--teacher-queries", unjudged,
                                    "--teacher-min-score", "0", "--teacher-margin", "0",
                                    "--teacher-negative-ranks", "2", "20")
    assert status == 0, out + err
    triplets = load_triplets(output)
    added = [i for i, qid in enumerate(triplets.query_ids) if qid.startswith("tl:")]
    stats = json.loads(metadata_path(output).read_text())["teacher"]["teacher_queries"]
    assert stats["queries_read"] == len(collection[::4]) and stats["labelled"] == len(added) > 0
    pool = {pid: text for pid, text in collection}
    for i in added:  # positives and negatives are passages of the pool, the negative never the positive
        assert pool[triplets.positive_ids[i]] == triplets.positives[i] and triplets.negative_ids[i] in pool
        assert triplets.negative_ids[i] != triplets.positive_ids[i]
    assert triplets.teacher is not None and len(triplets.teacher) == len(triplets)

    # a file that holds an evaluation query is refused before the teacher loads, and nothing is written
    evaluation = work / "queries.eval.tsv"
    evaluation.write_text(f"e1\t{unjudged.read_text().splitlines()[2].split(chr(9))[1].upper()}?\n")
    before = output.read_bytes()
    one_line_error(ict_triplets(work, output, "--teacher", teacher_folder, "--teacher-queries", unjudged,
                                "--exclude-queries", evaluation),
                   "queries.unjudged.tsv: 1 of its queries are evaluation queries", "remove them")
    assert output.read_bytes() == before


def test_parquet_triplets_with_a_teacher_are_refused_before_any_work(work, teacher_folder):
    output = work / "t.parquet"
    one_line_error(ict_triplets(work, output, "--teacher", teacher_folder),
                   "teacher labels are kept in the pickle format only")
    assert not output.exists()


# --------------------------------------------------------------------------------------------- training


def train(work: Path, triplets: Path, output: Path, *flags: object) -> tuple[int, str, str]:
    return command("train", triplets, "--embeddings", work / "embeddings.pt", "--epochs", "2",
                   "--batch-size", "16", "--learning-rate", "3e-3", "--log-every", "1", "--data-dir", work / "data",
                   "--output", output, *flags)


def test_distillation_changes_the_training_and_weight_zero_trains_exactly_as_without_a_teacher(work, labelled):
    models = work / "models"
    for name, triplets, flags in (("plain", "plain", []), ("weight0", "taught", ["--distill-weight", "0"]),
                                  ("distilled", "taught", [])):
        status, out, err = train(work, labelled[triplets], models / f"{name}.pt", *flags)
        assert status == 0, out + err
    logs = {name: json.loads((models / f"{name}_training_log.json").read_text())
            for name in ("plain", "weight0", "distilled")}
    weights = {name: torch.load(models / f"{name}.pt", weights_only=True)["state_dict"] for name in logs}

    assert all(torch.equal(weights["weight0"][key], value) for key, value in weights["plain"].items())
    assert logs["weight0"]["objective"]["teacher"] is None and logs["weight0"]["objective"]["distill_weight"] == 0
    objective = logs["distilled"]["objective"]
    assert objective["distill_weight"] == DISTILL_WEIGHT and objective["teacher_scale"] == TEACHER_SCALE
    assert objective["teacher"]["identity"] == load_triplets(labelled["taught"]).teacher.identity
    # the same first batch from the same start: the KL (>= 0) is added to the same cross-entropy
    assert logs["distilled"]["steps"][0]["loss"] > logs["weight0"]["steps"][0]["loss"]
    assert not all(torch.equal(weights["distilled"][key], value) for key, value in weights["plain"].items())
    saved = torch.load(models / "distilled.pt", weights_only=True)
    assert saved["training"]["objective"] == objective  # the model's own record


def test_a_distillation_weight_without_teacher_labels_is_one_line_naming_the_file(work, labelled):
    output = work / "models" / "refused.pt"
    one_line_error(train(work, labelled["plain"], output, "--distill-weight", "0.5"),
                   "plain.pkl: --distill-weight 0.5 needs triplets with teacher labels")
    one_line_error(train(work, labelled["taught"], output, "--loss", "triplet", "--distill-weight", "1"),
                   "--loss triplet has none")
    assert not output.exists()


def test_a_resumed_distillation_gives_the_same_weights_and_keeps_its_objective(tmp_path, work, labelled):
    """An interrupted distillation resumes to the weights of the run that was never interrupted, and a resume
    under another objective is refused."""
    import os
    import signal

    from msmarco_search.data.tokens import tokenise_triplets
    from msmarco_search.embeddings.cbow import load_embeddings
    from msmarco_search.training.config import TwoTowerConfig
    from msmarco_search.training.losses import InBatchDistillationLoss
    from msmarco_search.training.model import TwoTowerModel
    from msmarco_search.training.state import TrainingInterrupted, TrainSettings, load_training_state
    from msmarco_search.training.trainer import train_two_tower

    matrix, vocab, _ = load_embeddings(work / "embeddings.pt")
    data = tokenise_triplets(load_triplets(labelled["taught"]), vocab, 8, 32)
    assert data.teacher is not None and len(data.batch(np.arange(4))) == 4  # the batches carry its vectors
    settings = TrainSettings(epochs=2, batch_size=16, learning_rate=3e-3, log_every=1, checkpoint_every=3)

    def model() -> TwoTowerModel:
        return TwoTowerModel(TwoTowerConfig(vocab_size=len(vocab), embedding_dim=16), vocab, matrix)

    reference = model()
    train_two_tower(reference, data, InBatchDistillationLoss(), settings, torch.device("cpu"))

    def interrupt(step, log):
        if step == 10:  # epoch 2 (8 batches an epoch), past a periodic state
            os.kill(os.getpid(), signal.SIGINT)

    state = tmp_path / "state.pt"
    with pytest.raises(TrainingInterrupted):
        train_two_tower(model(), data, InBatchDistillationLoss(), settings, torch.device("cpu"),
                        after_step=interrupt, state_path=state)
    resumed = model()
    train_two_tower(resumed, data, InBatchDistillationLoss(), settings, torch.device("cpu"),
                    resume=load_training_state(state), state_path=state)
    for name, value in reference.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name

    # through the command: a kept state resumed with another --distill-weight is refused
    output = tmp_path / "model.pt"
    status, out, err = train(work, labelled["taught"], output, "--keep-training-state")
    assert status == 0, out + err
    kept = tmp_path / "model_training_state.pt"
    assert load_training_state(kept)["objective"]["distill_weight"] == 1.0
    one_line_error(train(work, labelled["taught"], output, "--resume", kept, "--distill-weight", "0.5", "--overwrite"),
                   "cannot resume: the objective differs from the interrupted run's (distill_weight)")


# --------------------------------------------------------------------------------------------- evaluation


def test_evaluation_adds_the_teachers_reference_row_from_its_cache(work, labelled, teacher_folder):
    tsv = work / "tsv"
    status, out, err = command("evaluate", "--collection", tsv / "collection.tsv", "--queries",
                               tsv / "queries.train.tsv", "--qrels", tsv / "qrels.train.tsv", "--systems", "bm25",
                               "--teacher", teacher_folder, "--data-dir", work / "data", "--output-dir",
                               work / "evaluation")
    assert status == 0, out + err
    table = out[out.index("=== full"):]
    assert any(line.split()[0] == "teacher" for line in table.splitlines()[4:] if line.strip())
    queries = len({line.split("\t", 1)[1] for line in (tsv / "queries.train.tsv").read_text().splitlines()})
    # the triplets command cached the collection's passages: only the queries are encoded now
    assert f"The teacher encodes {queries:,} texts" in out and out.count("The teacher encodes") == 1
    report = json.loads((work / "evaluation" / "evaluation.json").read_text())
    assert report["systems"]["teacher"]["kind"] == "TeacherRetriever"
    assert "teacher" in report["tasks"]["full"]["metrics"] and "teacher" in report["tasks"]["full"]["significance"]

    one_line_error(command("evaluate", "--collection", tsv / "collection.tsv", "--queries",
                           tsv / "queries.train.tsv", "--qrels", tsv / "qrels.train.tsv", "--systems", "bm25,teacher",
                           "--output-dir", work / "evaluation-2"), "--systems teacher needs --teacher MODEL")


# --------------------------------------------------------------------------------------------- bad input


def _copy(folder: Path, to: Path) -> Path:
    shutil.copytree(folder, to)
    return to


def test_teacher_folders_that_could_run_code_or_are_no_model_are_one_line(tmp_path, work, labelled, teacher_folder):
    no_modules = _copy(teacher_folder, tmp_path / "no-modules")
    (no_modules / "modules.json").unlink()
    foreign = _copy(teacher_folder, tmp_path / "foreign")
    modules = json.loads((foreign / "modules.json").read_text())
    modules[1]["type"] = "evil_package.Pooling"
    (foreign / "modules.json").write_text(json.dumps(modules))
    pickled = _copy(teacher_folder, tmp_path / "pickled")
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    remote = _copy(teacher_folder, tmp_path / "remote")
    config = json.loads((remote / "config.json").read_text())
    (remote / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModel": "modeling_evil.Evil"}}))
    code = _copy(teacher_folder, tmp_path / "code")
    (code / "modeling_evil.py").write_text("import os\nos.system('touch pwned')\n")

    output = tmp_path / "refused.pkl"
    shutil.copy(labelled["plain"], output)  # an earlier triplets file there: kept as it is
    before = output.read_bytes()
    for folder, words in ((no_modules, "not a sentence-transformers model folder (no modules.json)"),
                          (foreign, "names a module that is not sentence-transformers' own (evil_package.Pooling)"),
                          (pickled, "no safetensors weights in the model folder (it has pytorch_model.bin, pickles"),
                          (remote, "asks for remote code"),
                          (code, "brings its own code (modeling_evil.py)")):
        one_line_error(ict_triplets(work, output, "--teacher", folder), folder.name, words)
        assert output.read_bytes() == before
    assert not any(tmp_path.rglob("pwned")) and not (work / "pwned").exists()


def test_caches_of_another_teacher_another_dimension_or_damaged_are_one_line(tmp_path, work, labelled,
                                                                             teacher_folder):
    from msmarco_search.teacher.model import folder_identity

    data = tmp_path / "data"
    data.mkdir()
    identity = folder_identity(teacher_folder)
    cache = data / f"teacher_vectors_{identity}.npz"
    good = work / "data" / cache.name
    with np.load(good) as saved:
        header, keys, vectors = json.loads(str(saved["header"])), saved["keys"], saved["vectors"]

    def write(header: dict, keys: np.ndarray, vectors: np.ndarray) -> bytes:
        with open(cache, "wb") as handle:
            np.savez(handle, header=np.array(json.dumps(header)), keys=keys, vectors=vectors)
        return cache.read_bytes()

    output = tmp_path / "triplets.pkl"
    shutil.copy(labelled["plain"], output)
    before = output.read_bytes()
    cases = (
        (write({**header, "teacher": "0123456789abcdef"}, keys, vectors), "a cache of another teacher"),
        (write({**header, "dim": 16}, keys, vectors[:, :16]), "the teacher gives 32 dimensions"),
        (good.read_bytes()[: len(good.read_bytes()) // 2], "not a readable teacher cache"),
    )
    for content, words in cases:
        cache.write_bytes(content)
        one_line_error(command("triplets", "--mode", "ict", "--dataset-path", work / "tsv" / "collection.tsv",
                               "--data-dir", data, "--output", output, "--teacher", teacher_folder),
                       cache.name, words)
        assert output.read_bytes() == before and cache.read_bytes() == content  # neither replaced
        one_line_error(command("evaluate", "--collection", work / "tsv" / "collection.tsv", "--queries",
                               work / "tsv" / "queries.train.tsv", "--qrels", work / "tsv" / "qrels.train.tsv",
                               "--systems", "bm25", "--teacher", teacher_folder, "--data-dir", data,
                               "--output-dir", tmp_path / "evaluation"), cache.name, words)
        assert cache.read_bytes() == content


@pytest.mark.slow
def test_a_pickled_teacher_is_refused_by_the_real_command_without_a_traceback(tmp_path, work, teacher_folder):
    pickled = _copy(teacher_folder, tmp_path / "pickled")
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    result = subprocess.run([sys.executable, str(ROOT / TRIPLETS_SCRIPT), "--mode", "ict", "--dataset-path",
                             str(work / "tsv" / "collection.tsv"), "--teacher", str(pickled), "--output",
                             str(tmp_path / "t.pkl")], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: {pickled}: no safetensors weights in the model folder (it has pytorch_model.bin, pickles that "
        "could run code); a teacher loads from safetensors only"]
    assert not (tmp_path / "t.pkl").exists()


# --------------------------------------------------------------------------------------------- the main job


def _stages_of(monkeypatch, tmp_path, *flags: object) -> tuple[int, str, list]:
    """The main job's decision and the stages it would run (not running them): (status, stderr, stages)."""
    from msmarco_search.cli import pipeline

    corpus = make_corpus()
    train_folder = write_tsv_folder(corpus, tmp_path / "train")
    evaluation = write_tsv_folder(corpus, tmp_path / "dl", split="dev", candidates=False)
    stages = []

    def plan(workflow, evaluation_files):
        made, triplets = pipeline.triplet_stages(workflow, evaluation_files)
        stages.extend([*made, pipeline.train_stage(workflow, "two-tower", triplets, tmp_path / "e.pt", 1,
                                                   tmp_path / "m.pt")])
        monkeypatch.setattr(workflow, "run", stages.append)
        pipeline.evaluate(workflow, tmp_path / "m.pt", tmp_path / "e.pt", evaluation_files)
        return tmp_path / "m.pt"

    monkeypatch.setattr(pipeline, "run_stages", plan)
    status, _, err = command("pipeline", "--dataset-path", train_folder, "--evaluate-on", evaluation,
                             "--output-dir", tmp_path / "out", "--data-dir", tmp_path / "data", *flags)
    return status, err, stages


def test_the_main_job_without_a_teacher_says_so_in_one_line_and_trains_the_recipe(monkeypatch, tmp_path,
                                                                                  teacher_folder):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))  # whatever this machine cached
    missing = tmp_path / "no-such-teacher"
    for name, flags, line in (
            ("missing", ["--teacher", missing], f"warning: no teacher ({missing}: no such teacher model folder); "
                                                "training today's recipe without one"),
            # a hub name, offline and not cached here
            ("hub", ["--teacher", "sentence-transformers/all-MiniLM-L6-v2"],
             "warning: no teacher (sentence-transformers/all-MiniLM-L6-v2: cannot fetch the teacher "
             "from the Hugging Face hub"),
            ("default", [], None),  # off by default
            ("none", ["--teacher", "none"], None)):
        status, err, stages = _stages_of(monkeypatch, tmp_path / name, *flags)
        assert status == 0
        if line is None:
            assert err == ""
        else:
            assert len(err.strip().splitlines()) == 1 and err.startswith(line), err
        words = [str(word) for stage in stages for word in stage.arguments]
        assert "--teacher" not in words and "--distill-weight" not in words

    status, err, stages = _stages_of(monkeypatch, tmp_path / "taught", "--teacher", teacher_folder)
    assert status == 0 and err == ""
    flags = {stage.name: [str(word) for word in stage.arguments] for stage in stages}
    final = flags["triplets: inverse-cloze pseudo-queries plus the judged pairs"]
    assert final[final.index("--teacher") + 1] == str(teacher_folder)
    assert "--teacher" not in flags["triplets: judged pairs"]  # the final triplets are labelled once
    assert flags["two-tower"][-4:] == ["--distill-weight", str(DISTILL_WEIGHT), "--teacher-scale", str(TEACHER_SCALE)]
    evaluation = flags["evaluate against BM25"]
    assert evaluation[evaluation.index("--teacher") + 1] == str(teacher_folder)

    refused = _copy(teacher_folder, tmp_path / "refused")
    (refused / "modules.json").unlink()
    status, err, stages = _stages_of(monkeypatch, tmp_path / "refused-run", "--teacher", refused)
    one_line_error((status, "", err), f"{refused}: not a sentence-transformers model folder (no modules.json)")
    assert stages == []  # before any work


@pytest.mark.slow
def test_the_main_job_distils_the_teacher_and_shows_its_row(tmp_path, teacher_folder):
    """The whole job with the teacher folder: labelled triplets, a distilled model, the teacher's row."""
    import os

    corpus = make_corpus()
    train_folder = write_tsv_folder(Corpus(corpus.queries[::2], corpus.passages), tmp_path / "train")
    evaluation = write_tsv_folder(Corpus(corpus.queries[1::2], corpus.passages), tmp_path / "dl", split="dev",
                                  candidates=False)
    env = {**os.environ, "PYTHON": sys.executable, "MSMARCO_SEARCH_NO_PROGRESS": "1"}
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "run_pipeline.sh"), "1000", "--dataset-path", str(train_folder),
         "--evaluate-on", str(evaluation), "--seeds", "1", "--cbow-epochs", "1", "--vector-size", "16",
         "--min-count", "1", "--ict-per-passage", "1", "--min-relevance", "1", "--teacher", str(teacher_folder),
         "--output-dir", str(tmp_path / "checkpoints"), "--data-dir", str(tmp_path / "data")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    triplets = next((tmp_path / "data").glob("msmarco_triplets_recipe_*_metadata.json"))
    assert json.loads(triplets.read_text())["teacher"]["name"] == str(teacher_folder)
    model = next((tmp_path / "checkpoints").glob("two_tower_model_*[0-9].pt"))
    objective = torch.load(model, weights_only=True)["training"]["objective"]
    assert objective["distill_weight"] == 1.0 and objective["teacher"]["name"] == str(teacher_folder)
    report = json.loads((model.with_name(f"{model.stem}_evaluation") / "evaluation.json").read_text())
    assert {"teacher", "two-tower[recipe]", "bm25"} <= set(report["tasks"]["full"]["metrics"])
    assert "teacher" in report["tasks"]["full"]["significance"]
