"""Teacher labels: a teacher's vectors of the texts of triplets (``TeacherLabels``), for distillation."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from msmarco_search.data.triplets import TeacherLabels, Triplets
from msmarco_search.teacher.cache import TeacherCache


def label_triplets(triplets: Triplets, passages: Mapping[str, str], cache: TeacherCache) -> TeacherLabels:
    """The teacher's vectors of every distinct query and passage of ``triplets`` (from ``cache``, encoding what
    it lacks). A passage is encoded whole, from ``passages`` (id -> text; an inverse-cloze positive is a cut of
    its passage), or as the triplet gives it when its id is not there (another file's passage)."""
    query_rows: dict[str, int] = {}
    passage_rows: dict[str, int] = {}
    passage_texts: list[str] = []

    def passage_row(pid: str, text: str) -> int:
        if pid not in passage_rows:
            passage_rows[pid] = len(passage_texts)
            passage_texts.append(passages.get(pid, text))
        return passage_rows[pid]

    rows = np.array([(query_rows.setdefault(query, len(query_rows)), passage_row(pid, positive),
                      passage_row(nid, negative))
                     for query, pid, positive, nid, negative in zip(triplets.queries, triplets.positive_ids,
                                                                    triplets.positives, triplets.negative_ids,
                                                                    triplets.negatives, strict=True)],
                    dtype=np.int32).reshape(-1, 3)
    query_vectors = cache.vectors(list(query_rows), desc="Teacher: queries").astype(np.float16)
    passage_vectors = cache.vectors(passage_texts, desc="Teacher: passages").astype(np.float16)
    return TeacherLabels(cache.teacher.name, cache.teacher.identity, query_vectors, passage_vectors,
                         rows[:, 0].copy(), rows[:, 1].copy(), rows[:, 2].copy())
