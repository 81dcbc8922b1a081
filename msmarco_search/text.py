"""The tokeniser: the one definition of a token, shared by CBOW, triplets, the two towers, BM25 and search.

A token is a run of letters and digits of any script, after four steps (``normalize``):

1. ``repair``: mojibake undone. MS MARCO v1 stores UTF-8 text that was once decoded as Latin-1: 23 % of the
   DL 2019 pool's passages hold non-ASCII characters, and all but 2 of those 6,593 are such mojibake
   (``donâ\\x80\\x99t`` for ``don’t``, ``EncyclopÃ¦dia``).
2. NFKC: compatibility forms become their plain letters (``ﬁ`` -> ``fi``, full-width ``Ａ`` -> ``A``, ``²`` -> ``2``).
3. lower-casing (``str.lower``: Unicode's full mapping; not ``casefold``, which no tokenizer library the export
   can use reproduces, and which differs from it only on ``ß``, final sigma and a few others).
4. accents folded: NFD, every combining mark removed, NFC (``café`` -> ``cafe``, ``İ`` -> ``i``).

No letter is cut: ``café`` is ``cafe`` (the first tokeniser, ``lower-alnum-v1``, kept only ``[a-z0-9]`` runs and
made it ``caf``), and Greek, Cyrillic, Arabic or Chinese text keeps its words. Text without a letter or digit
(punctuation, symbols, emoji) has no tokens. On ASCII text the tokens are exactly the first tokeniser's, and
that path skips the Unicode work (most texts are ASCII).

``msmarco_search.export`` rebuilds steps 2-4 and the token pattern from ``tokenizers`` modules; step 1 has no
such module, so an exported model sees mojibake as written (repair such text first with ``repair``).

Stemming is a setting on top of the tokens, not part of them: BM25 stems by default (``--bm25-stemmer``), and
word vectors and the towers can (``--stemmer``, recorded in the vocabulary). Both go through ``load_stemmer``.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

import ftfy
import regex

# Bump when the token definition changes: caches keyed on it are then rebuilt.
TOKENIZER_VERSION = "unicode-v2"
TOKEN_PATTERN = r"[\p{L}\p{N}]+"  # letters and digits of every script (the regex module's Unicode classes)
TEXT_BREAK = "\n"
STEMMERS = ("english", "none")  # PyStemmer's Snowball English stemmer (the one bm25s supports), or none
_TOKEN = regex.compile(TOKEN_PATTERN)
# the same tokens, plus the line breaks that separate the texts of a chunk (tokenize_many)
_TOKEN_OR_BREAK = regex.compile(TOKEN_PATTERN + r"|\n")
# On ASCII the pattern is exactly these, and the standard library's re runs them faster than regex does.
_ASCII_TOKEN = re.compile(r"[a-z0-9]+")
_ASCII_TOKEN_OR_BREAK = re.compile(r"[a-z0-9]+|\n")
_MARKS = regex.compile(r"\p{M}+")
# the runs a display marks: letters, digits and the marks inside words, found in the text as written
_WORD_AS_WRITTEN = regex.compile(r"[\p{L}\p{M}\p{N}]+")


def repair(text: str) -> str:
    """``text`` with mojibake undone; ASCII and correctly encoded text come back unchanged.

    MS MARCO v1's defect is one exact round trip (UTF-8 bytes read as Latin-1), so undoing it first is a
    2 µs C-level step. On the DL 2019 pool it repairs 6,525 of the 6,593 non-ASCII passages, agrees with
    ftfy on 6,522 and fully decodes the other 3 (Arabic, Cyrillic) where ftfy leaves half of them broken;
    ftfy's ``fix_encoding`` (about 230 µs a text) takes what the round trip cannot decode, such as correct
    Latin-1 (``café`` is not valid UTF-8 once encoded) or text in other scripts.
    """
    if text.isascii():
        return text
    try:
        return text.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return ftfy.fix_encoding(text)


def normalize(text: str) -> str:
    """``text`` repaired, NFKC-normalised, lower-cased and with its accents folded: what the tokens are cut from."""
    if text.isascii():
        return text.lower()
    text = unicodedata.normalize("NFKC", repair(text)).lower()
    return unicodedata.normalize("NFC", _MARKS.sub("", unicodedata.normalize("NFD", text)))


def tokenize(text: str) -> list[str]:
    """The tokens of ``text``: runs of letters and digits of ``normalize(text)``."""
    if text.isascii():
        return _ASCII_TOKEN.findall(text.lower())
    return _TOKEN.findall(normalize(text))


def tokenize_many(texts: list[str]) -> list[str]:
    """The tokens of all ``texts`` in one regex pass, each text's tokens followed by ``TEXT_BREAK``.

    Exactly ``tokenize`` per text (a line break is never part of a token), but one C-level ``findall`` over
    the joined chunk instead of one call and one list per text.
    """
    if not texts:
        return []
    joined = TEXT_BREAK.join(texts)
    if joined.isascii():
        if joined.count(TEXT_BREAK) != len(texts) - 1:  # a text holds line breaks: they only separate tokens
            joined = TEXT_BREAK.join(text.replace(TEXT_BREAK, " ") for text in texts)
        return _ASCII_TOKEN_OR_BREAK.findall(joined.lower() + TEXT_BREAK)
    # A text's own line breaks become spaces only after it is normalised: repair reads the text as written
    # (ftfy takes "Â" + space for a damaged no-break space, but not "Â" + line break).
    joined = TEXT_BREAK.join(normalize(text).replace(TEXT_BREAK, " ") for text in texts)
    return _TOKEN_OR_BREAK.findall(joined + TEXT_BREAK)


def token_spans(text: str) -> list[tuple[int, int, list[str]]]:
    """``(start, end, tokens)`` of each word of ``text`` at its place in ``text``: what a display marks.

    A word is a run of letters, digits and combining marks as written; ``tokens`` are ``tokenize``'s tokens of
    it (usually one). Normalising first, as ``tokenize`` does, can change a text's length (``İ`` is two
    characters lower-cased, ``ﬁ`` two after NFKC), which would shift the positions, so the runs are found in
    the text as written and normalised one by one.
    """
    return [(m.start(), m.end(), tokenize(m.group())) for m in _WORD_AS_WRITTEN.finditer(text)]


def load_stemmer(name: str) -> Any:
    """PyStemmer's Snowball stemmer of ``name`` (``stemWord``, ``stemWords``), or None for ``none``."""
    if name not in STEMMERS:
        raise ValueError(f"unknown stemmer {name!r} (use {', '.join(STEMMERS)})")
    if name == "none":
        return None
    import Stemmer  # PyStemmer

    return Stemmer.Stemmer(name)
