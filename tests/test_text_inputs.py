"""Text that is not what it claims, names that match nothing, and a full disk, through the command lines.

Files in another encoding or not text at all, collections without a word and ids with tabs or line breaks are
read right or refused in one line by the first command that reads them (the readers of ``sources``); a
``--split``, system list or path that names nothing is an error listing what is there; a full disk while the
export, torch or BM25 write is one line. Cases run a script's ``main(argv)`` through ``cli.run`` in this
process, or as a real subprocess where the exit status, the absence of a traceback or a file-size limit
(``RLIMIT_FSIZE``: writes past it fail as on a full disk) is the point. docs/reliability.md lists each case.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import os
import pickle
import random
import resource
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import (
    CBOW_SCRIPT,
    ROOT,
    SEARCH_SCRIPT,
    TRIPLETS_SCRIPT,
    assert_one_line_error,
    cli,
    make_corpus,
    run_main,
    write_tsv_folder,
)

from msmarco_search.cli import run
from msmarco_search.data.triplets import load_triplets

EVALUATE = "evaluation/evaluate.py"
EXPORT = "training/export_sentence_transformers.py"
AVERAGE = "training/average_two_tower_models.py"
CBOW_TINY = ("--min-count", "1", "--vector-size", "8", "--epochs", "1", "--workers", "1", "--no-word-benchmarks")


def _row(query: str, query_id, texts: list[str], ids: list[str] | None = None,
         selected: list[int] | None = None) -> str:
    passages = {"is_selected": selected or [1] + [0] * (len(texts) - 1), "passage_text": texts}
    if ids is not None:
        passages["passage_id"] = ids
    return json.dumps({"query": query, "query_id": query_id, "passages": passages}) + "\n"


def _run(script: str, *args, cwd: Path, file_limit: int | None = None) -> subprocess.CompletedProcess:
    """The script as a real process; ``file_limit``: no file it writes may grow past that many bytes
    (``RLIMIT_FSIZE``; Python ignores SIGXFSZ, so a write past it fails with EFBIG as one on a full disk fails
    with ENOSPC, through the same code)."""
    env = {**os.environ, "MSMARCO_SEARCH_NO_PROGRESS": "1", "PYTHONUNBUFFERED": "1"}

    def limit() -> None:
        if file_limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))

    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600, preexec_fn=limit)


def _one_line(result: subprocess.CompletedProcess, *words: str) -> str:
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error: "), result.stderr
    for word in words:
        assert word in lines[-1], (word, lines[-1])
    return lines[-1]


# ------------------------------------------------------------------------------------ not UTF-8 text


def _zip(data: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("collection.tsv", data)
    return buffer.getvalue()


def _parquet(data: bytes) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.table({"line": data.decode().splitlines()}), buffer)
    return buffer.getvalue()


def _control_bytes(data: bytes) -> bytes:
    rng = random.Random(0)  # binary data without a NUL: mostly control characters and high bytes
    return bytes(rng.choice([*range(1, 9), *range(14, 32), *range(128, 256)]) for _ in range(len(data)))


NOT_TEXT = [  # (name, bytes of the file from its UTF-8 text, words of the one-line error)
    ("utf16", lambda data: data.decode().encode("utf-16"), ["is UTF-16 text", "iconv -f UTF-16 -t UTF-8"]),
    ("utf16-without-mark", lambda data: data.decode().encode("utf-16-le"), ["line 1 holds a NUL byte",
                                                                            "UTF-16/32"]),
    ("utf32", lambda data: data.decode().encode("utf-32"), ["is UTF-32 text"]),
    ("gzip", gzip.compress, ["is gzip-compressed, not UTF-8 text", "gzip -dc"]),
    ("bzip2", bz2.compress, ["is bzip2-compressed"]),
    ("xz", lzma.compress, ["is xz-compressed", "xz -dc"]),
    ("zip", _zip, ["is a zip archive"]),
    ("parquet", lambda data: _parquet(data), ["is a parquet file, not UTF-8 text"]),
    ("pickle", lambda data: pickle.dumps({"rows": data.decode().splitlines()}, protocol=4), ["is a pickle"]),
    ("nul", lambda data: data.replace(b"\n", b"\n\x00", 3).replace(b"\n\x00", b"\n", 2),
     ["is not UTF-8 text: line 4 holds a NUL byte"]),
    ("binary", _control_bytes, ["control characters (binary data?)"]),
]


@pytest.mark.parametrize("name, convert, words", NOT_TEXT, ids=[case[0] for case in NOT_TEXT])
def test_files_that_are_not_utf8_text_are_refused_by_the_first_command_that_reads_them(work, capsys, corpus, name,
                                                                                     convert, words):
    for kind in ("collection.tsv", "queries.train.tsv", "qrels.train.tsv", "top1000.train.tsv"):
        # without candidates the relevant passages' texts come from the collection, which is then read
        folder = write_tsv_folder(corpus, work / kind, candidates=kind != "collection.tsv")
        path = folder / kind
        path.write_bytes(convert(path.read_bytes()))
        assert_one_line_error(cli(capsys, TRIPLETS_SCRIPT, "--dataset-path", folder, "--negatives", "random"),
                              f"{kind}: ", *words)
        assert not list((work / "data").glob("msmarco_triplets_*"))
    rows = work / "rows.jsonl"
    rows.write_bytes(convert("".join(_row(f"what is {i}", i, [f"text {i}", "other"]) for i in range(5)).encode()))
    assert_one_line_error(cli(capsys, TRIPLETS_SCRIPT, "--dataset-path", rows), "rows.jsonl: ", *words)


def test_a_nul_byte_past_the_first_mebibyte_is_refused_too(work, capsys):
    collection = work / "c" / "collection.tsv"
    collection.parent.mkdir()
    lines = [f"{i}\tpassage number {i} about the topic of the day and more words\n" for i in range(20000)]
    lines[15000] = "15000\ta passage with a \x00 inside\n"
    collection.write_text("".join(lines))
    assert collection.stat().st_size > 2**20  # beyond the head every file's first read checks
    assert_one_line_error(cli(capsys, CBOW_SCRIPT, "--dataset-path", collection, *CBOW_TINY),
                          "collection.tsv: is not UTF-8 text: line 15001 holds a NUL byte")
    assert not (work / "checkpoints" / "msmarco_word2vec.pt").exists()


@pytest.mark.slow
def test_not_text_given_to_search_and_evaluation_is_one_line_with_exit_2(work, trained_pipeline, tsv_folder):
    folder = work / "c"
    folder.mkdir()
    text = (tsv_folder / "collection.tsv").read_text()
    (folder / "collection.tsv").write_bytes(text.encode("utf-16"))
    result = _run(SEARCH_SCRIPT, "index", trained_pipeline["model"], "--dataset-path", folder / "collection.tsv",
                  "--index-dir", work / "index", cwd=work)
    _one_line(result, "collection.tsv: is UTF-16 text")
    assert "Indexing passages" not in result.stdout and not (work / "index").exists()
    queries = work / "queries.tsv"
    queries.write_bytes(gzip.compress((tsv_folder / "queries.train.tsv").read_bytes()))
    result = _run(EVALUATE, "--collection", tsv_folder / "collection.tsv", "--queries", queries, "--qrels",
                  tsv_folder / "qrels.train.tsv", "--systems", "bm25", "--output-dir", work / "out", cwd=work)
    _one_line(result, "queries.tsv: is gzip-compressed")
    assert not (work / "out" / "evaluation.json").exists()


# ------------------------------------------------------------------------------------ read right


def test_latin1_and_windows_1252_files_and_a_marked_qrels_file_read_right(work, capsys):
    folder = work / "latin"
    folder.mkdir()
    texts = {"1": "Un café près de la gare, ‘au naïf’ – 5 €.", "2": "A plain passage about trains.",
             "3": "Another passage, about a résumé."}
    (folder / "collection.tsv").write_bytes("".join(f"{pid}\t{t}\n" for pid, t in texts.items()).encode("cp1252"))
    queries = {"q1": "where is the café near the gare", "q2": "a passage about trains"}
    (folder / "queries.train.tsv").write_bytes("".join(f"{q}\t{t}\n" for q, t in queries.items()).encode("cp1252"))
    # a byte-order mark before the first query id: without it dropped, "\ufeffq1" would be judged, not "q1"
    (folder / "qrels.train.tsv").write_bytes("\ufeffq1 0 1 1\nq2 0 2 1\n".encode())
    status, out, err = cli(capsys, TRIPLETS_SCRIPT, "--dataset-path", folder, "--negatives", "random")
    assert status == 0, err
    triplets = load_triplets(next((work / "data").glob("msmarco_triplets_*.pkl")))
    made = dict(zip(triplets.query_ids, zip(triplets.queries, triplets.positives, strict=True), strict=True))
    assert made == {"q1": (queries["q1"], texts["1"]), "q2": (queries["q2"], texts["2"])}  # é ‘ ’ – € as written
    assert "\ufffd" not in "".join(triplets.negatives)


def test_a_windows_1252_collection_is_indexed_and_shown_as_written(work, capsys, trained_pipeline):
    collection = work / "collection.tsv"
    collection.write_bytes("1\tCafé crème, ‘naïve’ résumé\n2\tA passage about trains\n".encode("cp1252"))
    status, _, err = cli(capsys, SEARCH_SCRIPT, "index", trained_pipeline["model"], "--dataset-path", collection,
                         "--index-dir", work / "index")
    assert status == 0, err
    status, out, err = cli(capsys, SEARCH_SCRIPT, "query", trained_pipeline["model"], "--index-dir", work / "index",
                           "--system", "bm25", "cafe resume")
    assert status == 0, err
    assert "Café crème, ‘naïve’ résumé" in out and "\ufffd" not in out


# ------------------------------------------------------------------------------------ ids


PRINTABLE = "; an id is printable text (no tab, line break or control character)"
BAD_ROW_IDS = [  # (row, words of the error)
    (_row("what is a", "q\n1", ["a text", "b text"]), ["the query id 'q\\n1' holds a line break" + PRINTABLE]),
    (_row("what is a", "", ["a text", "b text"]), ["the query id is empty"]),
    (_row("what is a", 1, ["a text", "b text"], ["a\tb", "a b"]),
     ["passage 1: the passage id 'a\\tb' holds a tab" + PRINTABLE]),
    (_row("what is a", 1, ["a text", "b text"], ["a", "b\x00"]),
     ["passage 2: the passage id 'b\\x00' holds a NUL byte" + PRINTABLE]),
    (_row("what is a", 1, ["a text", "b text"], ["a", ""]), ["passage 2: the passage id is empty"]),
]


@pytest.mark.parametrize("row, words", BAD_ROW_IDS)
def test_row_layout_ids_with_tabs_line_breaks_or_control_characters_are_refused(work, capsys, row, words):
    rows = work / "rows.jsonl"
    rows.write_text(_row("what is z", 0, ["z text", "y text"]) + row)
    assert_one_line_error(cli(capsys, TRIPLETS_SCRIPT, "--dataset-path", rows, "--negatives", "random"),
                          "rows.jsonl (line 2): ", *words)


def test_tsv_ids_with_control_characters_or_empty_are_refused(work, capsys, corpus):
    cases = [("collection.tsv", lambda t: t.replace("1000\t", "10\x0100\t", 1), "line 1: the passage id '10\\x0100' "
              "holds U+0001 (a control character)"),
             ("queries.train.tsv", lambda t: t.replace("0\t", "\t", 1), "line 1: the query id is empty"),
             ("top1000.train.tsv", lambda t: t.replace("\t", "\t\x0b", 1), "line 1: the passage id"),
             ("qrels.train.tsv", lambda t: t.replace("0 0 ", "0\x7f 0 ", 1), "line 1: the query id '0\\x7f' holds")]
    for name, change, words in cases:
        # without candidates the relevant passages come from the collection, which is then read
        folder = write_tsv_folder(corpus, work / name, candidates=name != "collection.tsv")
        path = folder / name
        path.write_text(change(path.read_text()))
        assert_one_line_error(cli(capsys, TRIPLETS_SCRIPT, "--dataset-path", folder, "--negatives", "random"),
                              f"{name}: {words}")


def test_passage_ids_are_indexed_as_written_and_never_joined_into_one(work, capsys, trained_pipeline):
    from msmarco_search.index.load import load_index

    rows = work / "rows.jsonl"
    rows.write_text(_row("what is a", 1, ["doc0y1 doc0y2 first", "doc1y1 doc1y2 second"], ["p 1", "p  1"]))
    status, _, err = cli(capsys, SEARCH_SCRIPT, "index", trained_pipeline["model"], "--dataset-path", rows,
                         "--index-dir", work / "index")
    assert status == 0, err
    index = load_index(work / "index")
    assert sorted(index.pid(i) for i in range(len(index))) == ["p  1", "p 1"]  # two ids, not "p 1" twice
    index.close()
    rows.write_text(_row("what is a", 1, ["first", "second"], ["a\tb", "a b"]))  # joined words: "a b" twice
    result = run_main(capsys, SEARCH_SCRIPT, "index", trained_pipeline["model"], "--dataset-path", rows,
                      "--index-dir", work / "index2", cwd=work, check=False)
    _one_line(result, "rows.jsonl (line 1): passage 1: the passage id 'a\\tb' holds a tab")
    assert not (work / "index2").exists()


# ------------------------------------------------------------------------------------ no word


def test_a_collection_without_a_word_is_refused_before_any_work(work, capsys, trained_pipeline, tsv_folder):
    folder = work / "punct"
    folder.mkdir()
    (folder / "collection.tsv").write_text("1\t...\n2\t!!! ???\n3\t\n4\t— · ★ 🙂\n")
    result = run_main(capsys, SEARCH_SCRIPT, "index", trained_pipeline["model"], "--dataset-path",
                      folder / "collection.tsv", "--index-dir", work / "index", cwd=work, check=False)
    _one_line(result, "collection.tsv: holds no word: none of its 4 passage(s) has a letter or digit")
    assert "Indexing passages" not in result.stdout and not (work / "index").exists()
    assert_one_line_error(cli(capsys, CBOW_SCRIPT, "--dataset-path", folder, *CBOW_TINY),
                          "collection.tsv: holds no word")
    assert_one_line_error(cli(capsys, EVALUATE, "--collection", folder / "collection.tsv", "--queries",
                              tsv_folder / "queries.train.tsv", "--qrels", tsv_folder / "qrels.train.tsv",
                              "--systems", "bm25", "--output-dir", work / "out"),
                          "collection.tsv: holds no word")
    assert not (work / "out" / "evaluation.json").exists()
    rows = work / "rows.jsonl"
    rows.write_text("".join(_row(f"what is {i}", i, ["...", f"?! {i * '!'}"], [f"a{i}", f"b{i}"]) for i in range(3)))
    assert_one_line_error(cli(capsys, SEARCH_SCRIPT, "index", trained_pipeline["model"], "--dataset-path", rows,
                              "--index-dir", work / "index"),
                          "rows.jsonl: holds no word: none of its 6 passage(s) has a letter or digit")
    assert not (work / "index").exists()


# ------------------------------------------------------------------------------------ names that match nothing


def _dl21_folder(corpus, work: Path) -> Path:
    folder = write_tsv_folder(corpus, work / "dl21", split="dl21")
    (folder / "qrels.dl21.in-collection.tsv").write_text((folder / "qrels.dl21.tsv").read_text())
    return folder


def test_a_split_that_names_no_file_is_an_error_listing_the_files(work, capsys, corpus):
    folder = _dl21_folder(corpus, work)
    for split in ("dl2021", "dl2", "train"):
        result = cli(capsys, TRIPLETS_SCRIPT, "--dataset-path", folder, "--split", split)
        assert_one_line_error(result, f"--split {split} names none of the queries files in {folder} "
                                      "(queries.dl21.tsv): give a --split that their names hold")
    assert not list((work / "data").glob("msmarco_triplets_*"))
    for flags in (["--split", "dl21"], ["--split", "DL21"], []):  # the split as named; none: one file of each kind
        status, out, err = cli(capsys, TRIPLETS_SCRIPT, "--dataset-path", folder, *flags)
        assert status == 0, err
        assert f"qrels={folder / 'qrels.dl21.tsv'}" in out  # the plain name, before its in-collection variant
    named = [folder / name for name in ("collection.tsv", "queries.dl21.tsv", "qrels.dl21.tsv")]
    assert_one_line_error(cli(capsys, TRIPLETS_SCRIPT, "--dataset-path", *named, "--split", "dl2021",
                              "--negatives", "random"),
                          "--split dl2021 names none of the queries files given (queries.dl21.tsv)")


def test_several_files_of_a_kind_and_no_split_to_choose_is_an_error(work, capsys, corpus):
    folder = write_tsv_folder(corpus, work / "two", split="train")
    write_tsv_folder(make_corpus(seed=3), folder, split="dev")
    result = cli(capsys, EVALUATE, "--dataset-path", folder, "--systems", "bm25", "--output-dir", work / "out")
    assert_one_line_error(result, f"2 queries files in {folder} and no --split was given to choose one "
                                  "(queries.dev.tsv, queries.train.tsv)")
    assert not (work / "out" / "evaluation.json").exists()
    status, out, err = cli(capsys, EVALUATE, "--dataset-path", folder, "--split", "dev", "--systems", "bm25",
                           "--tasks", "rerank", "--max-queries", "5", "--output-dir", work / "out")
    assert status == 0, err
    assert "queries.dev.tsv" in out and "queries.train.tsv" not in out
    queries = work / "queries"
    queries.mkdir()
    for number in (1, 2):
        (queries / f"queries.train.sample-{number}.tsv").write_text("1\twhat is x\n")
    (queries / "collection.tsv").write_text("1\ta passage\n")
    (queries / "qrels.train.tsv").write_text("1 0 1 1\n")
    assert_one_line_error(cli(capsys, TRIPLETS_SCRIPT, "--dataset-path", queries, "--negatives", "random"),
                          "2 queries files in", "name --split train (queries.train.sample-1.tsv, "
                          "queries.train.sample-2.tsv)", "give a --split that only one of them holds")


def test_the_main_job_refuses_an_evaluation_split_that_names_no_file(work, capsys, corpus):
    from msmarco_search.cli import pipeline

    train = write_tsv_folder(corpus, work / "train")
    evaluation = _dl21_folder(corpus, work)
    with pytest.raises(SystemExit) as stop:
        run(pipeline.main, ["100", "--dataset-path", str(train), "--evaluate-on", str(evaluation),
                            "--evaluate-split", "dl2021", "--output-dir", str(work / "out")])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.strip().splitlines()[-1] == (
        f"error: --evaluate-split dl2021 names none of the queries files in {evaluation} (queries.dl21.tsv): give "
        "a --evaluate-split that their names hold, or name the files one by one")
    assert not (work / "out").exists()


def test_row_files_and_datasets_folders_follow_the_split(work, capsys):
    folder = work / "rows"
    folder.mkdir()
    for split in ("train", "validation"):
        (folder / f"{split}.jsonl").write_text("".join(_row(f"{split} query {i}", f"{split}{i}",
                                                            [f"{split} text {i}", "other text"]) for i in range(4)))
    status, out, err = cli(capsys, TRIPLETS_SCRIPT, "--dataset-path", folder, "--negatives", "random")
    assert status == 0, err
    assert f"Data source: {folder / 'train.jsonl'}\n" in out  # the default split, not both files
    status, out, err = cli(capsys, TRIPLETS_SCRIPT, "--dataset-path", folder, "--split", "validation",
                           "--negatives", "random")
    assert status == 0, err
    assert set(load_triplets(sorted((work / "data").glob("msmarco_triplets_*.pkl"))[-1]).query_ids) == {
        f"validation{i}" for i in range(4)}
    assert_one_line_error(cli(capsys, TRIPLETS_SCRIPT, "--dataset-path", folder, "--split", "test"),
                          "rows: --split test names none of its row files (train.jsonl, validation.jsonl)")
    assert_one_line_error(cli(capsys, TRIPLETS_SCRIPT, "--dataset-path", folder / "train.jsonl", "--split",
                              "validation"),
                          "--split validation names none of the row files given (train.jsonl); a row file is read "
                          "whole")
    import datasets

    records = [json.loads(line) for line in (folder / "validation.jsonl").read_text().splitlines()]
    datasets.DatasetDict({"validation": datasets.Dataset.from_list(records)}).save_to_disk(str(work / "disk"))
    capsys.readouterr()  # datasets' progress bar while saving
    status, out, err = cli(capsys, TRIPLETS_SCRIPT, "--dataset-path", work / "disk", "--negatives", "random")
    assert status == 0, err  # the folder's one split, for the default --split
    assert_one_line_error(cli(capsys, TRIPLETS_SCRIPT, "--dataset-path", work / "disk", "--split", "train"),
                          "disk: has no split 'train' (it has validation)")


def test_a_hub_split_that_does_not_exist_is_refused_before_the_hub_is_asked(work, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # were the hub asked, the message would be about offline mode
    assert_one_line_error(cli(capsys, TRIPLETS_SCRIPT, "--split", "trian", "--max-samples", "10"),
                          "microsoft/ms_marco has no split 'trian' (it has train, validation, test)")


def test_a_path_that_is_not_there_lists_what_its_folder_holds(work, capsys, corpus):
    folder = _dl21_folder(corpus, work)
    line = assert_one_line_error(cli(capsys, TRIPLETS_SCRIPT, "--dataset-path", folder / "queries.dl2021.tsv"),
                                 "queries.dl2021.tsv: not found;", f"{folder} holds queries.dl21.tsv, ")
    assert "qrels.dl21.tsv" in line
    assert_one_line_error(cli(capsys, EVALUATE, "--collection", folder / "collection.tsv", "--queries",
                              folder / "queries.dl2021.tsv", "--qrels", folder / "qrels.dl21.tsv", "--systems",
                              "bm25", "--output-dir", work / "out"),
                          "queries.dl2021.tsv: file not found;", f"{folder} holds queries.dl21.tsv, ")
    empty = work / "nothing"
    empty.mkdir()
    (empty / "notes.txt").write_text("x\n")
    assert_one_line_error(cli(capsys, TRIPLETS_SCRIPT, "--dataset-path", empty),
                          "holds no MS MARCO data", f"{empty} holds notes.txt")


def test_a_topics_file_is_read_as_queries_not_as_candidates(work, capsys, corpus):
    folder = write_tsv_folder(corpus, work / "topics", split="x", candidates=False)
    (folder / "queries.x.tsv").rename(folder / "topics.x.tsv")
    status, out, err = cli(capsys, TRIPLETS_SCRIPT, "--dataset-path", folder, "--negatives", "random")
    assert status == 0, err
    assert f"queries={folder / 'topics.x.tsv'}" in out and "candidates=" not in out


def test_evaluation_lists_that_name_nothing_and_a_baseline_of_no_task_are_refused(work, capsys, trained_pipeline):
    common = ("--dataset-path", trained_pipeline["rows"], "--max-queries", "5", "--output-dir", work / "out")
    assert_one_line_error(cli(capsys, EVALUATE, *common, "--systems", "bm25", "--tasks", ","),
                          "--tasks ',' names nothing (use rerank, full)")
    assert_one_line_error(cli(capsys, EVALUATE, *common, "--systems", " , "),
                          "--systems ' , ' names nothing (use two-tower, bm25, ")
    assert_one_line_error(cli(capsys, EVALUATE, *common, "--model", trained_pipeline["model"], "--systems", "hybrid",
                              "--fusion", ","), "--fusion ',' names nothing (use rrf, linear)")
    status, out, err = cli(capsys, EVALUATE, *common, "--systems", "bm25", "--baseline", "first-stage")
    assert_one_line_error((status, out, err), "--baseline first-stage is a row of the re-ranking task only",
                          "add --tasks rerank")
    assert "over" not in out and not any((work / "out").iterdir())  # before any system ranked a query
    status, out, err = cli(capsys, EVALUATE, *common, "--systems", "bm25", "--baseline", "first-stage", "--tasks",
                           "rerank")
    assert status == 0, err
    assert "difference to first-stage" in out


# ------------------------------------------------------------------------------------ a full disk


@pytest.mark.slow
def test_a_full_disk_during_export_is_one_line_and_leaves_nothing(work, capsys):
    pytest.importorskip("sentence_transformers")  # the `st` extra; in the dev group too
    from msmarco_search.data.vocab import Vocabulary
    from msmarco_search.training.config import TwoTowerConfig
    from msmarco_search.training.model import TwoTowerModel
    from msmarco_search.training.model_file import save_two_tower

    # long words and one dimension: tokenizer.json (written after the word table) is the largest file, so a
    # limit between the two fails tokenizers' writer, which raises a bare Exception
    vocab = Vocabulary.from_words([f"word{i:03d}" + "x" * 60 for i in range(200)])
    config = TwoTowerConfig(vocab_size=len(vocab), embedding_dim=1, output_dim=1, shared_towers=True,
                            max_query_length=32, max_passage_length=32)  # one stack: no router
    model = save_two_tower(work / "model.pt", TwoTowerModel(config, vocab), {})
    # the export that fits runs in this process; the two that do not, as real processes under the limit (each
    # imports sentence-transformers, tens of seconds)
    status, _, err = cli(capsys, EXPORT, model, "--output-dir", work / "ok")
    assert status == 0, err
    sizes = {path.name: path.stat().st_size for path in (work / "ok").rglob("*") if path.is_file()}
    assert sizes["tokenizer.json"] > 4 * sizes["model.safetensors"]
    for limit, words in ((sizes["tokenizer.json"] // 2, "cannot write the export (File too large); free some space"),
                         (sizes["model.safetensors"] // 2, "cannot write the export (File too large)")):
        _one_line(_run(EXPORT, model, "--output-dir", work / "out", cwd=work, file_limit=limit), "out: ", words)
        assert sorted(p.name for p in work.iterdir()) == ["model.pt", "ok"]  # no export, no temporary folder


@pytest.mark.slow
def test_a_full_disk_while_torch_ends_its_file_is_one_line(work, trained_pipeline, capsys):
    model = trained_pipeline["model"]
    status, _, err = cli(capsys, AVERAGE, model, model, "--output", work / "ok.pt")  # the size of the file
    assert status == 0, err
    size = (work / "ok.pt").stat().st_size
    # the weights fit, the end of the zip file does not: torch's C++ stream fails as it closes the file
    line = _one_line(_run(AVERAGE, model, model, "--output", work / "avg.pt", cwd=work, file_limit=size - 200),
                     "avg.pt: cannot write (torch's file writer failed: ", "free some space")
    assert "basic_ios" in line or "unexpected pos" in line
    assert sorted(p.name for p in work.iterdir()) == ["ok.pt"]


@pytest.mark.slow
def test_a_full_disk_while_bm25_is_written_is_one_line(work, trained_pipeline):
    rng = random.Random(0)
    words = [f"w{i}" for i in range(5000)]
    collection = work / "collection.tsv"
    collection.write_text("".join(f"{i}\t{' '.join(rng.sample(words, 400))}\n" for i in range(20)))
    # 20 passages: vectors, ids and offsets are small; 8,000 postings make BM25's files 32 KB each
    result = _run(SEARCH_SCRIPT, "index", trained_pipeline["model"], "--dataset-path", collection,
                  "--index-dir", work / "index", cwd=work, file_limit=16_000)
    _one_line(result, "cannot write the BM25 index (File too large); free some space")
    assert sorted(p.name for p in work.iterdir()) == ["collection.tsv"]
