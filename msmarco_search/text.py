"""The tokeniser: the one definition of a token, shared by CBOW, triplets, the two towers, BM25 and search."""

from __future__ import annotations

import re

# Bump when the token definition changes: caches keyed on it are then rebuilt.
TOKENIZER_VERSION = "lower-alnum-v1"
_TOKEN = re.compile(r"[a-z0-9]+")


def tokenize(text: str) -> list[str]:
    """Lower-case ``text`` and return its runs of ASCII letters and digits."""
    return _TOKEN.findall(text.lower())
