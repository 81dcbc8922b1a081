"""MS MARCO from the Hugging Face hub (``microsoft/ms_marco``): the source, the reachability probe, and what
to say when the hub cannot be reached."""

from __future__ import annotations

import http.client
import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from msmarco_search.core.errors import PipelineError, first_line
from msmarco_search.core.report import info, progress
from msmarco_search.data.records import QueryRecord, Source, check_max_samples
from msmarco_search.data.rows import RowFileSource, records_from_rows
from msmarco_search.io.atomic import atomic_write
from msmarco_search.io.records import cached_record, save_cache_record

HUB_DATASET = "microsoft/ms_marco"
HUB_CONFIGS = ("v1.1", "v2.1")
HUB_SPLITS = ("train", "validation", "test")  # the same three in both configs


HUB_PROBE_TIMEOUT = 5.0  # seconds; datasets itself retries for ~25 s before it gives up


class HubSource(Source):
    """``microsoft/ms_marco`` from the Hugging Face hub, cached under ``data_dir``.

    Without ``max_samples`` the whole split is downloaded and prepared by ``datasets`` (and cached there).
    With it, and no full copy cached, the first ``max_samples`` rows are streamed (``streaming=True``: v2.1's
    train split is 808K rows, its download gigabytes, where 1,000 rows are a few MB) and kept in
    ``data_dir/<dataset>_stream/<config>/<split>.jsonl``, which serves any later run asking for as many rows or
    fewer, without the network. Either way the records are the split's first rows, in its order.
    """

    def __init__(self, config: str, split: str, data_dir: Path):
        if config not in HUB_CONFIGS:
            raise PipelineError(f"unknown MS MARCO config {config!r} (use one of {', '.join(HUB_CONFIGS)})")
        if split not in HUB_SPLITS:  # before any download: datasets would fail only after reaching the hub
            raise PipelineError(f"{HUB_DATASET} has no split {split!r} (it has {', '.join(HUB_SPLITS)})")
        self.config, self.split, self.data_dir = config, split, Path(data_dir)
        self.description = f"{HUB_DATASET} {config} [{split}] (hub, cached in {data_dir})"

    def identity(self) -> str:
        return f"hub|{HUB_DATASET}|{self.config}|{self.split}"

    def records(self, max_samples: int | None = None) -> Iterator[QueryRecord]:
        check_max_samples(max_samples)
        if max_samples is not None and not self.cached():
            yield from RowFileSource([self._streamed_rows(max_samples)]).records(max_samples)
            return
        rows = ((row, f"{HUB_DATASET} {self.config} {self.split} (row {number})")
                for number, row in enumerate(self._load(), 1))
        yield from records_from_rows(rows, max_samples)

    def cached(self) -> bool:
        """Whether ``datasets`` has a copy of this config in ``data_dir`` (usable with HF_HUB_OFFLINE=1)."""
        return (self.data_dir / HUB_DATASET.replace("/", "___") / self.config).is_dir()

    @property
    def stream_cache(self) -> Path:
        """The first rows of the split read by streaming, as JSON lines (``<split>.json`` describes them)."""
        return self.data_dir / f"{HUB_DATASET.replace('/', '___')}_stream" / self.config / f"{self.split}.jsonl"

    def _stream_cache_rows(self) -> tuple[int, bool]:
        """(rows in the stream cache, whether they are the whole split); (0, False) when there is none, or its
        record (``<split>.json``, written after it) does not describe it (``records.cached_record``)."""
        record = cached_record(self.stream_cache)
        if record is None or record.get("source") != self.identity():
            return 0, False  # none, damaged, or another split's: stream again, which rewrites both
        try:
            return int(record["rows"]), bool(record["complete"])
        except (KeyError, TypeError, ValueError, OverflowError):
            return 0, False

    def _streamed_rows(self, max_samples: int) -> Path:
        """The stream cache, holding at least the split's first ``max_samples`` rows (streamed if it did not)."""
        rows, complete = self._stream_cache_rows()
        if rows >= max_samples or complete:
            return self.stream_cache
        offline = offline_mode_variable()
        if offline is not None:
            have = f"; {rows:,} are, in {self.stream_cache}" if rows else ""
            raise PipelineError(f"{offline} is set (no network) and {HUB_DATASET} {self.config} is not cached in "
                                f"{self.data_dir} (nor the first {max_samples:,} rows of its {self.split} split"
                                f"{have}); "
                                "use --dataset-path with local files (row .jsonl/.parquet or the official TSVs) "
                                "instead")
        self._check_reachable()
        import datasets

        count = 0

        def write(tmp: Path) -> None:
            nonlocal count
            with self._hub_errors():
                stream = datasets.load_dataset(HUB_DATASET, self.config, split=self.split, streaming=True)
                bar = progress(stream, desc=f"Streaming {HUB_DATASET} {self.config} {self.split}",
                               total=max_samples, unit="row")
                with open(tmp, "w", encoding="utf-8") as handle:
                    for row in bar:
                        handle.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
                        count += 1
                        if count == max_samples:
                            break
                bar.close()

        atomic_write(self.stream_cache, write)
        save_cache_record(self.stream_cache, source=self.identity(), rows=count, complete=count < max_samples)
        info(f"Streamed the first {count:,} rows of {HUB_DATASET} {self.config} [{self.split}] into "
             f"{self.stream_cache}")
        return self.stream_cache

    def _load(self) -> Iterable[dict[str, Any]]:
        self._check_reachable()
        import datasets

        with self._hub_errors():
            return datasets.load_dataset(HUB_DATASET, self.config, split=self.split, cache_dir=str(self.data_dir))

    @contextmanager
    def _hub_errors(self) -> Iterator[None]:
        """``datasets``' many error types (while loading or while streaming) as one line naming the remedy."""
        try:
            yield
        except PipelineError:
            raise
        except Exception as error:  # datasets raises many types when offline
            if _looks_offline(error):
                raise PipelineError(
                    f"cannot reach the Hugging Face hub to download {HUB_DATASET} ({type(error).__name__}); "
                    "use --dataset-path with local files (row .jsonl/.parquet or the official TSVs) instead"
                ) from error
            raise PipelineError(f"cannot load {HUB_DATASET} {self.config} [{self.split}]: "
                                f"{first_line(error)}") from error

    def _check_reachable(self) -> None:
        """Fail in seconds, with the remedy, where ``datasets`` would retry for ~25 s and print a traceback."""
        instead = "use --dataset-path with local files (row .jsonl/.parquet or the official TSVs) instead"
        offline = offline_mode_variable()
        if offline is not None:
            if not self.cached():
                raise PipelineError(f"{offline} is set (no network) and {HUB_DATASET} {self.config} is not cached "
                                    f"in {self.data_dir}; {instead}")
            return  # datasets reads the cached copy without the network
        endpoint = hub_endpoint()
        reason = hub_unreachable_reason(endpoint)
        if reason is not None:
            cached = (f"; or set HF_HUB_OFFLINE=1 to use the copy cached in {self.data_dir}"
                      if self.cached() else "")
            raise PipelineError(f"cannot reach the Hugging Face hub at {endpoint} ({reason}); {instead}{cached}")


def hub_endpoint() -> str:
    """The hub's address: ``HF_ENDPOINT`` (mirrors, tests) or huggingface.co, as huggingface_hub uses it."""
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def offline_mode_variable() -> str | None:
    """The name of the set offline variable (``HF_HUB_OFFLINE``, ``HF_DATASETS_OFFLINE``), if any."""
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE"):
            return name
    return None


def hub_unreachable_reason(endpoint: str, timeout: float = HUB_PROBE_TIMEOUT) -> str | None:
    """``None`` if the hub answers an HTTP request within ``timeout`` seconds, else why it did not.

    Any HTTP answer (even 401 or 404) proves the network path works; proxies set in the environment are
    honoured, as they are by huggingface_hub.
    """
    request = urllib.request.Request(f"{endpoint}/api/datasets/{HUB_DATASET}", method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None
    except urllib.error.URLError as error:
        return first_line(error.reason) if isinstance(error.reason, BaseException) else str(error.reason)
    except (OSError, ValueError, http.client.HTTPException) as error:  # timeouts, resets, a malformed endpoint
        return first_line(error)


def _looks_offline(error: BaseException) -> bool:
    names = {type(e).__name__ for e in _chain(error)}
    text = " ".join(str(e) for e in _chain(error)).lower()
    return bool(names & {"ConnectionError", "OfflineModeIsEnabled", "LocalEntryNotFoundError", "Timeout",
                         "ConnectTimeout", "ReadTimeout", "MaxRetryError", "NameResolutionError"}) or any(
        word in text for word in ("connection", "offline", "resolve", "unreachable", "couldn't reach"))


def _chain(error: BaseException | None) -> Iterator[BaseException]:
    while error is not None:
        yield error
        error = error.__cause__ or error.__context__
