"""The default source, microsoft/ms_marco from the hub, with the hub faked (datasets.load_dataset monkeypatched,
the reachability probe answered; no network): --max-samples streams the first N rows and caches them under
--data-dir, a later run reuses the cache, no --max-samples keeps the full split, an unreachable hub is one line."""

from __future__ import annotations

import json

import pytest

from msmarco_search.cli import run
from msmarco_search.cli.triplets import main as triplets_main
from msmarco_search.data import hub as hub_source
from msmarco_search.data.hub import HUB_DATASET, HubSource
from msmarco_search.data.triplets import load_triplets


class FakeHub:
    """``datasets.load_dataset`` for microsoft/ms_marco: the rows fixture as the split; records every call and
    how many rows a stream handed out (a stream must stop at --max-samples, not read the split)."""

    def __init__(self, rows: list[dict], fail_after: int | None = None):
        self.rows, self.fail_after = rows, fail_after
        self.calls: list[dict] = []
        self.streamed = 0

    def __call__(self, name, config=None, split=None, **kwargs):
        self.calls.append({"name": name, "config": config, "split": split, **kwargs})
        if not kwargs.get("streaming"):
            return list(self.rows)
        return self._stream()

    def _stream(self):
        for row in self.rows:
            if self.fail_after is not None and self.streamed == self.fail_after:
                raise ConnectionError("Connection reset by peer while reading the parquet shard")
            self.streamed += 1
            yield row


@pytest.fixture
def hub(monkeypatch, tmp_path, rows_file):
    import datasets

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MSMARCO_SEARCH_NO_PROGRESS", "1")
    for variable in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(hub_source, "hub_unreachable_reason", lambda endpoint, timeout=5.0: None)
    fake = FakeHub([json.loads(line) for line in rows_file.read_text().splitlines()])
    monkeypatch.setattr(datasets, "load_dataset", fake)
    return fake


def triplets(tmp_path, *flags: str) -> int:
    return status_of(["--data-dir", str(tmp_path / "data"), *flags])


def status_of(argv: list[str]) -> int:
    """The triplets command's exit status, run as its console command runs it (``cli.run``)."""
    with pytest.raises(SystemExit) as stop:
        run(triplets_main, argv)
    return stop.value.code


def test_max_samples_streams_the_first_rows_and_caches_them(hub, tmp_path, rows_file, capsys):
    assert triplets(tmp_path, "--max-samples", "30", "--output", str(tmp_path / "hub.pkl")) == 0
    out = capsys.readouterr().out
    assert hub.calls == [{"name": HUB_DATASET, "config": "v1.1", "split": "train", "streaming": True}]
    assert hub.streamed == 30  # the first 30 rows, not the split's 240
    cache = tmp_path / "data" / "microsoft___ms_marco_stream" / "v1.1" / "train.jsonl"
    assert f"Streamed the first 30 rows of {HUB_DATASET} v1.1 [train] into {cache}" in out
    assert cache.read_text().splitlines() == rows_file.read_text().splitlines()[:30]
    # the same triplets as the same rows read from a local file
    assert status_of(["--dataset-path", str(rows_file), "--max-samples", "30",
                      "--output", str(tmp_path / "local.pkl")]) == 0
    assert load_triplets(tmp_path / "hub.pkl") == load_triplets(tmp_path / "local.pkl")


def test_the_stream_cache_serves_later_runs_without_the_hub(hub, tmp_path, monkeypatch, capsys):
    assert triplets(tmp_path, "--max-samples", "30", "--output", str(tmp_path / "first.pkl")) == 0
    hub.calls.clear()
    monkeypatch.setattr(hub_source, "hub_unreachable_reason", lambda endpoint, timeout=5.0: "Connection refused")
    assert triplets(tmp_path, "--max-samples", "12", "--output", str(tmp_path / "fewer.pkl")) == 0
    assert hub.calls == []  # no hub: the first 12 of the 30 cached rows
    first_queries = list(dict.fromkeys(load_triplets(tmp_path / "first.pkl").query_ids))
    assert list(dict.fromkeys(load_triplets(tmp_path / "fewer.pkl").query_ids)) == first_queries[:12]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # offline mode reads the cache too
    assert triplets(tmp_path, "--max-samples", "30", "--output", str(tmp_path / "offline.pkl")) == 0
    assert load_triplets(tmp_path / "offline.pkl") == load_triplets(tmp_path / "first.pkl")
    capsys.readouterr()
    # more rows than cached: offline, one line saying what is there
    assert triplets(tmp_path, "--max-samples", "50", "--output", str(tmp_path / "more.pkl")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: HF_HUB_OFFLINE is set (no network) and microsoft/ms_marco v1.1 is not cached")
    assert "nor the first 50 rows of its train split; 30 are" in err and len(err.splitlines()) == 1
    # online again: the stream is read again, further this time, and the cache grows
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(hub_source, "hub_unreachable_reason", lambda endpoint, timeout=5.0: None)
    assert triplets(tmp_path, "--max-samples", "50", "--output", str(tmp_path / "more.pkl")) == 0
    assert [call.get("streaming") for call in hub.calls] == [True]
    cache = HubSource("v1.1", "train", tmp_path / "data").stream_cache
    assert len(cache.read_text().splitlines()) == 50


def test_a_split_shorter_than_max_samples_is_cached_whole(hub, tmp_path):
    assert triplets(tmp_path, "--max-samples", "1000", "--output", str(tmp_path / "all.pkl")) == 0
    assert hub.streamed == len(hub.rows)
    hub.calls.clear()
    assert triplets(tmp_path, "--max-samples", "5000", "--output", str(tmp_path / "again.pkl")) == 0
    assert hub.calls == []  # the cache holds the whole split: no more rows to fetch


def test_without_max_samples_the_full_split_is_loaded_and_cached_by_datasets(hub, tmp_path):
    source = HubSource("v1.1", "train", tmp_path / "data")
    records = list(source.records())
    assert len(records) == len(hub.rows)
    assert hub.calls == [{"name": HUB_DATASET, "config": "v1.1", "split": "train",
                          "cache_dir": str(tmp_path / "data")}]
    # a full copy cached by datasets is used for a sample too (no stream)
    (tmp_path / "data" / "microsoft___ms_marco" / "v1.1").mkdir(parents=True)
    hub.calls.clear()
    assert len(list(source.records(10))) == 10
    assert [call.get("streaming") for call in hub.calls] == [None]


def test_a_stream_cut_off_midway_is_one_line_and_caches_nothing(hub, tmp_path, capsys):
    hub.fail_after = 7
    assert triplets(tmp_path, "--max-samples", "30", "--output", str(tmp_path / "cut.pkl")) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("error: cannot reach the Hugging Face hub to download microsoft/ms_marco (ConnectionError); "
                   "use --dataset-path with local files (row .jsonl/.parquet or the official TSVs) instead")
    stream_dir = tmp_path / "data" / "microsoft___ms_marco_stream" / "v1.1"
    assert not list(stream_dir.glob("train.*")) and not list(stream_dir.glob(".train*"))  # no partial cache
    assert not (tmp_path / "cut.pkl").exists()


def test_an_unreachable_hub_is_one_line_before_any_stream(hub, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(hub_source, "hub_unreachable_reason", lambda endpoint, timeout=5.0: "Connection refused")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    assert triplets(tmp_path, "--max-samples", "30") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot reach the Hugging Face hub at http://127.0.0.1:9 (Connection refused); "
                          "use --dataset-path") and len(err.splitlines()) == 1
    assert hub.calls == []
