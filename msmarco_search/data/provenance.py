"""What a model was trained on, recorded in the model file, so that evaluation can say when it is not fair.

Evaluating on queries the model was trained on reports a leaked score (the seed's main job trained on the DL 2021
judgments and then scored 0.587 on them, with no warning). So training records a fingerprint of every distinct
training query text (8 bytes each, sorted: 160K pseudo-queries cost 1.3 MB in the model file), and the CBOW
stage records the identity of its corpus; evaluation compares the fingerprints with its own queries.

A fingerprint is of the text's tokens (``msmarco_search.core.text.tokenize``), so case, punctuation and spacing do not
hide a copy of a query.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch

from msmarco_search.core.text import tokenize

PROVENANCE_VERSION = 1


def query_fingerprint(text: str) -> int:
    digest = hashlib.blake2b(" ".join(tokenize(text)).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def query_fingerprints(texts: Iterable[str]) -> torch.Tensor:
    """Sorted distinct fingerprints of ``texts``, as an int64 tensor (a model file holds tensors, not sets)."""
    values = np.fromiter((query_fingerprint(text) for text in dict.fromkeys(texts)), dtype=np.int64)
    return torch.from_numpy(np.unique(values))


def training_provenance(triplets_file: str, triplets_metadata: Mapping[str, Any] | None,
                        queries: Iterable[str] | None) -> dict[str, Any]:
    """The record a trained model keeps: the triplets file, its source, and its queries' fingerprints
    (``queries`` None: unknown, e.g. a triples TSV that is streamed and never read whole)."""
    metadata = triplets_metadata or {}
    return {"version": PROVENANCE_VERSION, "triplets_file": triplets_file,
            "triplets_source": metadata.get("source"), "triplets_source_identity": metadata.get("source_identity"),
            "triplets_mode": metadata.get("mode"),
            "query_fingerprints": None if queries is None else query_fingerprints(queries)}


def training_overlap(model_metadata: Mapping[str, Any], queries: Mapping[str, str]) -> list[str] | None:
    """Ids of the evaluation ``queries`` (``{qid: text}``) whose text the model was trained on; None when the
    model does not record its training queries (older files, streamed triples)."""
    fingerprints = (model_metadata.get("trained_on") or {}).get("query_fingerprints")
    if not isinstance(fingerprints, torch.Tensor) or fingerprints.dtype != torch.int64:
        return None
    known = fingerprints.numpy()
    ids = list(queries)
    if not ids:
        return []
    asked = np.array([query_fingerprint(queries[qid]) for qid in ids], dtype=np.int64)
    position = np.clip(np.searchsorted(known, asked), 0, max(len(known) - 1, 0))
    found = known[position] == asked if len(known) else np.zeros(len(ids), dtype=bool)
    return [qid for qid, hit in zip(ids, found, strict=True) if hit]


def merge_provenance(first: Mapping[str, Any] | None, other: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """What a model averaged from two others was trained on: both sets of queries (unknown if either is)."""
    if not first or not other:
        return None
    merged = dict(first)
    ours, theirs = first.get("query_fingerprints"), other.get("query_fingerprints")
    if isinstance(ours, torch.Tensor) and isinstance(theirs, torch.Tensor):
        merged["query_fingerprints"] = torch.unique(torch.cat([ours, theirs]))
    else:
        merged["query_fingerprints"] = None
    if other.get("triplets_file") != first.get("triplets_file"):
        merged["triplets_file"] = f"{first.get('triplets_file')} + {other.get('triplets_file')}"
    return merged
