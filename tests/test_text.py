"""The tokeniser (msmarco_search.core.text): no letter silently cut, mojibake repaired, ASCII exactly as before."""

from __future__ import annotations

import re

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from msmarco_search.core.text import normalize, repair, token_spans, tokenize, tokenize_many
from msmarco_search.data.vocab import Vocabulary

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)


def test_no_letter_is_cut():
    assert tokenize("Café au lait, CAFÉ, naïve résumé") == ["cafe", "au", "lait", "cafe", "naive", "resume"]
    assert tokenize("İstanbul Straße ﬁne ＡＢＣ x\u0301y") == ["istanbul", "straße", "fine", "abc", "xy"]
    assert tokenize("Привет мир, Ελλάδα, مرحبا") == ["привет", "мир", "ελλαδα", "مرحبا"]
    assert tokenize("日本語のテキスト 42²") == ["日本語のテキスト", "422"]
    assert tokenize("emoji 🙂 — ©") == ["emoji"]


def test_ascii_tokens_are_the_first_tokenisers():
    assert tokenize("What's the COVID-19 rate? 3.5%") == ["what", "s", "the", "covid", "19", "rate", "3", "5"]


@FAST
@given(st.text(alphabet=st.characters(max_codepoint=127), max_size=80))
def test_on_ascii_the_tokens_are_lower_alnum_runs(text):
    assert tokenize(text) == re.findall(r"[a-z0-9]+", text.lower())


def test_ms_marco_mojibake_is_repaired_before_tokenising():
    # UTF-8 read as Latin-1, as in MS MARCO v1's collection.tsv (DL 2019 pool passages quote these)
    assert repair("donâ\x80\x99t") == "don’t" and tokenize("donâ\x80\x99t") == ["don", "t"]
    assert tokenize("explains EncyclopÃ¦dia Britannica") == ["explains", "encyclopædia", "britannica"]
    assert tokenize("81 Â°F") == ["81", "f"] and tokenize("DÃ©jÃ  vu") == ["deja", "vu"]
    assert tokenize("(ë§\x89ê±¸ë¦¬)") == ["막걸리"]


def test_correct_text_is_not_repaired():
    for text in ["café", "naïve résumé", "Raynaud’s phenomenon", "日本語", "Ελλάδα", "plain ascii", "£5 — ½"]:
        assert repair(text) == text


_PIECES = ["hello", "World", "café", "CAFÉ", "42", "İ", "\u212a", " ", ",", "日本", "\n", "ß", "Ã©", "â\x80\x99", "ﬁ",
           "Â", "running", "Runs"]


@FAST
@given(st.lists(st.text(max_size=20) | st.lists(st.sampled_from(_PIECES), max_size=8).map("".join), max_size=8))
def test_tokenize_many_is_tokenize_of_each_text(texts):
    expected = [token for text in texts for token in [*tokenize(text), "\n"]]
    assert tokenize_many(texts) == expected


@FAST
@given(st.text(max_size=60))
@example("\x80\x9cØ")  # ftfy repairs it to '€œØ', whose token 'œø' ftfy would "repair" again, to 'Ͽ'
@example("Æœœ")  # not UTF-8 once encoded, though its token 'æœœ' is: Windows-1252 bytes of '朜'
def test_tokens_have_no_separator_and_normalising_twice_changes_nothing_more(text):
    tokens = tokenize(text)
    assert all(token and not re.search(r"\s", token) for token in tokens)
    assert tokenize(" ".join(tokens)) == tokens


_STEMMED = Vocabulary.from_words(["hello", "world", "cafe", "run", "runner", "日本", "42"], stemmer="english")


@FAST
@given(st.lists(st.lists(st.sampled_from(_PIECES), max_size=8).map("".join), max_size=8))
def test_a_stemmed_vocabulary_encodes_a_chunk_as_each_text(texts):
    arrays = _STEMMED.encode_chunk(texts)
    assert [arrays.ids[a:b].tolist() for a, b in zip(arrays.offsets[:-1], arrays.offsets[1:], strict=True)] == [
        _STEMMED.encode(text) for text in texts]
    assert _STEMMED.encode("Running runs") == [_STEMMED.word_to_index["run"]] * 2


def test_word_spans_are_the_texts_own_positions():
    text = "İstanbul's CAFÉ: ﬁne"
    spans = token_spans(text)
    assert [(text[start:end], tokens) for start, end, tokens in spans] == [
        ("İstanbul", ["istanbul"]), ("s", ["s"]), ("CAFÉ", ["cafe"]), ("ﬁne", ["fine"])]
    assert normalize("CAFÉ") == "cafe"


def test_every_combining_mark_is_stripped_and_nothing_else():
    import unicodedata

    from msmarco_search.core.text import _strip_marks

    every = "".join(chr(code) for code in range(0x110000) if unicodedata.category(chr(code)).startswith("M"))
    others = "".join(chr(code) for code in range(0x110000) if not unicodedata.category(chr(code)).startswith("M")
                     and not 0xD800 <= code < 0xE000)
    assert _strip_marks(every) == "" and _strip_marks(others) == others
