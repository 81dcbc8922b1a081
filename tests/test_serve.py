"""The search page and its JSON API (search/search.py serve): through FastAPI's TestClient, one real uvicorn
started by the command line (rankings, bad requests, 200 requests 20 at a time), and headless Chromium
(opt-in: skipped where Debian's chromium and chromedriver are missing)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch
from conftest import ROOT, SEARCH_SCRIPT, hits_by_system

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from msmarco_search.cli.search import main as search_command  # noqa: E402
from msmarco_search.core.errors import PipelineError  # noqa: E402
from msmarco_search.core.text import load_stemmer  # noqa: E402
from msmarco_search.index.load import load_index  # noqa: E402
from msmarco_search.search.options import SYSTEMS, SearchOptions
from msmarco_search.search.page import highlight  # noqa: E402
from msmarco_search.search.server import MAX_K, SearchGate, create_app  # noqa: E402
from msmarco_search.search.session import SearchSession, make_retrievers
from msmarco_search.training.model_file import load_model  # noqa: E402

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


@pytest.fixture(scope="module")
def client(search_setup):
    model = load_model(search_setup["model"])
    index = load_index(search_setup["index"], model, search_setup["model"])
    session = SearchSession(index, make_retrievers(list(SYSTEMS), index, model, search_setup["model"],
                                                   SearchOptions()))
    with TestClient(create_app(session, SearchGate(4)), raise_server_exceptions=False) as test_client:
        yield test_client
    session.close()


def printed_hits(search_setup, capsys, query: str, k: int) -> dict[str, list[tuple[str, float]]]:
    """``{system: [(pid, score), ...]}`` as ``search/search.py query --system all`` prints them."""
    capsys.readouterr()
    assert search_command(["query", str(search_setup["model"]), query, "--system", "all", "-k", str(k)]) == 0
    out = capsys.readouterr().out
    scores: dict[str, list[tuple[str, float]]] = {}
    system = None
    for line in out.splitlines():
        words = line.split()
        if line.startswith("["):
            system = line[1:line.index("]")]
            scores[system] = []
        elif system is not None and words and words[0].isdigit():
            scores[system].append((words[1], float(words[2])))
    assert {name: [[pid for pid, _ in hits]] for name, hits in scores.items()} == hits_by_system(out)
    return scores


def test_api_gives_the_rankings_of_the_query_command(client, search_setup, capsys):
    for qid in ("m3", "q7", "s5"):
        query = search_setup["queries"][qid]
        expected = printed_hits(search_setup, capsys, query, 5)
        assert set(expected) == set(SYSTEMS)
        for system in SYSTEMS:
            response = client.get("/api/search", params={"q": query, "system": system, "k": 5})
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["query"] == query and body["system"] == system and body["took_ms"] >= 0
            got = [(hit["id"], hit["score"]) for hit in body["hits"]]
            assert [pid for pid, _ in got] == [pid for pid, _ in expected[system]], (qid, system)
            printed = [score for _, score in expected[system]]
            assert all(abs(score - shown) < 1e-4 for (_, score), shown in zip(got, printed, strict=True))
            for hit in body["hits"]:
                line = next(line for line in search_setup["lines"] if line.split("\t")[0] == hit["id"])
                assert hit["text"] == line.split("\t", 1)[1]
    default = client.get("/api/search", params={"q": search_setup["queries"]["m3"]}).json()
    assert default["system"] == "two-tower" and len(default["hits"]) == 10


@pytest.mark.parametrize("params, problem", [
    ({}, "missing the query"),
    ({"q": "   "}, "missing the query"),
    ({"q": "doc1y1", "k": "0"}, "k must be"),
    ({"q": "doc1y1", "k": "-3"}, "k must be"),
    ({"q": "doc1y1", "k": str(MAX_K + 1)}, "k must be"),
    ({"q": "doc1y1", "k": "ten"}, "k must be"),
    ({"q": "doc1y1", "system": "all"}, "unknown system"),
    ({"q": "doc1y1", "system": "<script>"}, "unknown system"),
    ({"q": "doc1y1 " * 300}, "characters; at most"),  # 100 KB: the real server test (httpx caps URLs at 64 KB)
])
def test_bad_requests_are_400_with_a_json_error(client, search_setup, params, problem):
    response = client.get("/api/search", params=params)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert problem in error and "\n" not in error and len(error) < 200
    assert "Traceback" not in response.text and str(search_setup["folder"]) not in response.text


def test_unknown_routes_and_methods_are_json_errors(client):
    assert client.get("/nowhere").status_code == 404 and "error" in client.get("/nowhere").json()
    posted = client.post("/api/search", data={"q": "x"})
    assert posted.status_code == 405 and "error" in posted.json()
    assert client.get("/docs").status_code == 404  # no interactive docs or schema that list the internals


def test_a_query_of_unknown_words_has_no_two_tower_hits_and_says_why(client):
    body = client.get("/api/search", params={"q": "zzqx wvut"}).json()
    assert body["hits"] == [] and "no known words" in body["note"]


def test_page_has_the_form_and_shows_each_systems_hits_with_the_words_marked(client, search_setup):
    empty = client.get("/")
    assert empty.status_code == 200 and "<form" in empty.text and 'name="q"' in empty.text
    for name in (*SYSTEMS, "all"):
        assert f'value="{name}"' in empty.text
    query = search_setup["queries"]["m3"]
    page = client.get("/", params={"q": query, "system": "all", "k": 3})
    assert page.status_code == 200
    assert page.text.count('<section class="system"') == len(SYSTEMS) and 'id="took-ms"' in page.text
    for system in SYSTEMS:
        section = page.text.split(f'data-system="{system}"', 1)[1].split("</section>", 1)[0]
        assert section.count('<li class="hit"') == 3
        first = client.get("/api/search", params={"q": query, "system": system, "k": 3}).json()["hits"][0]["id"]
        assert f'<li class="hit" data-id="{first}">' in section.split("</li>", 1)[0], system  # the API's first
        # p3 first (with feedback from the top 3 of 52 toy passages, the moved query may rank another first)
        assert first == "p3" or system.endswith("-prf"), system
    span_word = search_setup["queries"]["s3"].split()[0]
    assert f"<mark>{span_word}</mark>".lower() in page.text.lower()
    assert f'value="{query}"' in page.text  # the form keeps the query


def test_page_escapes_the_query_and_the_passages(client):
    attack = '"><script>alert(1)</script><img src=x onerror=alert(2)> doc3y1'
    page = client.get("/", params={"q": attack, "system": "bm25"})
    assert page.status_code == 200
    assert "<script>" not in page.text and "<img" not in page.text and "&lt;script&gt;" in page.text
    assert "script-src" not in page.headers["content-security-policy"]  # default-src 'none': no script runs
    marked = highlight('<b onclick="x()">Doc3y1</b> & doc3y10', "doc3y1 onclick")
    assert marked == ('&lt;b <mark>onclick</mark>=&quot;x()&quot;&gt;<mark>Doc3y1</mark>&lt;/b&gt; &amp; doc3y10')
    bad = client.get("/", params={"q": "doc3y1", "k": "5000"})
    assert bad.status_code == 400 and "k must be" in bad.text and "<form" in bad.text


def test_the_page_marks_words_beyond_ascii_and_shows_mojibake_repaired():
    """The marks follow the tokens: an accented word matches its unaccented query word, and MS MARCO v1's
    mojibake is shown as the text it was (as the tokens see it), not as Latin-1 debris."""
    assert highlight("Café au lait — İstanbul", "cafe istanbul") == (
        "<mark>Café</mark> au lait — <mark>İstanbul</mark>")
    assert highlight("donâ\x80\x99t stop", "dont") == "don’t stop"
    assert highlight("EncyclopÃ¦dia Britannica", "encyclopædia") == "<mark>Encyclopædia</mark> Britannica"


def test_serve_refuses_a_port_in_use_in_one_line(search_setup):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(PipelineError, match=f"cannot listen on 127.0.0.1 port {port}"):
            search_command(["serve", str(search_setup["model"]), "--port", str(port)])


# ---------------------------------------------------------------------------------------------- real server


@pytest.fixture(scope="module")
def live_server(search_setup):
    """``search/search.py serve MODEL --port 0`` as a user starts it: the URL it prints, then stopped by
    Ctrl-C (SIGINT) at the end, which must end it cleanly."""
    env = {**os.environ, "MSMARCO_SEARCH_NO_PROGRESS": "1", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, str(ROOT / SEARCH_SCRIPT), "serve", str(search_setup["model"]),
                                "--port", "0"], cwd=search_setup["folder"], env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    watchdog = threading.Timer(120, process.kill)  # a server that never says where it listens
    watchdog.start()
    lines = []
    for line in process.stdout:
        lines.append(line)
        if "Serving the search page on " in line:
            break
    watchdog.cancel()
    assert lines and "Serving" in lines[-1], "".join(lines) + process.stderr.read()
    url = lines[-1].split(" on ", 1)[1].split()[0]
    yield {"url": url.rstrip("/"), "process": process}
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert "Traceback" not in err


def get_json(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_real_server_answers_like_the_app_and_holds_200_requests_20_at_a_time(live_server, client, search_setup):
    base = live_server["url"]
    assert base.startswith("http://127.0.0.1:")  # binds this machine only unless told otherwise
    queries = [search_setup["queries"][f"{kind}{topic}"] for kind in "qsm" for topic in range(12)]
    systems = list(SYSTEMS)
    expected = {(q, s): client.get("/api/search", params={"q": q, "system": s, "k": 10}).json()["hits"]
                for q in queries for s in systems}

    def same(got: list[dict], want: list[dict]) -> bool:
        # ids and texts exactly; scores to float32 precision (another process, other BLAS threads)
        return [(h["id"], h["text"]) for h in got] == [(h["id"], h["text"]) for h in want] and all(
            abs(g["score"] - w["score"]) < 1e-5 for g, w in zip(got, want, strict=True))

    def one(i: int) -> tuple[int, str]:
        query, system = queries[i % len(queries)], systems[i % len(systems)]
        status, body = get_json(f"{base}/api/search?" + urllib.parse.urlencode({"q": query, "system": system}))
        if status != 200 or not same(body["hits"], expected[(query, system)]):
            return status, f"{system} {query!r}: {body}"
        return status, ""

    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(one, range(200)))
    assert [status for status, _ in results] == [200] * 200, [problem for _, problem in results if problem][:3]
    # concurrent requests get their own hits, texts included
    assert not [problem for _, problem in results if problem][:3]
    status, body = get_json(f"{base}/api/search?" + urllib.parse.urlencode({"q": "a" * 100_000}))
    assert status == 400 and "at most" in body["error"]  # a 100 KB query reaches the app, not h11's bare 400
    with urllib.request.urlopen(f"{base}/?q=doc3y1&system=bm25", timeout=60) as response:
        assert response.status == 200 and "<mark>doc3y1</mark>" in response.read().decode().lower()


def browser_available() -> bool:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        return False
    try:
        import selenium  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not browser_available(), reason="needs Debian's chromium and chromedriver, and selenium")
def test_headless_chromium_searches_and_shows_the_hits(live_server, search_setup, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        driver.get(live_server["url"] + "/")
        box = driver.find_element(By.NAME, "q")
        query = search_setup["queries"]["m3"]
        box.send_keys(query)
        Select(driver.find_element(By.NAME, "system")).select_by_value("all")
        k = driver.find_element(By.NAME, "k")
        k.clear()
        k.send_keys("3")
        box.submit()
        WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "li.hit"))
        assert f"q={urllib.parse.quote_plus(query)}" in driver.current_url
        sections = driver.find_elements(By.CSS_SELECTOR, "section.system")
        assert [s.get_attribute("data-system") for s in sections] == list(SYSTEMS)
        for section in sections:
            ids = [hit.get_attribute("data-id") for hit in section.find_elements(By.CSS_SELECTOR, "li.hit")]
            assert len(ids) == 3 and ids[0] == "p3"
            first = section.find_element(By.CSS_SELECTOR, "li.hit .hit-text")
            assert first.find_elements(By.TAG_NAME, "mark")  # the query's words are highlighted
            assert first.text == search_setup["passages"][3]
        assert float(driver.find_element(By.ID, "took-ms").text) >= 0
    finally:
        driver.quit()
    shutil.rmtree(tmp_path / "profile", ignore_errors=True)


def test_a_failing_search_is_a_500_that_shows_no_traceback_and_no_path(search_setup, monkeypatch):
    """Whatever breaks inside a search (here a read error naming a file of the index), the client gets the fixed
    message; the details stay in the server's log."""
    model = load_model(search_setup["model"])
    index = load_index(search_setup["index"], model, search_setup["model"])
    session = SearchSession(index, make_retrievers(["bm25"], index, model, search_setup["model"], SearchOptions()))
    secret = f"{search_setup['index']}/vectors.npy: Input/output error"

    def broken(*args, **kwargs):
        raise OSError(secret)

    monkeypatch.setattr(session, "search", broken)
    try:
        with TestClient(create_app(session), raise_server_exceptions=False) as test_client:
            response = test_client.get("/api/search", params={"q": "what is doc0y1", "system": "bm25"})
    finally:
        session.close()
    assert response.status_code == 500
    assert response.json() == {"error": "internal error: the search failed; the server's log has the details"}
    assert str(search_setup["index"]) not in response.text and "Traceback" not in response.text


def test_serve_without_the_serve_extra_says_how_to_install_it(search_setup, capsys, monkeypatch):
    from conftest import assert_one_line_error, cli

    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if the extra were not installed: import fails
    result = cli(capsys, SEARCH_SCRIPT, "serve", search_setup["model"], "--port", "0")
    assert_one_line_error(result, "the search page needs FastAPI and uvicorn (uvicorn is missing)",
                          "uv sync --extra serve")


# ---------------------------------------------------------------------------------------------- in parallel


def test_searches_from_20_threads_at_once_rank_as_one_at_a_time(search_setup):
    """The session holds nothing while ranking: 20 threads searching every system at once get, hit for hit, the
    rankings and texts of the same searches made one after another (a shared stemmer, reader or model state would
    mix them up)."""
    model = load_model(search_setup["model"])
    index = load_index(search_setup["index"], model, search_setup["model"])
    threads = torch.get_num_threads()  # the session sets the process's count, as the server does: put it back
    session = SearchSession(index, make_retrievers(list(SYSTEMS), index, model, search_setup["model"],
                                                   SearchOptions()), threads=1)
    jobs = [(query, system) for query in search_setup["queries"].values() for system in SYSTEMS]
    try:
        alone = [session.search(query, system, 10).to_json()["hits"] for query, system in jobs]
        with ThreadPoolExecutor(max_workers=20) as pool:
            together = list(pool.map(lambda job: session.search(job[0], job[1], 10).to_json()["hits"], jobs * 2))
    finally:
        session.close()
        torch.set_num_threads(threads)
    assert together == alone * 2
    assert sum(map(len, alone)) > len(jobs)  # the systems found hits: rankings were compared, not empty lists


def test_each_thread_stems_with_its_own_stemmer():
    stemmer = load_stemmer("english")
    words = [f"{stem}{ending}" for stem in ("connect", "run", "comput", "gener", "nation") for ending in
             ("ing", "ed", "ions", "ational", "ers", "s")] * 200
    expected = stemmer.stemWords(words)
    with ThreadPoolExecutor(max_workers=8) as pool:
        assert list(pool.map(lambda _: stemmer.stemWords(words), range(64))) == [expected] * 64
    together = threading.Barrier(4)  # four threads at once, each holding its stemmer while the others take theirs

    def own(_: int) -> object:
        mine = stemmer._own()
        together.wait(30)
        return mine

    with ThreadPoolExecutor(max_workers=4) as pool:
        owners = list(pool.map(own, range(4)))
    assert len({id(owner) for owner in owners}) == 4 and all(owner is not stemmer._own() for owner in owners)


class BlockedSession:
    """A session whose searches wait until released, so that requests stay in flight while others arrive."""

    def __init__(self, session: SearchSession):
        self.session, self.index, self.systems = session, session.index, session.systems
        self.started, self.release = threading.Semaphore(0), threading.Event()

    def search(self, query: str, system: str, k: int):
        self.started.release()
        assert self.release.wait(60)
        if query == "fail":
            raise OSError("a read failed")
        return self.session.search(query, system, k)


def test_an_overloaded_server_answers_503_at_once_and_serves_again_when_it_can(search_setup):
    """One search at a time and one waiting: a third request is answered 503 with a JSON error at once, while
    the two are still in flight; they then get their hits, and the server takes requests again (also after a
    search that failed)."""
    model = load_model(search_setup["model"])
    index = load_index(search_setup["index"], model, search_setup["model"])
    session = BlockedSession(SearchSession(index, make_retrievers(["bm25"], index, model, search_setup["model"],
                                                                  SearchOptions())))
    gate = SearchGate(1, queue=1)
    app = create_app(session, gate)
    query = search_setup["queries"]["s3"]

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://server") as client:
            first = asyncio.create_task(client.get("/api/search", params={"q": query, "system": "bm25"}))
            assert await asyncio.to_thread(session.started.acquire, True, 60)
            second = asyncio.create_task(client.get("/", params={"q": query, "system": "bm25"}))
            while gate.admitted < 2:
                await asyncio.sleep(0.01)
            busy = await client.get("/api/search", params={"q": query, "system": "bm25"})
            assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
            assert busy.headers["content-type"] == "application/json"
            message = "the server is busy: 1 searches are running and 1 waiting, as many as it takes; try again"
            assert busy.json() == {"error": f"{message} in a moment"}
            busy_page = await client.get("/", params={"q": query, "system": "bm25"})  # the form, saying so
            assert busy_page.status_code == 503 and message in busy_page.text and 'name="q"' in busy_page.text
            assert not first.done() and not second.done()  # the 503s did not wait for them
            session.release.set()
            answered, page = await first, await second
            assert answered.status_code == 200 and answered.json()["hits"][0]["id"] == "p3"
            assert page.status_code == 200 and 'data-id="p3"' in page.text
            assert gate.admitted == 0
            failed = await client.get("/api/search", params={"q": "fail", "system": "bm25"})
            assert failed.status_code == 500 and gate.admitted == 0
            again = await client.get("/api/search", params={"q": query, "system": "bm25"})
            assert again.status_code == 200 and again.json()["hits"][0]["id"] == "p3"

    try:
        asyncio.run(scenario())
    finally:
        session.release.set()
        session.session.close()


def test_serve_bounds_its_parallel_searches_and_queue(search_setup, capsys):
    from conftest import assert_usage_error

    for flag, value in (("--parallel", "0"), ("--parallel", "257"), ("--queue", "-1"), ("--queue", "100001")):
        with pytest.raises(SystemExit) as stop:
            search_command(["serve", str(search_setup["model"]), flag, value])
        assert_usage_error((stop.value.code, "", capsys.readouterr().err), flag)


def test_every_place_a_passage_is_shown_repairs_its_mojibake(search_setup, tmp_path, capsys):
    """The command line and the JSON API show MS MARCO v1's mojibake repaired, as the page does (one repair for
    every place a passage is shown); the index keeps the text as the collection holds it."""
    model = tmp_path / "model.pt"
    shutil.copy(search_setup["model"], model)
    broken = "Donâ\x80\x99t stop: " + search_setup["passages"][3]
    (tmp_path / "collection.tsv").write_text("\n".join([*search_setup["lines"], f"broken\t{broken}"]) + "\n")
    assert search_command(["index", str(model), "--dataset-path", str(tmp_path / "collection.tsv")]) == 0
    capsys.readouterr()
    query = search_setup["queries"]["s3"]
    assert search_command(["query", str(model), *query.split(), "--system", "bm25", "-k", "60"]) == 0
    shown = capsys.readouterr().out
    assert "Don’t stop" in shown and "Donâ" not in shown
    index = load_index(tmp_path / "model_index", load_model(model), model)
    session = SearchSession(index, make_retrievers(["bm25"], index, load_model(model), model, SearchOptions()))
    with TestClient(create_app(session, SearchGate(4)), raise_server_exceptions=False) as api:
        hits = api.get("/api/search", params={"q": query, "system": "bm25", "k": 60}).json()["hits"]
    session.close()
    text = next(hit["text"] for hit in hits if hit["id"] == "broken")
    assert text.startswith("Don’t stop: ")
