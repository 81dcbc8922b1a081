"""Search page load: N requests to /api/search, C at a time, against `search/search.py serve`; p50/p99 latency.

Starts the server itself (``search/search.py serve MODEL --port 0``, the flags after ``--`` passed on) unless
``--url`` names a running one, sends ``--requests`` queries from ``--queries`` round-robin over the systems,
``--concurrency`` at a time, and prints per system and overall: requests, errors, p50/p99/max latency (ms,
client side: what a user waits), and requests/s. With ``--screenshot``, headless Chromium (Debian's) saves the
page of the first query, all three systems side by side.

  uv run --extra serve benchmarks/bench_serve.py checkpoints/two_tower_model_X.pt \\
      --queries ../shared/data/msmarco-trec-dl-2019/queries.dl19.tsv --screenshot /tmp/serve.png
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from msmarco_search.arguments import non_negative_int, positive_int, whole_number
from msmarco_search.errors import PipelineError, run_cli
from msmarco_search.report import info
from msmarco_search.search import SYSTEMS
from msmarco_search.sources import read_queries

ROOT = Path(__file__).resolve().parents[1]
_failures: list[Exception] = []


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


def start_server(model: Path, extra: list[str]) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, str(ROOT / "search" / "search.py"), "serve", str(model), "--port", "0", *extra]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "MSMARCO_SEARCH_NO_PROGRESS": "1", "PYTHONUNBUFFERED": "1"})
    watchdog = threading.Timer(300, process.kill)
    watchdog.start()
    for line in process.stdout:
        print(line, end="")
        if "Serving the search page on " in line:
            watchdog.cancel()
            return process, line.split(" on ", 1)[1].split()[0].rstrip("/")
    watchdog.cancel()
    raise PipelineError(f"the server ended before serving (exit {process.wait()})")


def request(url: str) -> tuple[float, int]:
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=120) as response:
            json.loads(response.read())
            status = response.status
    except urllib.error.HTTPError as error:
        status = error.code
    except OSError as error:  # refused, reset, timed out: counted as errors, the first one shown
        if not _failures:
            info(f"request failed: {error!r} ({url[:100]})")
        _failures.append(error)
        status = 0
    return (time.perf_counter() - started) * 1000, status


def load(base: str, queries: list[str], requests: int, concurrency: int, k: int) -> list[tuple[str, float, int]]:
    jobs = [(SYSTEMS[i % len(SYSTEMS)], queries[i % len(queries)]) for i in range(requests)]

    def one(job: tuple[str, str]) -> tuple[str, float, int]:
        system, query = job
        url = f"{base}/api/search?" + urllib.parse.urlencode({"q": query, "system": system, "k": k})
        return (system, *request(url))

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        return list(pool.map(one, jobs))


def report(results: list[tuple[str, float, int]], seconds: float, concurrency: int) -> None:
    groups = {system: [r for r in results if r[0] == system] for system in SYSTEMS} | {"all": results}
    info(f"{'system':<10} {'requests':>8} {'errors':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for system, rows in groups.items():
        times = [ms for _, ms, _ in rows]
        errors = sum(status != 200 for _, _, status in rows)
        info(f"{system:<10} {len(rows):>8} {errors:>6} {statistics.median(times):>8.1f} "
             f"{percentile(times, 0.99):>8.1f} {max(times):>8.1f}")
    info(f"{len(results)} requests, {concurrency} at a time, in {seconds:.2f} s: "
         f"{len(results) / seconds:.1f} requests/s")


def screenshot(base: str, query: str, path: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1600,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.get(f"{base}/?" + urllib.parse.urlencode({"q": query, "system": "all", "k": 5}))
        driver.save_screenshot(str(path))
    finally:
        driver.quit()
    info(f"Saved a screenshot of the page to {path}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, nargs="?", help="the model to serve (unless --url)")
    parser.add_argument("--url", default=None, help="a running server (http://HOST:PORT) instead of starting one")
    parser.add_argument("--queries", type=Path, required=True, help="queries TSV (qid<TAB>text), used round-robin")
    parser.add_argument("--requests", type=positive_int, default=200, help="requests sent (200)")
    parser.add_argument("--concurrency", type=whole_number(1, 1024, "one thread per request in flight"), default=20,
                        help="requests in flight at once (20)")
    parser.add_argument("-k", type=positive_int, default=10, help="hits per request (10)")
    parser.add_argument("--warmup", type=non_negative_int, default=20, help="requests sent first and not counted (20)")
    parser.add_argument("--screenshot", type=Path, default=None, help="save a PNG of the page here (Chromium)")
    args, extra = parser.parse_known_args()
    if (args.model is None) == (args.url is None):
        parser.error("give MODEL (a server is started) or --url, not both")
    queries = list(read_queries(args.queries).values())
    process = None
    base = args.url.rstrip("/") if args.url else None
    if base is None:
        process, base = start_server(args.model, [a for a in extra if a != "--"])
    try:
        load(base, queries, args.warmup, args.concurrency, args.k) if args.warmup > 0 else None
        started = time.perf_counter()
        results = load(base, queries, args.requests, args.concurrency, args.k)
        report(results, time.perf_counter() - started, args.concurrency)
        if args.screenshot is not None:
            screenshot(base, queries[0], args.screenshot)
    finally:
        if process is not None:
            process.send_signal(signal.SIGINT)
            process.wait(timeout=60)
    return 0


if __name__ == "__main__":
    run_cli(main)
