"""The main job (scripts/run_pipeline.sh) end to end on fixtures, through the README's command shape."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import (
    ROOT,
    SEARCH_SCRIPT,
    Corpus,
    built_once,
    make_corpus,
    next_command,
    run_script,
    write_tsv_folder,
)

from msmarco_search.core.commands import DEMO_QUERY
from msmarco_search.training.model_file import load_model


def run_pipeline(*args: object, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "MSMARCO_SEARCH_NO_PROGRESS": "1", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(["bash", str(ROOT / "scripts" / "run_pipeline.sh"), *map(str, args)], cwd=cwd,
                            env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


def _main_job_twice(folder: Path) -> None:
    """The recipe's main job on the fixture corpus, run side by side (``--jobs 2``) and one stage at a time."""
    corpus = make_corpus()
    # judged queries of every other topic query train; the rest are the evaluation queries, never trained on
    train = write_tsv_folder(Corpus(corpus.queries[::2], corpus.passages), folder / "train", split="train")
    evaluation = write_tsv_folder(Corpus(corpus.queries[1::2], corpus.passages), folder / "dl", split="dev",
                                  candidates=False)
    # self-training queries without judgments, in the passages' words so that the labeller and BM25 can agree
    unjudged = folder / "queries.unjudged.tsv"
    unjudged.write_text("".join(f"u{pid}\t{' '.join(text.lower().rstrip('.').split()[:8])}\n"
                                for pid, text, _ in corpus.passages))
    for jobs in (2, 1):
        out = folder / f"jobs{jobs}"
        out.mkdir()
        result = run_pipeline(1000, "--dataset-path", train, "--split", "train", "--evaluate-on", evaluation,
                              "--seeds", "1,2", "--epochs", "3", "--cbow-epochs", "2", "--vector-size", "16",
                              "--min-count", "1", "--ict-per-passage", "1", "--min-relevance", "1",
                              "--label-queries", unjudged, "--jobs", jobs, "--teacher", folder / "no-such-teacher",
                              "--output-dir", out / "checkpoints", "--data-dir", out / "data", cwd=out)
        (out / "stdout.txt").write_text(result.stdout + result.stderr)


@pytest.fixture(scope="session")
def main_job(tmp_path_factory) -> dict[int, Path]:
    """``{jobs: folder}``: the two runs of ``_main_job_twice``, made once for the whole test run; tests only read
    them (each folder holds ``checkpoints/``, ``data/`` and the job's output in ``stdout.txt``)."""
    folder = built_once(tmp_path_factory, "main-job", _main_job_twice)
    return {jobs: folder / f"jobs{jobs}" for jobs in (2, 1)}


@pytest.mark.slow
def test_the_main_job_trains_the_recipe_evaluates_it_and_leaves_a_searchable_index(tmp_path, corpus, main_job):
    run = main_job[2]  # side by side, as on a machine of two cores or more
    held_out = Corpus(corpus.queries[1::2], corpus.passages)
    out = (run / "stdout.txt").read_text()
    # a teacher that is not here: one line, and today's recipe without it
    teacher = run.parent / "no-such-teacher"
    assert f"warning: no teacher ({teacher}: no such teacher model folder); training today's recipe without " \
           "one" in out.splitlines()
    assert "--distill-weight" not in out
    for made in (run / "data").glob("msmarco_triplets_*_metadata.json"):
        assert json.loads(made.read_text())["teacher"] is None
    for stage in ("CBOW word vectors", "triplets: judged pairs", "two-tower that labels the --label-queries, seed 1",
                  "triplets: the --label-queries labelled by that model and BM25, plus the triplets above",
                  "two-tower, seed 1", "two-tower, seed 2",
                  "the average of the 2 seeds' weights", "index the evaluation collection", "evaluate against BM25"):
        assert f"== {stage}" in out
    # the final models trained on the self-training pairs as well
    labelled = next((run / "data").glob("msmarco_triplets_selftrain_*_metadata.json"))
    assert json.loads(labelled.read_text())["pseudo_labelled"] > 0
    # the commands are printed as this user runs them: the repository's scripts, from the shell script
    assert "$ uv run training/train_two_tower_from_triplets.py " in out
    assert "Next:" not in out.split("== evaluate against BM25")[0]  # the job runs each next stage itself
    final = next(m for m in (run / "checkpoints").glob("two_tower_model_*.pt") if "_seed" not in m.name
                 and "_labeller" not in m.name)
    assert next_command(out) == (SEARCH_SCRIPT, ["query", str(final), "--system", "all", DEMO_QUERY])

    models = sorted(m for m in (run / "checkpoints").glob("two_tower_model_*.pt") if "_labeller" not in m.name)
    final = [m for m in models if "_seed" not in m.name]
    assert len(final) == 1 and len(models) == 3
    model = load_model(final[0])
    assert [Path(p).name for p in model.metadata["averaged_from"]] == [m.name for m in models if "_seed" in m.name]
    assert model.config.shared_towers  # the recipe's settings reached the training stage

    # the CBOW corpus holds the passages but none of the evaluation queries
    corpus_file = next((run / "data").glob("pipeline_corpus_*/collection.tsv"))
    lines = {line.split("\t", 1)[1] for line in corpus_file.read_text().splitlines()}
    assert {" ".join(text.split()) for _, text, _ in corpus.passages} <= lines
    evaluated = {text for _, text, _ in held_out.queries}
    assert not evaluated & lines
    assert {text for _, text, _ in corpus.queries[::2]} - evaluated <= lines

    # the scoreboard: evaluation.json with the systems, and the model learnt something on unseen queries
    report = json.loads((final[0].with_name(f"{final[0].stem}_evaluation") / "evaluation.json").read_text())
    metrics = report["tasks"]["full"]["metrics"]
    assert {"bm25", "two-tower[recipe]"} <= set(metrics)
    assert metrics["two-tower[recipe]"]["nDCG@10"] > 0.5
    # the fixture's query halves share a few texts by chance: the workflow drops those from the triplets, so no
    # evaluation query was trained on, and the evaluation, which checks, finds none
    trained = {text for _, text, _ in corpus.queries[::2]}
    assert {text for _, text, _ in held_out.queries} & trained
    overlap = report["tasks"]["full"]["training_overlap"]["two-tower[recipe]"]
    assert overlap == {"queries": 0, "query_ids": []}
    assert "LEAK" not in out

    # the printed search command works on the index the workflow built
    assert f"uv run search/search.py query {final[0]} " in out
    _, query, topic = held_out.queries[0]
    hits = run_script("search/search.py", "query", final[0], "-k", "3", query, cwd=tmp_path).stdout
    shown = [line.split()[1] for line in hits.splitlines() if line.strip()[:1].isdigit()]
    topic_pids = {pid for pid, _, t in corpus.passages if t == topic}
    assert len(shown) == 3 and shown[0] in topic_pids, hits
    assert torch.load(final[0], weights_only=True)["kind"] == "two-tower-model"


@pytest.mark.slow
def test_the_main_job_gives_the_same_model_and_scores_side_by_side_and_one_stage_at_a_time(main_job):
    """CBOW on one thread and each seed on one thread: run twice, side by side (CBOW beside the triplets, the
    seeds beside each other) and one stage at a time, the job writes the same vectors, weights and scores."""
    side_by_side, one_at_a_time = ((main_job[jobs] / "stdout.txt").read_text() for jobs in (2, 1))
    # side by side: each heading and output line names its lane; one at a time: plain headings
    assert "== CBOW word vectors [1]" in side_by_side and "== triplets: judged pairs [2]" in side_by_side
    assert "== two-tower, seed 1 [1]" in side_by_side and "== two-tower, seed 2 [2]" in side_by_side
    assert "[2] " in side_by_side and "side by side (wall time)" in side_by_side
    assert "== CBOW word vectors\n" in one_at_a_time and "side by side" not in one_at_a_time

    def saved(checkpoints: Path) -> tuple[dict, dict, dict]:
        final = next(m for m in checkpoints.glob("two_tower_model_*.pt") if "_seed" not in m.name
                     and "_labeller" not in m.name)
        report = json.loads((final.with_name(f"{final.stem}_evaluation") / "evaluation.json").read_text())
        vectors = torch.load(checkpoints / "msmarco_word2vec.pt", weights_only=True)["embeddings"]
        return ({"vectors": vectors}, torch.load(final, weights_only=True)["state_dict"],
                report["tasks"]["full"]["metrics"])

    (vectors_a, weights_a, metrics_a), (vectors_b, weights_b, metrics_b) = (
        saved(main_job[jobs] / "checkpoints") for jobs in (2, 1))
    assert torch.equal(vectors_a["vectors"], vectors_b["vectors"])
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[name], weights_b[name]) for name in weights_a)
    assert metrics_a == metrics_b and "two-tower[recipe]" in metrics_a


def test_the_main_job_refuses_bad_evaluation_files_before_any_work(tmp_path, corpus):
    train = write_tsv_folder(Corpus(corpus.queries[::2], corpus.passages), tmp_path / "train", split="train")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "collection.tsv").write_text("p1\tsome passage\n")
    env = {**os.environ, "PYTHON": sys.executable, "MSMARCO_SEARCH_NO_PROGRESS": "1"}
    for extra, message in ((["--evaluate-on", empty], "--evaluate-on needs a collection, a queries file and a qrels"),
                           (["--extra-text", tmp_path / "missing.tsv"], "missing.tsv: --extra-text file not found")):
        result = subprocess.run(["bash", str(ROOT / "scripts" / "run_pipeline.sh"), "--dataset-path", str(train),
                                 *map(str, extra), "--output-dir", str(tmp_path / "out"), "--data-dir",
                                 str(tmp_path / "data")], capture_output=True, text=True, env=env, timeout=300)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert message in result.stderr.strip().splitlines()[-1]
        assert not (tmp_path / "data").exists() or not any((tmp_path / "data").iterdir())


def test_the_cbow_corpus_drops_evaluation_queries_however_they_are_written(tmp_path):
    """The corpus filter compares tokens, as the leak check does: case, punctuation and spacing hide no copy."""
    from types import SimpleNamespace

    from msmarco_search.cli.pipeline import corpus_lines
    from msmarco_search.data.tsv import TsvFiles

    (tmp_path / "queries.tsv").write_text("q1\tWhat is a lobster roll?\nq2\tcauses of  anemia\n")
    (tmp_path / "collection.tsv").write_text("p1\tA lobster roll is a sandwich.\np2\tWHAT is a Lobster-Roll\n")
    extra = tmp_path / "extra.tsv"
    extra.write_text("x1\tcauses of anemia!\nx2\tcauses of anemia in dogs\n")
    source = SimpleNamespace(corpus_texts=lambda: iter(["what is a lobster roll", "a   training  text"]))
    evaluation = TsvFiles(collection=tmp_path / "collection.tsv", queries=tmp_path / "queries.tsv")
    assert list(corpus_lines(source, evaluation, [extra])) == [
        "a training text", "A lobster roll is a sandwich.", "causes of anemia in dogs"]


def test_a_damaged_cached_cbow_corpus_is_rebuilt_not_reused(tmp_path, capsys):
    """The workflow reuses its CBOW corpus only while the file matches the record written after it."""
    from types import SimpleNamespace

    from msmarco_search.cli.pipeline import write_corpus

    source = SimpleNamespace(corpus_texts=lambda: iter(["first text", "second  text"]), identity=lambda: "fixture")
    workflow = SimpleNamespace(args=SimpleNamespace(extra_text=[]), source=source, data_dir=tmp_path)
    path = write_corpus(workflow, None)
    assert path.read_text() == "t0\tfirst text\nt1\tsecond text\n"
    assert json.loads(path.with_suffix(".json").read_text())["texts"] == 2
    assert write_corpus(workflow, None) == path and "corpus: reusing" in capsys.readouterr().out
    path.write_text("t0\tfirst text\n")  # cut short (a killed copy, a full disk)
    write_corpus(workflow, None)
    assert "does not match its record" in capsys.readouterr().err
    assert path.read_text() == "t0\tfirst text\nt1\tsecond text\n"


@pytest.mark.slow
def test_a_failing_stage_side_by_side_stops_the_job_with_one_line_naming_it(tmp_path, capsys):
    """The first stage to fail stops the other lane's (a CBOW of minutes here) and the error names it; its own
    message is above, after its lane's number."""
    import random
    from types import SimpleNamespace

    import pytest

    from msmarco_search.cli.pipeline import Stage, Workflow
    from msmarco_search.core.errors import PipelineError

    words = [f"word{i}" for i in range(200)]
    rng = random.Random(0)
    (tmp_path / "collection.tsv").write_text("".join(f"p{i}\t{' '.join(rng.choices(words, k=30))}\n"
                                                     for i in range(2000)))
    slow = tmp_path / "slow"
    workflow = Workflow(SimpleNamespace(jobs=2, data_dir=tmp_path, output_dir=tmp_path), source=None)
    with pytest.raises(PipelineError, match=r"stage 'CBOW, a missing file' failed \(exit status 2\).*after \[1\]$"):
        workflow.run_side_by_side([
            [Stage("CBOW, a missing file", "cbow", ["--dataset-path", tmp_path / "missing.tsv"])],
            [Stage("CBOW of minutes", "cbow", ["--dataset-path", tmp_path / "collection.tsv", "-c", slow,
                                               "--data-dir", tmp_path / "data", "--epochs", 1_000,
                                               "--min-count", 1, "--workers", 1, "--no-word-benchmarks"])],
            [Stage("never started", "cbow", ["--help"])]])
    out = capsys.readouterr().out
    assert "== CBOW, a missing file [1]" in out and "== CBOW of minutes [2]" in out
    assert any(line.startswith("[1] error: ") and "missing.tsv" in line for line in out.splitlines())
    assert "[2] Training completed" not in out and not (slow / "msmarco_word2vec.pt").exists()  # stopped
    assert "never started" not in out  # the third lane waited for a job slot and then saw the failure
    assert [name for name, _ in workflow.timings][-1] == "the 3 lanes above, side by side (wall time)"


def test_each_stage_runs_from_the_package_and_is_shown_as_the_user_started_the_job(monkeypatch):
    """A stage runs as this interpreter's ``-m msmarco_search COMMAND`` (no path of the repository), and is
    printed as the command the user types: ``msmarco-train`` under ``msmarco-pipeline``, ``python -m
    msmarco_search train`` under ``python -m msmarco_search pipeline`` (and scripts/run_pipeline.sh)."""
    from msmarco_search.cli.pipeline import Stage
    from msmarco_search.core import commands

    stage = Stage("two-tower, seed 1", "train", [Path("t.pkl"), "--seed", 1])
    assert stage.argv() == [sys.executable, "-m", "msmarco_search", "train", "t.pkl", "--seed", "1"]
    monkeypatch.setattr(commands, "_form", commands.CONSOLE)  # how this process was started, restored after
    assert stage.shown() == "msmarco-train t.pkl --seed 1"
    commands.started_as(commands.MODULE)
    assert stage.shown() == "python -m msmarco_search train t.pkl --seed 1"
    monkeypatch.setenv(commands.SHOWN_AS, commands.SCRIPT)  # what scripts/run_pipeline.sh sets
    assert stage.shown() == "uv run training/train_two_tower_from_triplets.py t.pkl --seed 1"
    assert stage.argv() == [sys.executable, "-m", "msmarco_search", "train", "t.pkl", "--seed", "1"]
    # --help's examples follow the same rule
    example = "uv run torchrun --nproc-per-node 2 search/search.py index m.pt\n  uv run search/search.py query m.pt"
    assert commands.with_commands(example) == example
    monkeypatch.delenv(commands.SHOWN_AS)
    assert commands.with_commands(example) == ("torchrun --nproc-per-node 2 -m msmarco_search search index m.pt\n"
                                               "  python -m msmarco_search search query m.pt")
