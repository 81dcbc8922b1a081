"""The scale benchmark's collection (``benchmarks/make_dataset.py --format collection``): distinct passages of
real sentences, the same file for the same seed, fresh ids, written whole; a size the machine cannot hold is
refused before any work, in one line."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from conftest import ROOT, assert_one_line_error, cli
from conftest import _script_module as _script

MAKE = "benchmarks/make_dataset.py"
WORDS = ["river", "bank", "loan", "rate", "city", "water", "tax", "court", "bridge", "price", "song", "film"]


def write_pool(folder: Path, passages: int = 30, seed: int = 1) -> tuple[Path, set[str]]:
    """A small passage pool (numeric ids, 3 sentences each, every sentence ending in a full stop): few enough
    sentences that drawing 2-5 of them repeats passages."""
    rng = random.Random(seed)
    sentences = set()
    lines = []
    for number in range(passages):
        said = [" ".join(rng.choices(WORDS, k=rng.randint(3, 7))).capitalize() + "." for _ in range(3)]
        sentences.update(said)
        lines.append(f"{7_000_000 + number}\t{' '.join(said)}\n")
    pool = folder / "pool.tsv"
    pool.write_text("".join(lines), encoding="utf-8")
    return pool, sentences


def make(capsys, pool: Path, output: Path, size: int, seed: int, *extra) -> tuple[int, str, str]:
    return cli(capsys, MAKE, "--format", "collection", "--size", size, "--seed", seed, "--pools", pool,
               "--output", output, *extra)


def read_collection(path: Path) -> tuple[list[str], list[str]]:
    ids, texts = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        pid, text = line.split("\t")
        ids.append(pid)
        texts.append(text)
    return ids, texts


def test_the_collection_is_distinct_real_sentences_with_fresh_ids_and_the_same_for_a_seed(tmp_path, capsys):
    pool, sentences = write_pool(tmp_path)
    queries = tmp_path / "dev.tsv"
    queries.write_text("".join(f"{100 + i}\twhat is query {i}\n" for i in range(9)), encoding="utf-8")
    size = 3000
    status, _, err = make(capsys, pool, tmp_path / "a.tsv", size, 3, "--queries-output", tmp_path / "q.tsv",
                          "--queries-from", queries, "--queries", 5)
    assert status == 0, err
    ids, texts = read_collection(tmp_path / "a.tsv")
    assert ids == [str(i) for i in range(size)]  # fresh ids, none of the pool's
    assert len(set(texts)) == size
    for text in texts:
        parts = re.split(r"(?<=[.!?])\s+", text)
        assert 2 <= len(parts) <= 5 and set(parts) <= sentences, text
    # the pool is small enough that drawing alone repeats passages: the distinctness above was enforced
    drawn = _script(MAKE).Sentences([pool]).draw(np.random.default_rng(3), size)
    assert len(set(drawn)) < size
    assert (tmp_path / "q.tsv").read_text() == "".join(f"{100 + i}\twhat is query {i}\n" for i in range(5))

    assert make(capsys, pool, tmp_path / "b.tsv", size, 3)[0] == 0
    assert (tmp_path / "b.tsv").read_bytes() == (tmp_path / "a.tsv").read_bytes()
    assert make(capsys, pool, tmp_path / "c.tsv", size, 4)[0] == 0
    assert read_collection(tmp_path / "c.tsv")[1] != texts
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".")]  # no temporary file or claim left


def test_the_digest_set_finds_every_repeat_even_where_digests_share_their_slots():
    digests = _script(MAKE).DigestSet(60_000)
    rng = np.random.default_rng(0)
    seen: set[int] = set()
    for _ in range(6):
        # values that differ only in their high bits all start at the same few slots: long probe chains
        batch = (rng.integers(0, 8_000, size=10_000).astype(np.uint64) << np.uint64(40)) + rng.integers(
            0, 3, size=10_000).astype(np.uint64)
        batch[:3] = 0
        expected = []
        for value in batch.tolist():
            value = value or 1
            expected.append(value not in seen)
            seen.add(value)
        assert digests.add(batch).tolist() == expected
    assert digests.count == len(seen)


def test_a_size_the_machine_cannot_hold_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    pool, _ = write_pool(tmp_path, passages=400)
    env = {**os.environ, "MSMARCO_SEARCH_NO_PROGRESS": "1"}
    output = tmp_path / "huge.tsv"
    refused = subprocess.run([sys.executable, str(ROOT / MAKE), "--format", "collection", "--size", "2000000000",
                              "--pools", pool, "--output", output], capture_output=True, text=True, env=env,
                             timeout=120)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.startswith("error: a collection of 2,000,000,000 passages")
    assert "of disk" in refused.stderr and "lower --size" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert not output.exists() and not [name for name in os.listdir(tmp_path) if name.startswith(".")]

    # memory: the build that follows would not fit what the machine has free
    monkeypatch.setattr(_script(MAKE), "available_memory", lambda: 1 << 30)
    assert_one_line_error(make(capsys, pool, output, 100_000, 0), "indexing 100,000 passages would need about",
                          "of memory, and 1.0 GiB are available")
    assert not output.exists()
    # more passages than the sentences can make distinct
    (tmp_path / "small").mkdir()
    small, _ = write_pool(tmp_path / "small", passages=1)
    assert_one_line_error(make(capsys, small, output, 1000, 0), "1,000 distinct passages are too many for 3 "
                          "sentences")


def test_an_existing_file_is_never_replaced(tmp_path, capsys):
    pool, _ = write_pool(tmp_path)
    mine = tmp_path / "collection.tsv"
    mine.write_text("1\tmine\n")
    assert_one_line_error(make(capsys, pool, mine, 10, 0), "collection.tsv: already exists, and this script "
                          "replaces no file")
    assert mine.read_text() == "1\tmine\n"


def test_bench_scale_refuses_a_size_the_machine_cannot_hold_before_any_work(tmp_path):
    """Through the benchmark as it is run: the distinct collection it makes by default is refused in one line
    on stderr, exit 2, and nothing is written."""
    data = tmp_path / "data"
    for pool in ("msmarco-trec-dl-2019", "msmarco-v2-trec-dl-2021"):
        (data / pool).mkdir(parents=True)
        write_pool(data / pool)[0].rename(data / pool / "collection.tsv")
    (data / "msmarco-queries").mkdir()
    (data / "msmarco-queries" / "queries.dev.small.tsv").write_text("1\twhat is a bank\n", encoding="utf-8")
    work = tmp_path / "work"
    result = subprocess.run(["bash", str(ROOT / "benchmarks" / "bench_scale.sh"), "m.pt", "2000000000", str(work)],
                            capture_output=True, text=True, timeout=120, env={**os.environ, "DATA": str(data)})
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: a collection of 2,000,000,000 passages"), result.stderr
    assert "lower --size" in lines[0]
    assert sorted(os.listdir(work)) == []
