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

``msmarco_search.training.export`` rebuilds steps 2-4 and the token pattern from ``tokenizers`` modules; step 1 has no
such module, so an exported model sees mojibake as written (repair such text first with ``repair``).

Stemming is a setting on top of the tokens, not part of them: BM25 stems by default (``--bm25-stemmer``), and
word vectors and the towers can (``--stemmer``, recorded in the vocabulary). Both go through ``load_stemmer``.
"""

from __future__ import annotations

import re
import threading
import unicodedata
from collections.abc import Iterator
from functools import cache
from typing import Any

# Bump when the token definition changes: caches keyed on it are then rebuilt.
TOKENIZER_VERSION = "unicode-v2"
TEXT_BREAK = "\n"
STEMMERS = ("english", "none")  # PyStemmer's Snowball English stemmer (the one bm25s supports), or none
# Letters and digits of every script: Unicode categories L and N, which is what a str pattern's [^\W_] is
# (str.isalnum). Every step here uses Python's own Unicode tables (unicodedata, re), so they agree with each
# other; ``TOKEN_PATTERN`` is the same class for libraries with Unicode properties (the export's tokenizers).
TOKEN_PATTERN = r"[\p{L}\p{N}]+"
_TOKEN = re.compile(r"[^\W_]+")
# the same tokens, plus the line breaks that separate the texts of a chunk (tokenize_many)
_TOKEN_OR_BREAK = re.compile(r"[^\W_]+|\n")
# On ASCII the pattern is exactly these, and a pattern over an ASCII string runs faster (1 byte a character).
_ASCII_TOKEN = re.compile(r"[a-z0-9]+")
_ASCII_TOKEN_OR_BREAK = re.compile(r"[a-z0-9]+|\n")
# non-ASCII characters that are neither letters nor digits (’, “, –, °, …): they only separate tokens
_NON_ASCII_SEPARATORS = re.compile(r"[^\w\x00-\x7f]+")
@cache
def _marks(low: int = 0, high: int = 0x110000) -> str:
    """The combining marks (Unicode category M: accents, vowel signs...) from ``low`` up to ``high``, as a
    character class's ranges; built on first use, which only non-ASCII text needs. Marks lie in planes 0-1 and
    in the variation selectors of plane 14 (planes 2-3 are ideographs): scanning those takes 40 ms."""
    codes = [code for code in [*range(0x20000), *range(0xE0100, 0xE01F0)]
             if low <= code < high and unicodedata.category(chr(code)).startswith("M")]
    ranges, start = [], codes[0]
    for previous, code in zip(codes, [*codes[1:], None], strict=True):
        if code != previous + 1:
            ranges.append(f"{re.escape(chr(start))}-{re.escape(chr(previous))}")
            start = code
    return "".join(ranges)


@cache
def _mark_runs(astral: bool) -> re.Pattern[str]:
    # Two patterns: a class of the marks of the first 65,536 code points is a bitmap and strips MS MARCO's
    # non-ASCII passages in 38 ms; one with the marks beyond them too took 600 ms (str.translate: 200 ms).
    return re.compile(f"[{_marks(0x10000) if astral else _marks(0, 0x10000)}]+")


def _strip_marks(text: str) -> str:
    text = _mark_runs(False).sub("", text)
    return _mark_runs(True).sub("", text) if max(text, default="") > "\uffff" else text


@cache
def _word_as_written() -> re.Pattern[str]:
    """The runs a display marks: letters, digits and the combining marks inside words, in the text as written."""
    return re.compile(rf"(?:[^\W_]|[{_marks()}])+")


# What UTF-8 read as Latin-1 or Windows-1252 always shows: each multi-byte character leaves a continuation byte
# (0x80-0xBF), which those code pages read as U+0080-U+00BF or as one of these symbols. None of them is a letter
# or digit that survives ``normalize``, so no token holds one: text made of tokens is never handed to ftfy, which
# "repairs" some of them (``œø`` -> ``Ͽ``) and would make tokenising the tokens again change them.
_MOJIBAKE_SIGN = re.compile("[\x80-\xbf€‚„…†‡ˆ‰‹‘’“”•–—˜™›]")


def repair(text: str) -> str:
    """``text`` with mojibake undone; ASCII and correctly encoded text come back unchanged.

    MS MARCO v1's defect is one exact round trip (UTF-8 bytes read as Latin-1), so undoing it first is a
    2 µs C-level step. On the DL 2019 pool it repairs 6,525 of the 6,593 non-ASCII passages, agrees with
    ftfy on 6,522 and fully decodes the other 3 (Arabic, Cyrillic) where ftfy leaves half of them broken;
    ftfy's ``fix_encoding`` (about 230 µs a text) takes what the round trip cannot decode and that shows a sign
    of mojibake (``_MOJIBAKE_SIGN``), such as Windows-1252 mojibake (``donâ€™t``); text without one, such as
    correct Latin-1 (``café`` is not valid UTF-8 once encoded) or text in other scripts, comes back unchanged.
    """
    if text.isascii():
        return text
    try:
        return text.encode("latin-1").decode("utf-8")
    except UnicodeError:
        pass
    if not _MOJIBAKE_SIGN.search(text):
        return text
    import ftfy  # here: a few texts need it, and every command's --help imports this module

    return ftfy.fix_encoding(text)


def normalize(text: str) -> str:
    """``text`` repaired, NFKC-normalised, lower-cased and with its accents folded: what the tokens are cut from."""
    if text.isascii():
        return text.lower()
    text = unicodedata.normalize("NFKC", repair(text)).lower()
    return unicodedata.normalize("NFC", _strip_marks(unicodedata.normalize("NFD", text)))


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
    if not joined.isascii():
        # Most non-ASCII texts are ASCII once normalised and rid of their separators (MS MARCO's ’ “ – °), and
        # a pattern runs 1.5x faster over an ASCII string; the few with other letters are found one by one.
        texts = [text if text.isascii() else _NON_ASCII_SEPARATORS.sub(" ", normalize(text)) for text in texts]
        joined = TEXT_BREAK.join(texts)
        if not joined.isascii():
            return _tokenize_mixed(texts)
    if joined.count(TEXT_BREAK) != len(texts) - 1:  # a text holds line breaks: they only separate tokens
        joined = TEXT_BREAK.join(text.replace(TEXT_BREAK, " ") for text in texts)
    return _ASCII_TOKEN_OR_BREAK.findall(joined.lower() + TEXT_BREAK)


PIECE_CHARACTERS = 4_000_000  # text tokenised in one pass: its token list (~50 bytes a token) stays near 100 MB


def pieces(texts: list[str], characters: int = PIECE_CHARACTERS) -> Iterator[list[str]]:
    """``texts`` in consecutive runs of about ``characters`` characters (a longer text alone), for
    ``tokenize_many``: a chunk's token list holds a Python string per token, so memory follows the characters
    tokenised at once, not the number of texts."""
    start, size = 0, 0
    for end, text in enumerate(texts, 1):
        size += len(text)
        if size >= characters or end == len(texts):
            yield texts[start:end]
            start, size = end, 0


def _tokenize_mixed(texts: list[str]) -> list[str]:
    """``tokenize_many`` of texts that are ASCII or already normalised: runs of ASCII texts in one pass each."""
    tokens: list[str] = []
    run: list[str] = []
    for text in texts:
        if text.isascii():
            run.append(text.replace(TEXT_BREAK, " "))
            continue
        if run:
            tokens += _ASCII_TOKEN_OR_BREAK.findall(TEXT_BREAK.join(run).lower() + TEXT_BREAK)
            run = []
        tokens += _TOKEN.findall(text)  # normalised: its line breaks, if any, are not tokens either
        tokens.append(TEXT_BREAK)
    if run:
        tokens += _ASCII_TOKEN_OR_BREAK.findall(TEXT_BREAK.join(run).lower() + TEXT_BREAK)
    return tokens


def token_spans(text: str) -> list[tuple[int, int, list[str]]]:
    """``(start, end, tokens)`` of each word of ``text`` at its place in ``text``: what a display marks.

    A word is a run of letters, digits and combining marks as written; ``tokens`` are ``tokenize``'s tokens of
    it (usually one). Normalising first, as ``tokenize`` does, can change a text's length (``İ`` is two
    characters lower-cased, ``ﬁ`` two after NFKC), which would shift the positions, so the runs are found in
    the text as written and normalised one by one.
    """
    return [(m.start(), m.end(), tokenize(m.group())) for m in _word_as_written().finditer(text)]


class ThreadStemmer:
    """PyStemmer's Snowball stemmer of ``name``, one per thread that stems: PyStemmer's own keeps state between
    calls and must not be called from two threads at once (its documentation), and a search server stems each
    request's query on the thread that runs it."""

    def __init__(self, name: str):
        import Stemmer  # PyStemmer

        self.name, self._make, self._local = name, Stemmer.Stemmer, threading.local()
        self._local.stemmer = self._make(name)  # an unknown name fails here, in the caller

    def _own(self) -> Any:
        stemmer = getattr(self._local, "stemmer", None)
        if stemmer is None:
            stemmer = self._local.stemmer = self._make(self.name)
        return stemmer

    def stemWord(self, word: str) -> str:  # noqa: N802 - PyStemmer's names
        return self._own().stemWord(word)

    def stemWords(self, words: list[str]) -> list[str]:  # noqa: N802
        return self._own().stemWords(words)

    def __reduce__(self) -> tuple[type, tuple[str]]:  # a thread-local does not pickle; the name makes it again
        return ThreadStemmer, (self.name,)


def load_stemmer(name: str) -> ThreadStemmer | None:
    """The Snowball stemmer of ``name`` (``stemWord``, ``stemWords``; one PyStemmer stemmer per thread), or None
    for ``none``."""
    if name not in STEMMERS:
        raise ValueError(f"unknown stemmer {name!r} (use {', '.join(STEMMERS)})")
    if name == "none":
        return None
    return ThreadStemmer(name)
