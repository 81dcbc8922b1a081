"""Mined training data: hard negatives found with a trained model, and self-training pairs.

``mine_negatives`` gives existing triplets (e.g. inverse-cloze ones, whose negatives are random passages)
negatives that a trained model ranks high for their query but that are not their positive's passage: one round
of ANCE (Xiong et al. 2021, "Approximate Nearest Neighbor Negative Contrastive Learning"), where the model's own
near misses are the negatives the next model learns from. Random negatives are mostly easy after the first
epoch; these are the passages the model still confuses.

Self-training data: real queries without judgments, labelled by a trained model and BM25 over a pool.

Inverse cloze teaches the towers passage-to-passage matching, never the style of real queries (short,
keyword-like questions). MS MARCO's train queries are real but come without passages here. Labelling them
over a passage pool with the hybrid (the model's ranking fused with BM25's, ``runs.fuse``) gives pairs in
real query style (self-training, as in e.g. Xie et al. 2020, "Self-training with Noisy Student"):

- the positive is the hybrid's first passage, kept only when the dense and the lexical ranking *agree*: it is
  in the top ``agree_depth`` of both. Most train queries have no answer in a pool made for other queries, and
  agreement of two very different rankers is what separates the few that have one from the rest;
- the negative is a passage the hybrid ranks lower (ranks ``negative_ranks``), so it is topically close (a
  hard negative mined with the model, as ANCE does), never a near-duplicate of the positive (token-set
  Jaccard at least ``duplicate_jaccard``), which would be a false negative.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from .resources import HIT_BYTES, check_memory
from .retrieval import PassagePool, Retriever
from .runs import DEFAULT_FUSION_WEIGHT, fuse
from .text import tokenize
from .triplets import Triplets

QUERY_BATCH = 2048  # queries ranked at once: bounds the memory of the hit lists


def _check_hit_memory(queries: int, depth: int, pool: PassagePool, systems: int) -> None:
    """The hit lists of one batch of queries, each ``depth`` deep (capped by the pool, but not their product with
    the batch), checked against the memory available before the pool is encoded."""
    check_memory(min(queries, QUERY_BATCH) * min(depth, len(pool)) * HIT_BYTES * systems,
                 f"ranking {min(queries, QUERY_BATCH):,} queries at a time {min(depth, len(pool)):,} deep",
                 "lower the last of --pseudo-negative-ranks")


@dataclass
class PseudoLabelStats:
    queries_read: int = 0
    queries_without_agreement: int = 0
    queries_without_negative: int = 0
    pseudo_labelled: int = 0


@dataclass
class MinedNegativeStats:
    triplets_mined: int = 0
    triplets_kept_as_they_were: int = 0


def mine_negatives(triplets: Triplets, pool: PassagePool, dense: Retriever, negative_ranks: tuple[int, int] = (10, 50),
                   duplicate_jaccard: float = 0.6, seed: int = 42,
                   margin: float | None = None) -> tuple[Triplets, MinedNegativeStats]:
    """``triplets`` with each negative replaced by a passage of ``pool`` that ``dense`` ranks ``negative_ranks``
    (1-based, ``[first, last]``) for the triplet's query (see the module docstring).

    A candidate is never the positive's own passage (its id in ``pool``) nor a near-duplicate of it (token-set
    Jaccard at least ``duplicate_jaccard`` with the positive's passage, or with the positive itself when its
    id is not in ``pool``): those are false negatives. With ``margin``, neither is a candidate that ``dense``
    scores within ``margin`` of its first hit (a strong ranker's near-top passages are often relevant too). A
    triplet without such a candidate keeps its negative.
    """
    first, last = negative_ranks
    if not 1 <= first <= last:
        raise ValueError(f"need 1 <= first negative rank ({first}) <= last ({last})")
    _check_hit_memory(len(triplets), last, pool, 1)
    dense.prepare(pool)
    rng = random.Random(seed)
    stats, mined = MinedNegativeStats(), Triplets()
    token_sets: dict[int, set[str]] = {}

    def tokens_at(position: int) -> set[str]:
        if position not in token_sets:
            token_sets[position] = set(tokenize(pool.texts_[position]))
        return token_sets[position]

    for start in range(0, len(triplets), QUERY_BATCH):
        batch = range(start, min(start + QUERY_BATCH, len(triplets)))
        for i, hits in zip(batch, dense.search([triplets.queries[i] for i in batch], last), strict=True):
            own = pool.position.get(triplets.positive_ids[i])
            positive = tokens_at(own) if own is not None else set(tokenize(triplets.positives[i]))
            ceiling = hits[0][1] - margin if margin is not None and hits else float("inf")
            candidates = [position for position, score in hits[first - 1:last] if position != own and score <= ceiling]
            rng.shuffle(candidates)
            negative = next((position for position in candidates
                             if _overlap(tokens_at(position), positive) < duplicate_jaccard), None)
            if negative is None:
                stats.triplets_kept_as_they_were += 1
                negative_id, negative_text = triplets.negative_ids[i], triplets.negatives[i]
            else:
                stats.triplets_mined += 1
                negative_id, negative_text = pool.pid(negative), pool.texts_[negative]
            mined.add(triplets.query_ids[i], triplets.queries[i], triplets.positive_ids[i], triplets.positives[i],
                      negative_id, negative_text)
    return mined, stats


def _overlap(left: set[str], right: set[str]) -> float:
    union = left | right
    return len(left & right) / len(union) if union else 1.0


def jaccard(a: str, b: str) -> float:
    """Token-set Jaccard similarity of two texts (1.0 for two texts without tokens)."""
    return _overlap(set(tokenize(a)), set(tokenize(b)))


def pseudo_label_triplets(queries: Sequence[tuple[str, str]], pool: PassagePool, dense: Retriever,
                          lexical: Retriever, agree_depth: int = 3, negative_ranks: tuple[int, int] = (10, 50),
                          duplicate_jaccard: float = 0.6, weight: float = DEFAULT_FUSION_WEIGHT,
                          seed: int = 42) -> tuple[Triplets, PseudoLabelStats]:
    """Triplets of ``queries`` (``(qid, text)``) labelled over ``pool`` (see the module docstring).

    ``negative_ranks``: the 1-based hybrid ranks ``[first, last]`` a negative is drawn from.
    """
    first, last = negative_ranks
    if not 1 <= agree_depth < first <= last:
        raise ValueError(f"need 1 <= agree_depth ({agree_depth}) < first negative rank ({first}) <= last ({last})")
    depth = max(last, 100)
    _check_hit_memory(len(queries), depth, pool, 2)
    dense.prepare(pool)
    lexical.prepare(pool)
    rng = random.Random(seed)
    stats, triplets = PseudoLabelStats(), Triplets()
    for start in range(0, len(queries), QUERY_BATCH):
        batch = queries[start:start + QUERY_BATCH]
        texts = [text for _, text in batch]
        for (qid, query), dense_hits, lexical_hits in zip(batch, dense.search(texts, depth),
                                                          lexical.search(texts, depth), strict=True):
            stats.queries_read += 1
            dense_run = {pool.pid(p): s for p, s in dense_hits}
            lexical_run = {pool.pid(p): s for p, s in lexical_hits}
            fused = [pid for pid, _ in fuse(dense_run, lexical_run, "linear", weight, limit=last)]
            agreed = {pool.pid(p) for p, _ in dense_hits[:agree_depth]} & {
                pool.pid(p) for p, _ in lexical_hits[:agree_depth]}
            if not fused or fused[0] not in agreed:
                stats.queries_without_agreement += 1
                continue
            positive = pool.texts_[pool.position[fused[0]]]
            candidates = fused[first - 1:last]
            rng.shuffle(candidates)
            negative = next((pid for pid in candidates
                             if jaccard(pool.texts_[pool.position[pid]], positive) < duplicate_jaccard), None)
            if negative is None:
                stats.queries_without_negative += 1
                continue
            triplets.add(f"pl:{qid}", query, fused[0], positive, negative, pool.texts_[pool.position[negative]])
            stats.pseudo_labelled += 1
    return triplets, stats


@dataclass
class TeacherLabelStats:
    queries_read: int = 0
    queries_below_min_score: int = 0
    queries_without_negative: int = 0
    labelled: int = 0


def teacher_label_triplets(queries: Sequence[tuple[str, str]], pool: PassagePool, teacher: Retriever,
                           min_score: float = 0.5, negative_ranks: tuple[int, int] = (10, 50), margin: float = 0.1,
                           seed: int = 42) -> tuple[Triplets, TeacherLabelStats]:
    """Triplets of unjudged ``queries`` (``(qid, text)``) labelled over ``pool`` by a teacher's ranking: the positive
    is its first passage when it scores at least ``min_score`` (most real queries have no answer in a pool made
    for others, and a low best score says so), the negative a passage of its ranks ``negative_ranks`` (1-based)
    scoring at most the first's score minus ``margin``, never near-duplicates of the positive (a strong teacher's
    near-top passages are often relevant too: false negatives)."""
    first, last = negative_ranks
    if not 2 <= first <= last:
        raise ValueError(f"need 2 <= first negative rank ({first}) <= last ({last})")
    teacher.prepare(pool)
    rng = random.Random(seed)
    stats, triplets = TeacherLabelStats(), Triplets()
    for start in range(0, len(queries), QUERY_BATCH):
        batch = queries[start:start + QUERY_BATCH]
        for (qid, query), hits in zip(batch, teacher.search([text for _, text in batch], last), strict=True):
            stats.queries_read += 1
            if not hits or hits[0][1] < min_score:
                stats.queries_below_min_score += 1
                continue
            top, top_score = hits[0]
            positive = set(tokenize(pool.texts_[top]))
            candidates = [position for position, score in hits[first - 1:last] if score <= top_score - margin]
            rng.shuffle(candidates)
            negative = next((position for position in candidates
                             if _overlap(set(tokenize(pool.texts_[position])), positive) < 0.6), None)
            if negative is None:
                stats.queries_without_negative += 1
                continue
            triplets.add(f"tl:{qid}", query, pool.pid(top), pool.texts_[top], pool.pid(negative),
                         pool.texts_[negative])
            stats.labelled += 1
    return triplets, stats
