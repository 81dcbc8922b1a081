"""Small MS MARCO-format fixtures built on the fly, and a function that runs the scripts as a user does."""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import random
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

from msmarco_search.core.commands import DEMO_QUERY

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

# the tests never touch the network: a hub name (the main job's default teacher) is read from the local cache
# or is unavailable, at once, in this process and in every command it starts (tests of the hub itself unset it)
os.environ["HF_HUB_OFFLINE"] = "1"

FILLER = "the a of and to in is for on with as by at from that this it are be".split()


@dataclass
class Corpus:
    """A synthetic corpus with a learnable signal: queries and passages of a topic use different words.

    Query words never appear in passages, so CBOW alone cannot link a query to its passages, but a trained
    two-tower model can (each topic's query words always go with that topic's passage words).
    """

    queries: list[tuple[str, str, int]]  # (query id, text, topic)
    passages: list[tuple[str, str, int]]  # (passage id, text, topic)


def make_corpus(topics: int = 12, queries_per_topic: int = 20, passages_per_topic: int = 10,
                seed: int = 0) -> Corpus:
    rng = random.Random(seed)
    query_words = {t: [f"ask{t}x{k}" for k in range(5)] for t in range(topics)}
    passage_words = {t: [f"doc{t}y{k}" for k in range(8)] for t in range(topics)}
    queries, passages = [], []
    for t in range(topics):
        for i in range(passages_per_topic):
            words = rng.choices(passage_words[t], k=10) + rng.choices(FILLER, k=8)
            rng.shuffle(words)
            passages.append((str(1000 + t * passages_per_topic + i), " ".join(words).capitalize() + ".", t))
        for i in range(queries_per_topic):
            words = ["what", "is"] + rng.sample(query_words[t], 3)
            queries.append((str(t * queries_per_topic + i), " ".join(words), t))
    return Corpus(queries, passages)


def write_rows(corpus: Corpus, path: Path, per_query: int = 6, seed: int = 1) -> Path:
    """The corpus in the Hugging Face ``microsoft/ms_marco`` row layout, one JSON object per line."""
    rng = random.Random(seed)
    by_topic: dict[int, list[str]] = {}
    for _, text, topic in corpus.passages:
        by_topic.setdefault(topic, []).append(text)
    with open(path, "w") as handle:
        for qid, query, topic in corpus.queries:
            positives = rng.sample(by_topic[topic], 2)
            others = [text for t, texts in by_topic.items() if t != topic for text in texts]
            negatives = rng.sample(others, per_query - 2)
            texts = positives + negatives
            selected = [1, 1] + [0] * len(negatives)
            row = {"query": query, "query_id": int(qid), "query_type": "description", "answers": [],
                   "wellFormedAnswers": [],
                   "passages": {"is_selected": selected, "passage_text": texts,
                                "url": [f"http://example.com/{i}" for i in range(len(texts))]}}
            handle.write(json.dumps(row) + "\n")
    return path


def write_tsv_folder(corpus: Corpus, folder: Path, split: str = "train", candidates: bool = True,
                     per_query: int = 6, seed: int = 1) -> Path:
    """The corpus as official passage-ranking files: collection, queries, qrels and a top1000 file."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "collection.tsv").write_text("".join(f"{pid}\t{text}\n" for pid, text, _ in corpus.passages))
    (folder / f"queries.{split}.tsv").write_text("".join(f"{qid}\t{text}\n" for qid, text, _ in corpus.queries))
    by_topic: dict[int, list[tuple[str, str]]] = {}
    for pid, text, topic in corpus.passages:
        by_topic.setdefault(topic, []).append((pid, text))
    qrels, top = [], []
    for qid, query, topic in corpus.queries:
        positives = rng.sample(by_topic[topic], 2)
        others = [p for t, ps in by_topic.items() if t != topic for p in ps]
        for pid, _ in positives:
            qrels.append(f"{qid} 0 {pid} 1\n")
        for pid, text in positives[:1] + rng.sample(others, per_query - 1):
            top.append(f"{qid}\t{pid}\t{query}\t{text}\n")
    (folder / f"qrels.{split}.tsv").write_text("".join(qrels))
    if candidates:
        (folder / f"top1000.{split}.tsv").write_text("".join(top))
    return folder


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """A folder that ``build`` fills once per test run, in whichever pytest-xdist worker asks first.

    Session fixtures are per worker; this one is shared by all of them (the workers' temporary folders have one
    parent), so a minutes-long fixture is built once and the tests that read it may run anywhere. A worker that
    asks while another builds it waits for the lock. Tests only read it; one that writes copies it first.
    """
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    folder = root / f"built-once-{name}"
    with open(root / f"built-once-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also when build fails
        if not (folder / ".complete").exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            (folder / ".complete").touch()
    return folder


@pytest.fixture(scope="session")
def corpus() -> Corpus:
    return make_corpus()


@pytest.fixture(scope="session")
def rows_file(tmp_path_factory, corpus) -> Path:
    return write_rows(corpus, tmp_path_factory.mktemp("rows") / "train.jsonl")


@pytest.fixture(scope="session")
def tsv_folder(tmp_path_factory, corpus) -> Path:
    return write_tsv_folder(corpus, tmp_path_factory.mktemp("tsv") / "msmarco")


LETTERS = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]


@pytest.fixture(scope="session")
def teacher_folder(tmp_path_factory) -> Path:
    """A tiny sentence-transformers model, built offline: a 2-layer, 32-d BERT over a vocabulary of letters and
    digits, mean-pooled and normalised, saved as model.safetensors with its modules.json (a teacher)."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    work = tmp_path_factory.mktemp("teacher")
    bert = work / "bert"
    bert.mkdir()
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *LETTERS, *(f"##{c}" for c in LETTERS), *".,?!"]
    (bert / "vocab.txt").write_text("\n".join(words) + "\n")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(bert, safe_serialization=True)
    BertTokenizerFast(vocab_file=str(bert / "vocab.txt"), do_lower_case=True).save_pretrained(bert)
    transformer = Transformer(str(bert), max_seq_length=64)
    model = SentenceTransformer(modules=[transformer, Pooling(transformer.get_embedding_dimension(), "mean"),
                                         Normalize()], device="cpu")
    folder = work / "tiny-teacher"
    model.save(str(folder), safe_serialization=True)
    return folder


def next_command(stdout: str) -> tuple[str, list[str]]:
    """The repository script and arguments of the command a stage printed under ``Next:`` at its end, as a user
    reads it (``uv run SCRIPT ARGS``)."""
    lines = stdout.splitlines()
    assert "Next:" in lines, f"no Next: command at the end of\n{stdout}"
    words = shlex.split(lines[lines.index("Next:") + 1])
    assert words[:2] == ["uv", "run"], words
    return words[2], words[3:]


def run_script(script: str, *args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """Run one of the project's scripts with this interpreter, as ``uv run script.py args`` would."""
    env = {**os.environ, "MSMARCO_SEARCH_NO_PROGRESS": "1", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"{script} exited {result.returncode}\nstdout:\n{result.stdout}\n"
                             f"stderr:\n{result.stderr}")
    return result


_SCRIPT_MODULES: dict[str, ModuleType] = {}


def _script_module(path: str) -> ModuleType:
    """The script as a module (scripts are files, not package modules), loaded once."""
    if path not in _SCRIPT_MODULES:
        spec = importlib.util.spec_from_file_location(f"script_{Path(path).stem}", ROOT / path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # as importing does: a script's dataclasses look their module up there
        spec.loader.exec_module(module)
        _SCRIPT_MODULES[path] = module
    return _SCRIPT_MODULES[path]


def cli(capsys: pytest.CaptureFixture[str], script: str, *args: object) -> tuple[int, str, str]:
    """Run ``script``'s main with ``args`` the way ``python script.py args`` does: (exit status, stdout, stderr)."""
    from msmarco_search.cli import run
    from msmarco_search.core.commands import SCRIPT

    module = _script_module(script)
    with pytest.raises(SystemExit) as stop:
        run(module.main, [str(a) for a in args], form=SCRIPT)
    captured = capsys.readouterr()
    return stop.value.code, captured.out, captured.err


def run_main(capsys: pytest.CaptureFixture[str], script: str, *args: object, cwd: Path,
             check: bool = True) -> subprocess.CompletedProcess:
    """``run_script`` in this process: ``cli`` in the folder ``cwd`` with progress bars off, as a CompletedProcess.

    For runs whose output is the point, not the process: a fresh interpreter costs seconds of imports (torch,
    sentence-transformers) that this process has already paid. Each command still runs as a real process in
    the tests where its exit status or the absence of a traceback is the point.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)
        patch.setenv("MSMARCO_SEARCH_NO_PROGRESS", "1")
        status, out, err = cli(capsys, script, *args)
    if check and status != 0:
        raise AssertionError(f"{script} exited {status}\nstdout:\n{out}\nstderr:\n{err}")
    return subprocess.CompletedProcess([script, *map(str, args)], status, out, err)


def assert_one_line_error(result: tuple[int, str, str], *words: str) -> str:
    """The project's answer to bad input: exit status 2 and one line, ``error: ...``, holding each of ``words``."""
    status, _, err = result
    lines = err.strip().splitlines()
    assert status == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def assert_usage_error(result: tuple[int, str, str], *words: str) -> str:
    """argparse's answer: the usage line, then ``prog: error: argument --flag: problem``, exit 2."""
    status, _, err = result
    assert status == 2 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert "error: argument" in last, err
    for word in words:
        assert word in last, (word, last)
    return last


# the smallest CBOW run the commands accept: one epoch of 8-dimensional vectors on one reproducible thread
CBOW_TINY = ("--min-count", "1", "--vector-size", "8", "--epochs", "1", "--workers", "1")


@pytest.fixture
def work(tmp_path, monkeypatch) -> Path:
    """A fresh folder the test runs in, as a user's working folder, with progress bars off."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MSMARCO_SEARCH_NO_PROGRESS", "1")
    return tmp_path


@contextmanager
def claim_held_by_another_process(path: Path) -> Iterator[subprocess.Popen]:
    """A second process that holds ``outputs.claim(path)``, as a run writing ``path`` does; SIGKILLed on exit
    (its marker stays behind, its lock goes with it, as when a real run is killed)."""
    ready = path.with_name(f".{path.name}.held")
    code = ("import pathlib, sys, time\nfrom msmarco_search.io.outputs import claim\n"
            "assert claim(sys.argv[1])\npathlib.Path(sys.argv[2]).touch()\ntime.sleep(600)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(path), str(ready)])
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and holder.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists(), "the holder never took its claim"
        ready.unlink()
        yield holder
    finally:
        holder.kill()
        holder.wait()


CBOW_SCRIPT = "text_embeddings/train_text_embeddings_cbow_msmarco.py"
TRIPLETS_SCRIPT = "preprocessing/generate_triplets.py"
TRAIN_SCRIPT = "training/train_two_tower_from_triplets.py"
SEARCH_SCRIPT = "search/search.py"


@pytest.fixture(scope="session")
def trained_pipeline(tmp_path_factory, rows_file) -> dict[str, Path]:
    """CBOW, triplets and a two-tower model made through the command line on the rows fixture (run once)."""
    work = tmp_path_factory.mktemp("pipeline")
    cbow = run_script(CBOW_SCRIPT, "--dataset-path", rows_file, "--min-count", "1", "--epochs", "5",
                      "--vector-size", "32", "--workers", "1", cwd=work)  # one worker: gensim is reproducible only so
    # each stage is started as the one before printed it (a user adds the flags after it)
    script, arguments = next_command(cbow.stdout)
    assert (script, arguments) == (TRIPLETS_SCRIPT, ["--dataset-path", str(rows_file)])
    made = run_script(script, *arguments, "--max-samples", "1000", cwd=work)
    triplets = next((work / "data").glob("msmarco_triplets_*.pkl"))
    script, arguments = next_command(made.stdout)
    assert script == TRAIN_SCRIPT and work / arguments[0] == triplets
    trained = run_script(script, *arguments, "--epochs", "8", "--batch-size", "32", "--learning-rate", "3e-3",
                         cwd=work)
    model = next((work / "checkpoints").glob("two_tower_model_*.pt"))
    assert next_command(trained.stdout) == (SEARCH_SCRIPT, ["index", str(model.relative_to(work)),
                                                            "--dataset-path", str(rows_file)])
    return {"work": work, "embeddings": work / "checkpoints" / "msmarco_word2vec.pt", "triplets": triplets,
            "model": model, "rows": rows_file}


@pytest.fixture(scope="session")
def search_setup(tmp_path_factory, trained_pipeline) -> dict:
    """A collection where each topic of the training corpus has exactly one passage (``p<topic>``), among
    filler-only distractors, indexed through the command line beside a copy of the trained model.

    Queries: ``q*`` are the corpus's own queries (topic words a query uses, never seen in passages: only a
    trained two-tower links them to ``p<topic>``), ``s*`` six of ``p<topic>``'s topic words (BM25 finds it), and
    ``m*`` both together (every system should find it).
    """
    folder = tmp_path_factory.mktemp("search")
    corpus = make_corpus()
    rng = random.Random(5)
    passages: dict[int, str] = {}
    for _, text, topic in corpus.passages:
        passages.setdefault(topic, text)
    lines = [f"p{topic}\t{text}" for topic, text in sorted(passages.items())]
    lines += [f"f{i}\t" + " ".join(rng.choices(FILLER, k=14)).capitalize() + "." for i in range(40)]
    (folder / "collection.tsv").write_text("\n".join(lines) + "\n")
    queries, qrels = {}, {}
    for qid, query, topic in corpus.queries:
        queries[f"q{qid}"], qrels[f"q{qid}"] = query, f"p{topic}"
    for topic, text in passages.items():
        # the passage's own topic words (not its filler), so the query is about this passage and no distractor
        span = " ".join([w for w in text.rstrip(".").split() if w.lower() not in FILLER][:6])
        ask = next(query for _, query, t in corpus.queries if t == topic)
        queries[f"s{topic}"], qrels[f"s{topic}"] = span, f"p{topic}"
        queries[f"m{topic}"], qrels[f"m{topic}"] = f"{ask} {span}", f"p{topic}"
    (folder / "queries.tsv").write_text("".join(f"{qid}\t{text}\n" for qid, text in queries.items()))
    (folder / "qrels.txt").write_text("".join(f"{qid} 0 {pid} 1\n" for qid, pid in qrels.items()))
    model = folder / "model.pt"
    shutil.copy(trained_pipeline["model"], model)
    indexed = run_script(SEARCH_SCRIPT, "index", model, "--dataset-path", folder / "collection.tsv",
                         "--faiss", "flat", "--batch-size", "16", cwd=folder)
    assert next_command(indexed.stdout) == (SEARCH_SCRIPT, ["query", str(model), DEMO_QUERY])
    return {"folder": folder, "model": model, "index": folder / "model_index", "queries": queries, "qrels": qrels,
            "passages": passages, "index_stdout": indexed.stdout, "lines": lines}


def hits_by_system(stdout: str) -> dict[str, list[list[str]]]:
    """``{system: [[pid, ...] per query block]}`` from the printed hit lists."""
    blocks: dict[str, list[list[str]]] = {}
    current = None
    for line in stdout.splitlines():
        if line.startswith("["):
            current = []
            blocks.setdefault(line[1:line.index("]")], []).append(current)
        elif current is not None and line.strip() and line.split()[0].isdigit():
            current.append(line.split()[1])
    return blocks


def pytest_collection_modifyitems(config, items):
    """The slow tests first, and those on ../shared/data opt-in (set MSMARCO_REAL_DATA=1 to run them).

    Slow first, the main job's two runs (minutes) first of all: pytest-xdist's workers start on the longest tests
    and end together on short ones, instead of one worker starting the main job when the other has nothing left
    to do. The sort is stable: each file's order is kept otherwise.
    """
    items.sort(key=lambda item: (item.get_closest_marker("slow") is None,
                                 "main_job" not in getattr(item, "fixturenames", ())))
    if os.environ.get("MSMARCO_REAL_DATA") == "1":
        return
    skip = pytest.mark.skip(reason="real-data test; set MSMARCO_REAL_DATA=1 to run it")
    for item in items:
        if "real_data" in item.keywords:
            item.add_marker(skip)
