"""The search page's HTML: the query form and the hits of each system, with the query's words marked.

Every piece of text that comes from a user or a collection goes through ``html.escape``, so a query or a
passage holding markup is shown as text, never run by the browser.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from msmarco_search.core.text import repair, token_spans, tokenize
from msmarco_search.search.session import SearchResult

ALL_SYSTEMS = "all"
SYSTEM_LABELS = {"two-tower": "Two-tower", "bm25": "BM25", "hybrid": "Hybrid", "two-tower-prf": "Two-tower + feedback",
                 "hybrid-prf": "Hybrid + feedback", ALL_SYSTEMS: "All, side by side"}

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }
form { display: flex; gap: .5rem; flex-wrap: wrap; align-items: center; margin-bottom: 1rem; }
input[name=q] { flex: 1 1 24rem; font-size: 1.1rem; padding: .3rem; }
.systems { display: flex; gap: 1.5rem; align-items: flex-start; }
.system { flex: 1 1 0; min-width: 0; }
.hit { margin-bottom: .8rem; }
.meta { color: #666; font-size: .85rem; }
mark { background: #fde68a; }
.error { color: #b91c1c; }
"""


def highlight(text: str, query: str) -> str:
    """``text`` as HTML with each of its tokens that is a token of ``query`` in ``<mark>``.

    Tokens are the project's (``msmarco_search.core.text``): the words the two-tower and BM25 match on. The text is
    shown repaired (MS MARCO v1's mojibake undone), as the tokens see it.
    """
    text = repair(text)
    words = set(tokenize(query))
    parts, last = [], 0
    for start, end, tokens in token_spans(text):
        if words.intersection(tokens):
            parts.append(f"{escape(text[last:start])}<mark>{escape(text[start:end])}</mark>")
            last = end
    parts.append(escape(text[last:]))
    return "".join(parts)


def _form(query: str, system: str, k: int, systems: Sequence[str], max_k: int) -> str:
    options = "".join(f'<option value="{escape(name)}"{" selected" if name == system else ""}>'
                      f"{escape(SYSTEM_LABELS.get(name, name))}</option>" for name in [*systems, ALL_SYSTEMS])
    return (f'<form method="get" action="/" role="search">'
            f'<input type="search" name="q" value="{escape(query)}" placeholder="Search passages" autofocus>'
            f'<select name="system" aria-label="system">{options}</select>'
            f'<label>k <input type="number" name="k" value="{k}" min="1" max="{max_k}" style="width:5rem"></label>'
            f'<button type="submit">Search</button></form>')


def _result(result: SearchResult) -> str:
    label = escape(SYSTEM_LABELS.get(result.system, result.system))
    head = (f'<h2>{label}</h2><p class="meta took">{len(result.hits)} hits in '
            f'<span class="took-ms">{result.took_ms:.1f}</span> ms</p>')
    if result.note:
        return f'<section class="system" data-system="{escape(result.system)}">{head}<p>{escape(result.note)}</p>' \
               "</section>"
    if not result.hits:
        head += "<p>(no hits)</p>"
    hits = "".join(
        f'<li class="hit" data-id="{escape(hit.id)}"><div class="meta"><span class="hit-id">{escape(hit.id)}</span> '
        f'· score <span class="hit-score">{hit.score:.4f}</span></div>'
        f'<div class="hit-text">{highlight(hit.text, result.query)}</div></li>' for hit in result.hits)
    return f'<section class="system" data-system="{escape(result.system)}">{head}<ol>{hits}</ol></section>'


def render_page(systems: Sequence[str], passages: int, max_k: int, query: str = "", system: str = "two-tower",
                k: int = 10, results: Sequence[SearchResult] = (), error: str | None = None) -> str:
    """The whole page: the form (filled in with the request's values) and, when there was a query, the hits
    of each system asked for, side by side; ``error``: why the request was refused, shown above them."""
    title = f"{escape(query)} · msmarco-search" if query else "msmarco-search"
    body = [f'<h1>msmarco-search</h1><p class="meta">{passages:,} passages</p>',
            _form(query, system, k, systems, max_k)]
    if error:
        body.append(f'<p class="error" role="alert">{escape(error)}</p>')
    if results:
        total = sum(result.took_ms for result in results)
        body.append(f'<p class="meta">took <span id="took-ms">{total:.1f}</span> ms</p>')
        body.append('<div class="systems">' + "".join(_result(result) for result in results) + "</div>")
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_STYLE}</style></head>'
            f"<body>{''.join(body)}</body></html>")
