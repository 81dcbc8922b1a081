"""Search server throughput: requests/s with 1 client and with C clients at once, their ratio, latency, errors.

Starts the server itself (``search/search.py serve MODEL --port 0``, the flags after ``--`` passed on, e.g.
``-- --parallel 1`` for one search at a time) unless ``--url`` names a running one. Each run sends ``--requests``
queries from ``--queries`` to ``/api/search`` round-robin over the systems, first from one client, then from
``--concurrency`` clients at once, each client one keep-alive connection sending its next request when the last
is answered. Prints for each run: requests, errors (any status but 200, or no answer), requests/s, p50/p95/max
latency (ms, client side: what a user waits, queueing included); then the ratio of the two request rates (the
share of the machine's cores that concurrent requests put to work), and per system the p50 of the concurrent
run. With ``--screenshot``, headless Chromium (Debian's) saves the page of the first query, all systems side by
side.

  uv run --extra serve benchmarks/bench_serve.py checkpoints/two_tower_model_X.pt \\
      --queries ../shared/data/msmarco-trec-dl-2019/queries.dl19.tsv
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from msmarco_search.cli import run
from msmarco_search.cli.arguments import non_negative_int, positive_int, whole_number
from msmarco_search.core.errors import PipelineError
from msmarco_search.core.report import info
from msmarco_search.io.msmarco_files import read_queries
from msmarco_search.search.options import SYSTEMS

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


class Client:
    """One client: a keep-alive HTTP connection, opened again after a failure."""

    def __init__(self, base: str):
        parts = urllib.parse.urlsplit(base)
        self.host, self.port = parts.hostname, parts.port
        self.connection: http.client.HTTPConnection | None = None

    def get(self, path: str) -> tuple[float, int]:
        """``(milliseconds, status)`` of one GET; status 0: no answer (refused, reset, timed out)."""
        started = time.perf_counter()
        try:
            if self.connection is None:
                self.connection = http.client.HTTPConnection(self.host, self.port, timeout=120)
            self.connection.request("GET", path)
            response = self.connection.getresponse()
            json.loads(response.read())
            status = response.status
        except (OSError, http.client.HTTPException, ValueError) as error:
            if not _failures:
                info(f"request failed: {error!r} ({path[:100]})")
            _failures.append(error)
            self.close()
            status = 0
        return (time.perf_counter() - started) * 1000, status

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


def load(base: str, queries: list[str], requests: int, clients: int, k: int) -> tuple[list[tuple[str, float, int]],
                                                                                     float]:
    """``requests`` searches sent by ``clients`` clients at once: ``[(system, ms, status)]`` and the seconds."""
    jobs = [(SYSTEMS[i % len(SYSTEMS)], queries[i % len(queries)]) for i in range(requests)]
    local = threading.local()
    opened: list[Client] = []

    def one(job: tuple[str, str]) -> tuple[str, float, int]:
        if not hasattr(local, "client"):
            local.client = Client(base)
            opened.append(local.client)
        system, query = job
        return (system, *local.client.get("/api/search?" + urllib.parse.urlencode({"q": query, "system": system,
                                                                                    "k": k})))

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        results = list(pool.map(one, jobs))
    seconds = time.perf_counter() - started
    for client in opened:
        client.close()
    return results, seconds


def summary(results: list[tuple[str, float, int]], seconds: float) -> dict[str, float]:
    times = [ms for _, ms, _ in results]
    return {"requests": len(results), "errors": sum(status != 200 for _, _, status in results),
            "per_s": len(results) / seconds, "p50": statistics.median(times), "p95": percentile(times, 0.95),
            "max": max(times)}


def report(runs: dict[int, dict[str, float]], concurrent: list[tuple[str, float, int]]) -> None:
    info(f"{'clients':>7} {'requests':>8} {'errors':>6} {'requests/s':>10} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
    for clients, row in runs.items():
        info(f"{clients:>7} {row['requests']:>8} {row['errors']:>6} {row['per_s']:>10.1f} {row['p50']:>8.1f} "
             f"{row['p95']:>8.1f} {row['max']:>8.1f}")
    one, many = runs[min(runs)], runs[max(runs)]
    info(f"ratio: {many['per_s'] / one['per_s']:.2f} ({max(runs)} clients' requests/s over 1 client's)")
    info("p50 ms per system, " + f"{max(runs)} clients: " + ", ".join(
        f"{system} {statistics.median([ms for s, ms, _ in concurrent if s == system]):.1f}"
        for system in SYSTEMS if any(s == system for s, _, _ in concurrent)))


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, nargs="?", help="the model to serve (unless --url)")
    parser.add_argument("--url", default=None, help="a running server (http://HOST:PORT) instead of starting one")
    parser.add_argument("--queries", type=Path, required=True, help="queries TSV (qid<TAB>text), used round-robin")
    parser.add_argument("--requests", type=positive_int, default=200, help="requests sent in each run (200)")
    parser.add_argument("--concurrency", type=whole_number(2, 1024, "one thread per client"), default=20,
                        help="clients at once in the second run (20)")
    parser.add_argument("-k", type=positive_int, default=10, help="hits per request (10)")
    parser.add_argument("--warmup", type=non_negative_int, default=20, help="requests sent first and not counted (20)")
    parser.add_argument("--screenshot", type=Path, default=None, help="save a PNG of the page here (Chromium)")
    args, extra = parser.parse_known_args(argv)
    if (args.model is None) == (args.url is None):
        parser.error("give MODEL (a server is started) or --url, not both")
    queries = list(read_queries(args.queries).values())
    process = None
    base = args.url.rstrip("/") if args.url else None
    if base is None:
        process, base = start_server(args.model, [a for a in extra if a != "--"])
    try:
        if args.warmup > 0:
            load(base, queries, args.warmup, args.concurrency, args.k)
        runs, concurrent = {}, []
        for clients in (1, args.concurrency):
            results, seconds = load(base, queries, args.requests, clients, args.k)
            runs[clients] = summary(results, seconds)
            concurrent = results
        report(runs, concurrent)
        if args.screenshot is not None:
            screenshot(base, queries[0], args.screenshot)
    finally:
        if process is not None:
            process.send_signal(signal.SIGINT)
            process.wait(timeout=60)
    return 0


if __name__ == "__main__":
    run(main)
