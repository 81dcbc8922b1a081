"""The tokeniser: the one definition of a token, shared by CBOW, triplets, the two towers, BM25 and search."""

from __future__ import annotations

import re

# Bump when the token definition changes: caches keyed on it are then rebuilt.
TOKENIZER_VERSION = "lower-alnum-v1"
_TOKEN_PATTERN = r"[a-z0-9]+"
_TOKEN = re.compile(_TOKEN_PATTERN)
# the same tokens, plus the line breaks that separate the texts of a chunk (tokenize_many)
_TOKEN_OR_BREAK = re.compile(_TOKEN_PATTERN + r"|\n")
TEXT_BREAK = "\n"


def tokenize(text: str) -> list[str]:
    """Lower-case ``text`` and return its runs of ASCII letters and digits."""
    return _TOKEN.findall(text.lower())


def tokenize_many(texts: list[str]) -> list[str]:
    """The tokens of all ``texts`` in one regex pass, each text's tokens followed by ``TEXT_BREAK``.

    Exactly ``tokenize`` per text (a line break is never part of a token), but one C-level ``findall`` over
    the joined chunk instead of one call and one list per text.
    """
    if not texts:
        return []
    joined = TEXT_BREAK.join(texts)
    if joined.count(TEXT_BREAK) != len(texts) - 1:  # a text holds line breaks: they only separate tokens
        joined = TEXT_BREAK.join(text.replace(TEXT_BREAK, " ") for text in texts)
    return _TOKEN_OR_BREAK.findall(joined.lower() + TEXT_BREAK)


# the same runs, found in the text as written (not lower-cased first), so their positions are the text's own
_TOKEN_AS_WRITTEN = re.compile(r"[A-Za-z0-9]+")


def token_spans(text: str) -> list[tuple[int, int, str]]:
    """``(start, end, token)`` of each token of ``text`` at its place in ``text``: what a display marks.

    The tokens are ``tokenize``'s: runs of ASCII letters and digits, lower-cased. Lower-casing first (as
    ``tokenize`` does) can change a text's length ("İ" is two characters lower-cased), which would shift the
    positions, so the runs are found in the text as written and lower-cased one by one.
    """
    return [(m.start(), m.end(), m.group().lower()) for m in _TOKEN_AS_WRITTEN.finditer(text)]
