"""Stage 2: making (query, relevant passage, non-relevant passage) triplets.

For each query with a selected passage, every selected passage is a positive, paired with one negative:
``hard`` takes an unselected passage of the same query, ``random`` a passage of another query, ``mixed``
either with equal odds. A negative is never a passage whose text equals one of the query's positives.

Without queries, ``inverse_cloze_triplets`` makes triplets from bare passages (the inverse cloze task of
Lee et al. 2019, "Latent Retrieval for Weakly Supervised Open Domain QA"): a sentence of a passage (or a
span, when the passage is one sentence) becomes the query, the rest of the passage its positive, and
another passage the negative.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from msmarco_search.core.errors import PipelineError
from msmarco_search.core.report import progress
from msmarco_search.core.resources import check_memory
from msmarco_search.core.text import tokenize
from msmarco_search.data.records import Passage, QueryRecord
from msmarco_search.data.triplets import Triplets

NEGATIVE_STRATEGIES = ("hard", "random", "mixed")


@dataclass
class TripletStats:
    queries_read: int = 0
    queries_without_selected: int = 0
    queries_without_negative: int = 0
    hard_negatives: int = 0
    random_negatives: int = 0
    hard_fallbacks_to_random: int = 0


def _normalised(text: str) -> str:
    return " ".join(text.lower().split())


def generate_triplets(records: Iterable[QueryRecord], negatives: str = "hard", seed: int = 42,
                      has_candidates: bool = True, total: int | None = None) -> tuple[Triplets, TripletStats]:
    """Build triplets from query records; see the module docstring for the strategies."""
    if negatives not in NEGATIVE_STRATEGIES:
        raise PipelineError(f"unknown negative strategy {negatives!r} (use {', '.join(NEGATIVE_STRATEGIES)})")
    if negatives in ("hard", "mixed") and not has_candidates:
        raise PipelineError(f"--negatives {negatives} needs candidate passages per query, and this source has "
                            "none (TSVs without a top1000 candidates file); use --negatives random, or add "
                            "a candidates file")
    stats = TripletStats()
    kept: list[QueryRecord] = []
    for record in progress(records, desc="Reading queries", total=total, unit="query"):
        stats.queries_read += 1
        if record.positives:
            kept.append(record)
        else:
            stats.queries_without_selected += 1
    rng = random.Random(seed)
    triplets = Triplets()
    for index, record in enumerate(progress(kept, desc="Building triplets", unit="query")):
        positives = record.positives
        positive_texts = {_normalised(p.text) for p in positives}
        hard_pool = [p for p in record.non_selected if _normalised(p.text) not in positive_texts]
        made = 0
        for positive in positives:
            want_hard = negatives == "hard" or (negatives == "mixed" and rng.random() < 0.5)
            negative = rng.choice(hard_pool) if want_hard and hard_pool else None
            if negative is not None:
                stats.hard_negatives += 1
            else:
                negative = _random_negative(kept, index, positive_texts, rng)
                if negative is None:
                    continue
                stats.random_negatives += 1
                stats.hard_fallbacks_to_random += int(want_hard)
            triplets.append(record, positive, negative)
            made += 1
        stats.queries_without_negative += int(made == 0)
    return triplets, stats


def _random_negative(records: list[QueryRecord], own: int, positive_texts: set[str],
                     rng: random.Random, tries: int = 20) -> Passage | None:
    if len(records) < 2:
        return None
    for _ in range(tries):
        other = rng.randrange(len(records) - 1)
        other += int(other >= own)  # any record but this query's own
        passage = rng.choice(records[other].passages)
        if _normalised(passage.text) not in positive_texts:
            return passage
    return None


# ------------------------------------------------------------------------------------------ inverse cloze

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=\S)")


@dataclass
class ClozeStats:
    passages_read: int = 0
    passages_too_short: int = 0
    sentence_queries: int = 0
    span_queries: int = 0
    keyword_queries: int = 0
    queries_kept_in_positive: int = 0


CLOZE_TRIPLET_BYTES = 400  # a pseudo-query triplet beside its positive's text: the query, its id, six list slots


def inverse_cloze_triplets(passages: Iterable[tuple[str, str]], seed: int = 42, per_passage: int = 1,
                           max_query_words: int = 16, min_words: int = 8, keep_query_probability: float = 0.1,
                           total: int | None = None, keyword_share: float = 0.0) -> tuple[Triplets, ClozeStats]:
    """Triplets from bare passages by the inverse cloze task (see the module docstring).

    The pseudo-query is a random sentence of the passage (a window of at most ``max_query_words`` words of
    it), or, in a one-sentence passage, a span of a quarter of its words (3 to ``max_query_words``). The
    positive is the passage without that sentence or span, except with probability
    ``keep_query_probability``, where it stays in (Lee et al. keep 10 %, so the model still learns that
    shared words matter). The negative is another passage, never one with the same text.

    With probability ``keyword_share`` a pseudo-query is instead keyword-style, as real search queries are:
    3 to 6 distinct words of the passage drawn with weights ``log(N / df)`` over the passages read (rare,
    telling words first), in the passage's order, and the positive is the whole passage.
    """
    if not 0.0 <= keep_query_probability <= 1.0:
        raise PipelineError(f"the probability of keeping the query in its passage must lie in [0, 1], got "
                            f"{keep_query_probability}")
    if not 0.0 <= keyword_share <= 1.0:
        raise PipelineError(f"the share of keyword pseudo-queries must lie in [0, 1], got {keyword_share}")
    if max_query_words < 3:
        raise PipelineError(f"pseudo-queries need room for at least 3 words, got {max_query_words}")
    stats = ClozeStats()
    kept: list[tuple[str, str]] = []
    for pid, text in progress(passages, desc="Reading passages", total=total, unit="passage"):
        stats.passages_read += 1
        if len(text.split()) >= min_words:
            kept.append((pid, text))
        else:
            stats.passages_too_short += 1
    triplets = Triplets()
    if len(kept) < 2:
        return triplets, stats
    # each pseudo-query's positive is its own copy of the rest of its passage
    check_memory(per_passage * (sum(len(text) for _, text in kept) + len(kept) * CLOZE_TRIPLET_BYTES),
                 f"{per_passage:,} pseudo-queries from each of {len(kept):,} passages",
                 "lower --ict-per-passage or --max-samples")
    rng = random.Random(seed)
    idf = word_idf([text for _, text in kept]) if keyword_share > 0 else {}
    for index, (pid, text) in enumerate(progress(kept, desc="Cutting pseudo-queries", unit="passage")):
        for copy in range(per_passage):
            keywords = keyword_query(text, idf, rng) if keyword_share and rng.random() < keyword_share else None
            if keywords is not None:
                query, rest = keywords, text
                stats.keyword_queries += 1
            else:
                query, rest, from_sentence = _cloze_split(text, rng, max_query_words)
                if rng.random() < keep_query_probability:
                    rest = text
                    stats.queries_kept_in_positive += 1
                stats.sentence_queries += int(from_sentence)
                stats.span_queries += int(not from_sentence)
            own = _normalised(text)
            for _ in range(20):
                other = rng.randrange(len(kept) - 1)
                other += int(other >= index)
                if _normalised(kept[other][1]) != own:
                    break
            triplets.add(f"ict:{pid}:{copy}", query, pid, rest, kept[other][0], kept[other][1])
    return triplets, stats


def word_idf(texts: list[str]) -> dict[str, float]:
    """``log(N / df)`` of every token over ``texts`` (the project's tokens, each counted once a text)."""
    frequency = Counter(token for text in texts for token in set(tokenize(text)))
    return {token: math.log(len(texts) / count) for token, count in frequency.items()}


def keyword_query(text: str, idf: dict[str, float], rng: random.Random) -> str | None:
    """3 to 6 distinct words of ``text`` drawn by IDF weight, in the text's order; None if it has too few."""
    words = list(dict.fromkeys(tokenize(text)))
    weights = [idf.get(word, 0.0) for word in words]
    usable = sum(weight > 0 for weight in weights)
    if usable < 3:
        return None
    count = rng.randint(3, min(6, usable))
    chosen: set[str] = set()
    while len(chosen) < count:  # weighted draws without replacement (a passage has tens of words)
        chosen.add(rng.choices(words, weights)[0])
    return " ".join(word for word in words if word in chosen)


def _cloze_split(text: str, rng: random.Random, max_query_words: int) -> tuple[str, str, bool]:
    """(pseudo-query, the rest of the passage, whether the query is a sentence)."""
    sentences = [s for s in _SENTENCE_END.split(text.strip()) if s]
    if len(sentences) >= 2:
        chosen = rng.randrange(len(sentences))
        words = sentences[chosen].split()
        if len(words) > max_query_words:
            start = rng.randrange(len(words) - max_query_words + 1)
            words = words[start:start + max_query_words]
        rest = " ".join(s for i, s in enumerate(sentences) if i != chosen)
        return " ".join(words), rest, True
    words = text.split()
    length = min(max(3, len(words) // 4), max_query_words)
    start = rng.randrange(len(words) - length + 1)
    return " ".join(words[start:start + length]), " ".join(words[:start] + words[start + length:]), False
