"""Numbers without bounds and inputs whose size explodes, through the command lines and the search API.

Every numeric flag takes a bounded type from ``msmarco_search.cli.arguments`` (argparse refuses a value outside its
range before any work: usage line, ``error: argument --x: ...``, exit 2); numbers read back from JSON files are
refused by ``safe_load.parse_json`` when no reader can hold them; memory follows the distinct data (tokenising,
empty queries, one huge line), and settings whose product outgrows the machine are refused before the work
(``resources.check_memory``). docs/reliability.md lists each case with the line the user sees.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, SEARCH_SCRIPT, TRAIN_SCRIPT, run_script
from conftest import assert_one_line_error as one_line_error
from conftest import assert_usage_error as usage_error

from msmarco_search.cli import cbow, evaluate, pipeline, run, search, train, triplets
from msmarco_search.core import resources
from msmarco_search.data.triplets import Triplets, save_triplets
from msmarco_search.io.safe_load import KIND_TRAINING_STATE, load_torch, save_torch

HUGE = "9" * 5000  # beyond Python's 4,300-digit limit for int()
TERA = "1000000000000"


@pytest.fixture(autouse=True)
def _no_progress_bars(monkeypatch):
    monkeypatch.setenv("MSMARCO_SEARCH_NO_PROGRESS", "1")  # as the scripts run in conftest.run_script


def _benchmark(name: str):
    """A benchmark script as a module (scripts are files, not package modules)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def cli(capsys, main, *args) -> tuple[int, str, str]:
    """``main(args)`` as its script runs it (through ``cli.run``): (exit status, stdout, stderr)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        run(main, [str(a) for a in args])
    out, err = capsys.readouterr()
    return stop.value.code, out, err




# ------------------------------------------------------------------------------------------------ flags

# (command, arguments before the flag, flag, a value beyond its range, what the error says)
FLAGS = [
    (cbow, [], "--vector-size", "10001", "at most 10,000"),
    (cbow, [], "--window", TERA, "at most 10,000"),
    (cbow, [], "--epochs", "10001", "at most 10,000"),
    (cbow, [], "--workers", "1025", "at most 1,024"),
    (cbow, [], "--min-count", "2147483648", "at most 2,147,483,647"),
    (cbow, [], "--max-samples", HUGE, "at most 2,147,483,647"),
    (cbow, [], "--seed", "4294967296", "at most 4,294,967,295"),
    (cbow, [], "--min-relevance", TERA, "at most 2,147,483,647"),
    (triplets, [], "--ict-per-passage", "100000000", "at most 100"),
    (triplets, [], "--ict-keep-query", "1.5", "between 0 and 1"),
    (triplets, [], "--ict-keywords", "nan", "between 0 and 1"),
    (triplets, [], "--pseudo-agree-depth", TERA, "at most 2,147,483,647"),
    (triplets, [], "--max-samples", TERA, "at most 2,147,483,647"),
    (train, ["t.pkl"], "--epochs", "10001", "at most 10,000"),
    (train, ["t.pkl"], "--batch-size", "65537", "at most 65,536"),
    (train, ["t.pkl"], "--learning-rate", "1e300", "at most 10"),
    (train, ["t.pkl"], "--embedding-learning-rate", "11", "at most 10"),
    (train, ["t.pkl"], "--num-workers", "100000", "one process per core"),
    (train, ["t.pkl"], "--threads", TERA, "at most 1,024"),
    (train, ["t.pkl"], "--output-dim", "10001", "at most 10,000"),
    (train, ["t.pkl"], "--gru-hidden-dim", TERA, "at most 10,000"),
    (train, ["t.pkl"], "--max-query-length", HUGE, "at most 2,147,483,647"),
    (train, ["t.pkl"], "--max-passage-length", TERA, "at most 2,147,483,647"),
    (train, ["t.pkl"], "--scale", "1e300", "at most 1,000"),
    (train, ["t.pkl"], "--margin", "3", "at most 2"),
    (train, ["t.pkl"], "--log-every", TERA, "at most 2,147,483,647"),
    (train, ["t.pkl"], "--checkpoint-every", TERA, "at most 2,147,483,647"),
    (train, ["t.pkl"], "--max-steps", TERA, "at most 2,147,483,647"),
    (train, ["t.pkl"], "--validation-fraction", "1", "below 1"),
    (train, ["t.pkl"], "--validation-queries", TERA, "at most 2,147,483,647"),
    (train, ["t.pkl"], "--validate-every", TERA, "at most 2,147,483,647"),
    (search, ["query", "m.pt", "x"], "-k", TERA, "at most 2,147,483,647"),
    (search, ["query", "m.pt", "x"], "--batch-size", "65537", "at most 65,536"),
    (search, ["query", "m.pt", "x"], "--chunk-rows", TERA, "at most 2,147,483,647"),
    (search, ["query", "m.pt", "x"], "--nprobe", TERA, "at most 2,147,483,647"),
    (search, ["query", "m.pt", "x"], "--ef-search", TERA, "at most 2,147,483,647"),
    (search, ["query", "m.pt", "x"], "--refine", TERA, "at most 2,147,483,647"),
    (search, ["query", "m.pt", "x"], "--rrf-k", TERA, "at most 2,147,483,647"),
    (search, ["query", "m.pt", "x"], "--fusion-depth", TERA, "at most 2,147,483,647"),
    (search, ["query", "m.pt", "x"], "--feedback-depth", TERA, "at most 2,147,483,647"),
    (search, ["query", "m.pt", "x"], "--feedback-weight", "1e30", "at most 1,000,000"),
    (search, ["query", "m.pt", "x"], "--fusion-weight", "2", "between 0 and 1"),
    (search, ["query", "m.pt", "x"], "--bm25-k1", "1e300", "at most 1,000"),
    (search, ["query", "m.pt", "x"], "--snippet", TERA, "at most 2,147,483,647"),
    (search, ["index", "m.pt"], "--batch-size", TERA, "at most 65,536"),
    (search, ["index", "m.pt"], "--max-passages", TERA, "at most 2,147,483,647"),
    (search, ["index", "m.pt"], "--hnsw-m", "257", "at most 256"),
    (search, ["faiss", "m.pt", "--faiss", "ivf"], "--ivf-lists", TERA, "at most 2,147,483,647"),
    (search, ["faiss", "m.pt", "--faiss", "ivfpq"], "--pq-m", TERA, "at most 2,147,483,647"),
    (search, ["serve", "m.pt"], "--port", "70000", "0 to 65535"),
    (evaluate, [], "--run-depth", TERA, "at most 2,147,483,647"),
    (evaluate, [], "--random-seeds", TERA, "at most 2,147,483,647"),
    (evaluate, [], "--max-queries", HUGE, "at most 2,147,483,647"),
    (evaluate, [], "--relevance-threshold", TERA, "the largest qrels grade"),
    (evaluate, [], "--feedback-weight", "inf", "finite number"),
    (pipeline, [], "--epochs", "10001", "at most 10,000"),
    (pipeline, [], "--batch-size", "65537", "at most 65,536"),
    (pipeline, [], "--cbow-epochs", "10001", "at most 10,000"),
    (pipeline, [], "--cbow-window", TERA, "at most 10,000"),
    (pipeline, [], "--vector-size", "10001", "at most 10,000"),
    (pipeline, [], "--min-count", TERA, "at most 2,147,483,647"),
    (pipeline, [], "--ict-per-passage", "100000000", "at most 100"),
    (pipeline, [], "--cbow-workers", "1025", "at most 1,024"),
    (pipeline, [], "--jobs", "100000", "at most 1,024"),
]


@pytest.mark.parametrize("command, before, flag, value, problem", FLAGS,
                         ids=[f"{c.__name__.rsplit('.', 1)[-1]}{f}" for c, _, f, _, _ in FLAGS])
def test_every_numeric_flag_has_an_upper_bound(capsys, tmp_path, monkeypatch, command, before, flag, value,
                                               problem):
    monkeypatch.chdir(tmp_path)
    line = usage_error(cli(capsys, command.main, *before, flag, value), f"argument {flag}", problem)
    assert len(line) < 300  # a 5,000-digit value is shown cut short


def test_the_main_jobs_positional_count_and_seeds_are_bounded(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    usage_error(cli(capsys, pipeline.main, TERA), "argument sample_size", "at most 2,147,483,647")
    usage_error(cli(capsys, pipeline.main, "--seeds", "1,4294967296"), "argument --seeds", "at most 4,294,967,295")


def test_benchmark_flags_are_bounded(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cases = [("faiss_sweep", ["m.pt", "idx", "--nprobe", f"16,{TERA}"], "--nprobe"),
             ("faiss_copies", ["m.pt", "idx", "--queries", "q.tsv", "--lists", TERA], "--lists"),
             ("run_all", ["--cbow-epochs", "10001"], "--cbow-epochs"),
             ("make_dataset", ["--output", "x.jsonl", "--seed", "4294967296"], "--seed"),
             ("train_throughput", ["--triplets", "t.pkl", "--batch-size", "65537"], "--batch-size"),
             ("train_throughput", ["--triplets", "t.pkl", "--steps", "0"], "--steps")]
    for name, args, flag in cases:
        usage_error(cli(capsys, _benchmark(name).main, *args), f"argument {flag}")


def test_a_flag_that_would_fork_without_end_exits_2_without_a_traceback(tmp_path):
    # --num-workers 100000 would start 100,000 DataLoader processes, each a copy of the program
    result = run_script(TRAIN_SCRIPT, "t.pkl", "--num-workers", "100000", cwd=tmp_path, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "argument --num-workers: must be at most" in result.stderr.strip().splitlines()[-1]
    result = run_script(SEARCH_SCRIPT, "query", "m.pt", "x", "-k", TERA, cwd=tmp_path, check=False)
    assert result.returncode == 2 and "argument -k/--top-k: must be at most 2,147,483,647" in result.stderr


def test_bench_scale_refuses_a_count_before_any_work(tmp_path):
    for count in ("99999999999", "abc"):
        result = subprocess.run(["bash", str(ROOT / "benchmarks" / "bench_scale.sh"), "m.pt", count,
                                 str(tmp_path / "work")], capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and result.stderr.startswith("error: N must be a whole number")
        assert not (tmp_path / "work").exists()


def test_search_depths_beyond_the_passages_are_capped_for_faiss(capsys, search_setup, tmp_path):
    """-k and --ef-search up to faiss's int reach an HNSW and an IVF index: capped by the passages, not an
    OverflowError or a heap of 2**31 entries."""
    for kind in ("hnsw", "ivf"):
        index = tmp_path / kind
        shutil.copytree(search_setup["index"], index)
        assert cli(capsys, search.main, "faiss", search_setup["model"], "--index-dir", index, "--faiss", kind)[0] == 0
        status, out, err = cli(capsys, search.main, "query", search_setup["model"], "--index-dir", index,
                               search_setup["queries"]["m3"], "-k", "2147483647", "--ef-search", "2147483647",
                               "--nprobe", "2147483647")
        assert status == 0, err
        assert out.count("\n") > 40 and "p3" in out  # every passage listed, the topic's own among them


# ----------------------------------------------------------------------------------------- the search API


@pytest.fixture(scope="module")
def client(search_setup):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from msmarco_search.index.load import load_index
    from msmarco_search.search.options import SYSTEMS, SearchOptions
    from msmarco_search.search.server import create_app
    from msmarco_search.search.session import SearchSession, make_retrievers
    from msmarco_search.training.model_file import load_model

    model = load_model(search_setup["model"])
    index = load_index(search_setup["index"], model, search_setup["model"])
    session = SearchSession(index, make_retrievers(list(SYSTEMS), index, model, search_setup["model"],
                                                   SearchOptions()))
    with TestClient(create_app(session), raise_server_exceptions=False) as test_client:
        yield test_client
    session.close()


def test_a_k_of_thousands_of_digits_is_a_400_not_a_500(client):
    api = client.get("/api/search", params={"q": "doc1y1", "k": HUGE})
    assert api.status_code == 400 and api.json()["error"].startswith("k must be a whole number from 1 to 100")
    assert len(api.json()["error"]) < 200
    page = client.get("/", params={"q": "doc1y1", "k": HUGE})
    assert page.status_code == 400 and "k must be a whole number from 1 to 100" in page.text
    empty_form = client.get("/", params={"k": HUGE})  # no query: the form, with its default k
    assert empty_form.status_code == 200 and 'value="10"' in empty_form.text


# ------------------------------------------------------------------------------------ numbers in files


def _edit_json(path: Path, key: str, raw: str) -> None:
    text = path.read_text()
    edited = re.sub(rf'("{key}": )[^,\n]+', lambda match: match.group(1) + raw, text, count=1)
    assert edited != text
    path.write_text(edited)


@pytest.mark.parametrize("file, key, raw, problem", [
    ("manifest.json", "count", HUGE, "the whole number 999999999999999999999... is out of range"),
    ("manifest.json", "dim", "1e999", "the number 1e999 is beyond a 64-bit float"),
    ("manifest.json", "collection_size", "-Infinity", "-Infinity is not a number"),
    ("bm25/bm25.json", "k1", "NaN", "NaN is not a number"),
    ("bm25/bm25.json", "count", "99999999999999999999", "is out of range (at most 19 digits"),
])
def test_numbers_no_reader_can_hold_in_an_index_are_one_line(capsys, search_setup, tmp_path, file, key, raw,
                                                            problem):
    index = tmp_path / "index"
    shutil.copytree(search_setup["index"], index)
    _edit_json(index / file, key, raw)
    line = one_line_error(cli(capsys, search.main, "query", search_setup["model"], "--index-dir", index,
                              "--system", "all", "what"), f"{file}: holds a number out of range", problem)
    assert len(line) < 300


def test_a_row_with_a_query_id_of_thousands_of_digits_is_one_line(capsys, tmp_path, rows_file):
    rows = tmp_path / "rows.jsonl"
    first = rows_file.read_text().splitlines()[0]
    rows.write_text(re.sub(r'"query_id": \d+', f'"query_id": {HUGE}', first) + "\n")
    one_line_error(cli(capsys, triplets.main, "--dataset-path", rows, "--output", tmp_path / "t.pkl"),
                   "rows.jsonl: line 1 holds a number out of range: the whole number 999")


def test_a_cache_record_with_an_impossible_number_is_rebuilt(capsys, tmp_path, monkeypatch, rows_file):
    monkeypatch.chdir(tmp_path)
    flags = ["--dataset-path", rows_file, "--min-count", "1", "--epochs", "1", "--vector-size", "8",
             "--workers", "1", "--no-word-benchmarks"]
    assert cli(capsys, cbow.main, *flags)[0] == 0
    (record,) = (tmp_path / "data").glob("cbow_corpus_*.json")
    _edit_json(record, "bytes", HUGE)
    status, _, err = cli(capsys, cbow.main, *flags)
    assert status == 0 and "Traceback" not in err
    assert "warning:" in err and record.stem in err  # the damaged record is said, the corpus written again
    assert json.loads(record.read_text())["bytes"] == (tmp_path / "data" / f"{record.stem}.txt").stat().st_size


def test_qrels_grades_and_query_ids_of_thousands_of_digits(capsys, tmp_path, tsv_folder):
    qrels = tmp_path / "qrels.txt"
    qrels.write_text(f"1 0 1000 {HUGE}\n")
    common = ["--collection", tsv_folder / "collection.tsv", "--systems", "bm25"]
    one_line_error(cli(capsys, evaluate.main, *common, "--queries", tsv_folder / "queries.train.tsv", "--qrels",
                       qrels, "--output-dir", tmp_path / "a"), "qrels.txt: line 1: relevance 999", "is too large")
    # a query id far past int()'s 4,300 digits: runs are written in natural id order without converting it
    queries = tmp_path / "queries.tsv"
    queries.write_text(f"{HUGE}\tdoc1y1 doc1y2\n7\tdoc2y1\n")
    qrels.write_text(f"{HUGE} 0 1010 2\n7 0 1020 2\n")
    status, _, err = cli(capsys, evaluate.main, *common, "--queries", queries, "--qrels", qrels, "--output-dir",
                         tmp_path / "b")
    assert status == 0, err
    run = (tmp_path / "b" / "run.full.bm25.trec").read_text().splitlines()
    assert run[0].startswith("7 Q0 ") and run[-1].startswith(HUGE)


def test_a_resumed_training_state_with_impossible_numbers_is_one_line(capsys, tmp_path, monkeypatch,
                                                                     trained_pipeline):
    monkeypatch.chdir(tmp_path)
    args = [trained_pipeline["triplets"], "--embeddings", trained_pipeline["embeddings"], "--output",
            tmp_path / "m.pt", "--max-steps", "1", "--checkpoint-every", "1", "--keep-training-state",
            "--validation-fraction", "0", "--data-dir", tmp_path / "data"]
    assert cli(capsys, train.main, *args)[0] == 0
    state_path = tmp_path / "m_training_state.pt"
    state = load_torch(state_path, KIND_TRAINING_STATE)
    cases = [("batch", 10**30, "its position's batch is 100000000000000000000..., not a whole number"),
             ("epoch", 1.5, "its position's epoch is 1.5, not a whole number from 1 to 1"),
             ("epoch_loss", float("inf"), "its position's epoch_loss is inf")]
    for field, value, problem in cases:
        edited = {**state, "position": {**state["position"], field: value}}
        edited.pop("kind"), edited.pop("format_version")
        save_torch(edited, state_path, KIND_TRAINING_STATE)
        one_line_error(cli(capsys, train.main, *args, "--overwrite", "--resume", state_path),
                       "training state is damaged or does not fit this run", problem)


# --------------------------------------------------------------------------------------- sizes that explode


def test_a_pickle_of_one_string_referenced_a_thousand_times_is_tokenised_once(capsys, tmp_path, monkeypatch,
                                                                             trained_pipeline):
    """A 170 KB pickle that loads as 1,000 references to one 170 KB string: the tokeniser sees its text a few
    times (each column, the quick test), not 3,000 times (510 MB of text, 3 GB of token lists)."""
    from msmarco_search.data import vocab

    big = " ".join(["doc1y1 the ask2x3 of"] * 8000)
    shared = Triplets()
    for i in range(1000):
        shared.add(f"q{i}", big, f"p{i}", big, f"n{i}", big)
    path = save_triplets(shared, tmp_path / "shared.pkl", {})
    assert path.stat().st_size < 2 * len(big)
    seen = []
    real = vocab.tokenize_many
    monkeypatch.setattr(vocab, "tokenize_many", lambda texts: seen.append(sum(map(len, texts))) or real(texts))
    status, _, err = cli(capsys, train.main, path, "--embeddings", trained_pipeline["embeddings"], "--no-save",
                         "--max-steps", "1", "--validation-fraction", "0", "--data-dir", tmp_path / "data")
    assert status == 0, err
    assert seen and sum(seen) < 20 * len(big), sum(seen) / len(big)


def test_encoding_distinct_long_and_repeated_texts_gives_each_texts_own_tokens():
    """``encode_chunk``'s shortcuts (each distinct text once, bounded pieces, the head of a long text) give
    exactly ``encode`` of each text."""
    from msmarco_search.core import text as text_module
    from msmarco_search.data.vocab import Vocabulary

    words = [f"w{i}" for i in range(300)]
    for stemmer in ("none", "english"):
        vocab = Vocabulary.from_words([*words[:200], "running"], stemmer)
        texts = [" ".join(words[(i * 7 + j) % 300] for j in range(i % 50)) + [" café ?!", " Running", "\n w1"][i % 3]
                 for i in range(400)]
        texts += texts[:100] + [" ".join(words[i % 300] for i in range(30_000))]  # repeats and a 150 KB text
        for limit in (None, 3, 128):
            arrays = vocab.encode_chunk(texts, limit)
            assert [arrays.ids[arrays.offsets[i]:arrays.offsets[i + 1]].tolist() for i in range(len(texts))] == \
                [vocab.encode(t, limit) for t in texts]
    pieces = list(text_module.pieces(["ab", "cde", "f", "ghij"], characters=4))
    assert pieces == [["ab", "cde"], ["f", "ghij"]]


def test_a_line_longer_than_16_mib_is_refused_in_one_line(capsys, tmp_path, search_setup):
    collection = tmp_path / "collection.tsv"
    with open(collection, "w") as handle:
        handle.write("p1\tdoc1y1 passage\n")
        handle.write("p2\t" + "doc1y2 " * (17 * 2**20 // 7) + "\n")
    one_line_error(cli(capsys, search.main, "index", search_setup["model"], "--dataset-path", collection,
                       "--index-dir", tmp_path / "index"),
                   "collection.tsv: line 2 is longer than 16 MiB, which no passage, query or judgment is")
    assert not (tmp_path / "index").exists()
    queries = tmp_path / "queries.tsv"
    queries.write_bytes(b"q1\t" + b"x" * (17 * 2**20))  # no line break at all
    one_line_error(cli(capsys, search.main, "query", search_setup["model"], "--queries", queries),
                   "queries.tsv: line 1 is longer than 16 MiB")


def test_empty_queries_are_skipped_and_counted_in_search(capsys, tmp_path, search_setup):
    queries = tmp_path / "queries.tsv"
    real = search_setup["queries"]["m3"]
    queries.write_text(f"e1\t\ne2\t?! --\nu1\tzqxj wvkp\nm3\t{real}\n")
    run = tmp_path / "run.trec"
    status, out, err = cli(capsys, search.main, "query", search_setup["model"], "--queries", queries, "--system",
                           "all", "-k", "3", "--run-file", run)
    assert status == 0, err
    assert "queries.tsv: skipped 2 empty queries (no word to search for)" in out
    assert "two-tower: 2 queries" in out and "skipped 1 with no word the model knows" in out
    for system, kept in [("two-tower", {"m3"}), ("hybrid", {"m3"}), ("bm25", {"m3"})]:
        lines = (tmp_path / f"run.{system}.trec").read_text().splitlines()
        assert {line.split()[0] for line in lines} == kept and len(lines) == 3
    queries.write_text("".join(f"{i}\t \n" for i in range(1000)))
    one_line_error(cli(capsys, search.main, "query", search_setup["model"], "--queries", queries, "--run-file",
                       run), "queries.tsv: none of its 1,000 queries has a word to search for")


def test_empty_queries_are_skipped_and_counted_in_evaluation(capsys, tmp_path, tsv_folder):
    queries = tmp_path / "queries.tsv"
    queries.write_text((tsv_folder / "queries.train.tsv").read_text() + "e1\t\ne2\t...\n")
    qrels = tmp_path / "qrels.txt"
    qrels.write_text((tsv_folder / "qrels.train.tsv").read_text() + "e1 0 1000 1\ne2 0 1001 1\n")
    status, out, err = cli(capsys, evaluate.main, "--collection", tsv_folder / "collection.tsv", "--queries",
                           queries, "--qrels", qrels, "--systems", "bm25", "--output-dir", tmp_path / "out",
                           "--relevance-threshold", "1")
    assert status == 0, err
    assert "queries.tsv: skipped 2 empty queries (no word to search for)" in out
    report = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    assert report["tasks"]["full"]["queries"] == 240  # the file's 240 judged queries with words
    ranked = {line.split()[0] for line in (tmp_path / "out" / "run.full.bm25.trec").read_text().splitlines()}
    assert len(ranked) == 240 and not {"e1", "e2"} & ranked


def test_settings_whose_product_outgrows_the_memory_are_refused_before_the_work(capsys, tmp_path, monkeypatch,
                                                                                search_setup, tsv_folder,
                                                                                trained_pipeline):
    """On a machine with 1 MiB free (``available_memory`` patched), each product of counts is refused in one
    line before any query is searched, any system runs or any pseudo-query is cut."""
    monkeypatch.setattr(resources, "available_memory", lambda: 2**20)
    queries = tmp_path / "queries.tsv"
    queries.write_text("".join(f"{qid}\t{text}\n" for qid, text in search_setup["queries"].items()))
    one_line_error(cli(capsys, search.main, "query", search_setup["model"], "--queries", queries, "-k", "100",
                       "--run-file", tmp_path / "run.trec"),
                   f"searching {len(search_setup['queries'])} queries for their top 100", "of memory, and 1.0 MiB "
                   "are available; lower -k, --batch-size")
    assert not (tmp_path / "run.trec").exists()
    one_line_error(cli(capsys, evaluate.main, "--collection", tsv_folder / "collection.tsv", "--queries",
                       tsv_folder / "queries.train.tsv", "--qrels", tsv_folder / "qrels.train.tsv", "--systems",
                       "bm25", "--output-dir", tmp_path / "eval"),
                   "keeping the top 120 passages of 240 queries for 1 system would need about", "lower --run-depth")
    assert not (tmp_path / "eval" / "evaluation.json").exists()
    one_line_error(cli(capsys, triplets.main, "--mode", "ict", "--dataset-path", tsv_folder / "collection.tsv",
                       "--ict-per-passage", "100", "--output", tmp_path / "ict.pkl"),
                   "100 pseudo-queries from each of 120 passages would need about", "lower --ict-per-passage")
    one_line_error(cli(capsys, triplets.main, "--mode", "ict", "--dataset-path", tsv_folder / "collection.tsv",
                       "--ict-mine-negatives", trained_pipeline["model"], "--pseudo-negative-ranks", "10",
                       "2000000000", "--output", tmp_path / "mined.pkl"),
                   "ranking 120 queries at a time 120 deep", "lower the last of --pseudo-negative-ranks")
    assert not list(tmp_path.glob("*.pkl"))
    monkeypatch.setattr(resources, "available_memory", lambda: 2**40)  # the same settings on a bigger machine
    status, _, err = cli(capsys, triplets.main, "--mode", "ict", "--dataset-path", tsv_folder / "collection.tsv",
                         "--ict-per-passage", "100", "--output", tmp_path / "ict.pkl")
    assert status == 0 and "Traceback" not in err, err
