"""The search page and its JSON API, as a FastAPI app over a :class:`~msmarco_search.search.session.SearchSession`.

- ``GET /``: the page (``msmarco_search.search.page``): a query box, the system (or all side by side), k;
- ``GET /api/search?q=...&system=two-tower|bm25|hybrid&k=10``: ``{"query", "system", "took_ms", "hits": [{"id",
  "score", "text"}]}``, the ranking ``search/search.py query`` prints (the session's retrievers are its).

Searches run in parallel on worker threads, at most ``parallel`` at once (``SearchGate``); up to ``queue`` more
wait for a turn. A request beyond those is answered at once with status 503 and ``{"error": "..."}`` (and a
``Retry-After``), so an overloaded server says so instead of letting its clients time out.

A bad request (no ``q``, ``k`` not in 1..``MAX_K``, an unknown system, a query over ``MAX_QUERY_CHARS``) is
status 400 with ``{"error": "..."}``; anything else that goes wrong is a 500 with a fixed message, so no
traceback or file path ever reaches a client. FastAPI is the ``serve`` extra: import this module only to serve.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException

from msmarco_search.core.errors import short
from msmarco_search.search.options import DEFAULT_QUEUE, MAX_PARALLEL, MAX_QUEUE
from msmarco_search.search.page import ALL_SYSTEMS, render_page
from msmarco_search.search.session import SearchSession

MAX_K = 100  # hits a request may ask for: the page shows them all, and the hybrid fuses max(depth, k) of each
MAX_QUERY_CHARS = 1000  # far above any real query (MS MARCO's longest are ~200), far below what slows a search
DEFAULT_K = 10
BUSY_HEADERS = {"Retry-After": "1"}  # a busy server's answer: try again in a second
_T = TypeVar("_T")
# Browsers run nothing from the page (it has no script), load nothing else, and submit the form only here:
# a second line of defence behind escaping every text the page shows.
SECURITY_HEADERS = {"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
                    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


class BadRequest(ValueError):
    """A request the client can fix: its message is the 400 response's ``error``."""


def parse_query(params: Mapping[str, str]) -> str:
    query = params.get("q")
    if query is None or not query.strip():
        raise BadRequest("missing the query: give it as ?q=...")
    if len(query) > MAX_QUERY_CHARS:
        raise BadRequest(f"the query is {len(query):,} characters; at most {MAX_QUERY_CHARS:,} are searched")
    return query.strip()


def parse_k(params: Mapping[str, str]) -> int:
    text = params.get("k")
    if text is None or text == "":
        return DEFAULT_K
    try:
        k = int(text) if len(text) <= 20 else 0  # a longer text is no k (and int() refuses over 4,300 digits)
    except ValueError:
        k = 0
    if not 1 <= k <= MAX_K:
        raise BadRequest(f"k must be a whole number from 1 to {MAX_K}, got {short(text, 40)!r}")
    return k


def parse_systems(params: Mapping[str, str], systems: list[str], allow_all: bool) -> list[str]:
    """The systems asked for: one of ``systems``, or with ``allow_all`` (the page) all of them."""
    system = params.get("system") or systems[0]
    if allow_all and system == ALL_SYSTEMS:
        return list(systems)
    if system not in systems:
        known = ", ".join(systems + ([ALL_SYSTEMS] if allow_all else []))
        raise BadRequest(f"unknown system {short(system, 40)!r}; one of {known}")
    return [system]


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers={**SECURITY_HEADERS, **(headers or {})})


class Busy(Exception):
    """The server holds as many searches as it takes (running and waiting): the request is answered 503."""


class SearchGate:
    """At most ``parallel`` searches at once on worker threads, and at most ``queue`` more waiting for one;
    a request beyond those is turned away at once (``Busy``).

    The count is kept on the event loop's thread (``run`` is entered there), so it needs no lock; the threads'
    limiter is made on the loop that first uses it (an ``anyio`` limiter belongs to one loop).
    """

    def __init__(self, parallel: int, queue: int = DEFAULT_QUEUE):
        if not 1 <= parallel <= MAX_PARALLEL or not 0 <= queue <= MAX_QUEUE:
            raise ValueError(f"parallel must be 1-{MAX_PARALLEL} and queue 0-{MAX_QUEUE}, got {parallel}, {queue}")
        self.parallel, self.queue = parallel, queue
        self.admitted = 0  # running or waiting
        self._limiter: anyio.CapacityLimiter | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def limit(self) -> int:
        return self.parallel + self.queue

    def _threads(self) -> anyio.CapacityLimiter:
        loop = asyncio.get_running_loop()
        if self._limiter is None or self._loop is not loop:
            self._limiter, self._loop = anyio.CapacityLimiter(self.parallel), loop
        return self._limiter

    async def run(self, function: Callable[..., _T], *args: Any) -> _T:
        """``function(*args)`` on a worker thread once one is free; ``Busy`` at once when ``limit`` requests
        are already running or waiting."""
        if self.admitted >= self.limit:
            raise Busy(f"the server is busy: {self.parallel} searches are running and {self.queue} waiting, as many "
                       f"as it takes; try again in a moment")
        self.admitted += 1
        try:
            return await anyio.to_thread.run_sync(function, *args, limiter=self._threads())
        finally:
            self.admitted -= 1


def create_app(session: SearchSession, gate: SearchGate | None = None) -> FastAPI:
    """The app serving ``session``: requests are read and answered on the event loop, and their searches run on
    ``gate``'s worker threads (default: one at a time, 64 waiting), several at once (``SearchSession`` holds
    nothing while ranking)."""
    gate = gate or SearchGate(1)
    app = FastAPI(title="msmarco-search", docs_url=None, redoc_url=None, openapi_url=None)
    systems = session.systems
    passages = len(session.index)

    @app.exception_handler(HTTPException)
    def http_error(request: Request, error: HTTPException) -> JSONResponse:  # unknown route, wrong method
        return _error(error.status_code, str(error.detail))

    @app.exception_handler(RequestValidationError)
    def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return _error(400, "bad request")

    @app.exception_handler(Busy)
    def busy(request: Request, error: Busy) -> JSONResponse:
        return _error(503, str(error), BUSY_HEADERS)

    @app.exception_handler(Exception)
    def internal_error(request: Request, error: Exception) -> JSONResponse:
        # the server's console gets the traceback (uvicorn logs it); the client only this line
        return _error(500, "internal error: the search failed; the server's log has the details")

    @app.get("/api/search")
    async def api_search(request: Request) -> JSONResponse:
        params = request.query_params
        try:
            query, (system,), k = parse_query(params), parse_systems(params, systems, False), parse_k(params)
        except BadRequest as error:
            return _error(400, str(error))
        result = await gate.run(session.search, query, system, k)
        return JSONResponse(result.to_json(), headers=SECURITY_HEADERS)

    @app.get("/", response_class=HTMLResponse)
    async def page(request: Request) -> HTMLResponse:
        params = request.query_params
        query, system = params.get("q", ""), params.get("system") or systems[0]
        try:  # the form shows the k asked for when it is one it can search with
            k = parse_k(params)
        except BadRequest:
            k = DEFAULT_K
        if not query.strip():  # the empty form
            return HTMLResponse(render_page(systems, passages, MAX_K, system=system, k=k), headers=SECURITY_HEADERS)
        try:
            query, chosen, k = parse_query(params), parse_systems(params, systems, True), parse_k(params)
        except BadRequest as error:
            html = render_page(systems, passages, MAX_K, query[:MAX_QUERY_CHARS], system, k, error=str(error))
            return HTMLResponse(html, status_code=400, headers=SECURITY_HEADERS)

        def search_and_render() -> str:
            results = [session.search(query, name, k) for name in chosen]
            return render_page(systems, passages, MAX_K, query, system, k, results)

        try:
            return HTMLResponse(await gate.run(search_and_render), headers=SECURITY_HEADERS)
        except Busy as error:  # the form again, saying so
            return HTMLResponse(render_page(systems, passages, MAX_K, query, system, k, error=str(error)),
                                status_code=503, headers={**SECURITY_HEADERS, **BUSY_HEADERS})

    return app
