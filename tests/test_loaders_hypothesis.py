"""Property-based tests: every loader either loads a file or raises PipelineError, whatever the bytes or rows.

Anything else escaping a loader (an IndexError from a damaged pickle, a UnicodeDecodeError from a TSV)
would reach the user as a traceback; these tests feed the loaders random and mutated input to prove it
does not. Example counts stay small so the whole module runs in a few seconds.
"""

from __future__ import annotations

import json
import pickle
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from msmarco_search.arrays import TokenArrays
from msmarco_search.cbow import load_embeddings, load_gensim_model
from msmarco_search.errors import PipelineError
from msmarco_search.fileio import (
    KIND_EMBEDDINGS,
    KIND_TRIPLETS,
    load_json,
    load_pickle,
    load_torch,
    save_pickle,
    save_torch,
)
from msmarco_search.sources import RowFileSource, TsvFiles, TsvSource, iter_tsv_lines, read_candidates, read_qrels
from msmarco_search.textfiles import decode_text
from msmarco_search.triplets import load_triplets

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)

_WORK = Path(tempfile.mkdtemp(prefix="msmarco-hypothesis-"))


def _file(name: str, content: bytes) -> Path:
    path = _WORK / name
    path.write_bytes(content)
    return path


def _loads_or_pipeline_error(load, *args) -> None:
    """The property: ``load(*args)`` returns, or raises PipelineError; nothing else gets out."""
    try:
        result = load(*args)
        if hasattr(result, "__iter__") and not isinstance(result, (dict, str, bytes)):
            list(result)  # generators fail lazily: drain them
    except PipelineError:
        pass


def _mutations(seed_bytes: bytes):
    """Strategies for a valid file's bytes with a few bytes flipped, cut short, or both."""
    size = len(seed_bytes)
    flips = st.lists(st.tuples(st.integers(0, size - 1), st.integers(0, 255)), min_size=1, max_size=6)

    def apply(changes, cut):
        data = bytearray(seed_bytes)
        for position, value in changes:
            data[position] = value
        return bytes(data[:cut])

    return st.builds(apply, flips, st.integers(0, size))


_GOOD_PICKLE = save_pickle({"queries": ["q one", "q two"], "positives": ["p", "p2"], "negatives": ["n", "n2"],
                            "query_ids": ["1", "2"], "positive_ids": ["a", "b"], "negative_ids": ["c", "d"]},
                           _WORK / "good.pkl", KIND_TRIPLETS).read_bytes()
_GOOD_TORCH = save_torch({"embeddings": torch.zeros(3, 2), "index_to_word": ["<pad>", "<unk>", "x"],
                          "word_to_index": {"<pad>": 0, "<unk>": 1, "x": 2}},
                         _WORK / "good.pt", KIND_EMBEDDINGS).read_bytes()

plain = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20) | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    | st.tuples(children, children),
    max_leaves=12,
)


@FAST
@given(st.binary(max_size=300))
def test_pickle_loader_on_random_bytes(data):
    path = _file("random.pkl", data)
    _loads_or_pipeline_error(load_pickle, path, KIND_TRIPLETS)
    _loads_or_pipeline_error(load_triplets, path)


@FAST
@given(_mutations(_GOOD_PICKLE))
def test_pickle_loader_on_damaged_triplets(data):
    _loads_or_pipeline_error(load_triplets, _file("damaged.pkl", data))


@FAST
@given(st.dictionaries(st.sampled_from(["kind", "format_version", "queries", "positives", "negatives",
                                        "query_ids", "positive_ids", "negative_ids"]), plain))
def test_pickle_loader_on_random_plain_structures(data):
    _loads_or_pipeline_error(load_triplets, _file("plain.pkl", pickle.dumps(data)))


@FAST
@given(st.binary(max_size=300))
def test_torch_loader_on_random_bytes(data):
    _loads_or_pipeline_error(load_torch, _file("random.pt", b"PK\x03\x04" + data), KIND_EMBEDDINGS)
    _loads_or_pipeline_error(load_torch, _file("random2.pt", data), KIND_EMBEDDINGS)


@settings(FAST, max_examples=40)
@given(_mutations(_GOOD_TORCH))
def test_embeddings_loader_on_damaged_files(data):
    _loads_or_pipeline_error(load_embeddings, _file("damaged.pt", data))


@FAST
@given(st.dictionaries(st.sampled_from(["kind", "format_version", "embeddings", "index_to_word",
                                        "vocabulary_fingerprint"]),
                       plain | st.builds(torch.zeros, st.integers(0, 3), st.integers(0, 3))))
def test_embeddings_loader_on_random_contents(data):
    path = _WORK / "contents.pt"
    torch.save(data, path)
    _loads_or_pipeline_error(load_embeddings, path)


@FAST
@given(st.binary(max_size=200))
def test_gensim_loader_on_random_bytes(data):
    _loads_or_pipeline_error(load_gensim_model, _file("random.gensim", data))


_NPY_DTYPES = st.sampled_from([np.int32, np.int64, np.float32, np.int16])


@FAST
@given(st.one_of(st.binary(max_size=200).map(lambda b: ("raw", b)),
                 st.tuples(st.just("npy"), st.lists(st.integers(-5, 50), max_size=12), _NPY_DTYPES)),
       st.one_of(st.binary(max_size=200).map(lambda b: ("raw", b)),
                 st.tuples(st.just("npy"), st.lists(st.integers(-5, 20), max_size=6), _NPY_DTYPES)))
def test_token_arrays_loader_on_random_files(ids, offsets):
    for name, spec in (("t.ids.npy", ids), ("t.offsets.npy", offsets)):
        if spec[0] == "raw":
            _file(name, spec[1])
        else:
            np.save(_WORK / name, np.asarray(spec[1], dtype=spec[2]), allow_pickle=False)
    for mmap in (True, False):
        try:
            arrays = TokenArrays.load(_WORK, "t", mmap=mmap, vocab_size=40)
        except PipelineError:
            continue
        # what loads is safe to index: every sequence gathers without an error
        arrays.gather(np.arange(len(arrays)))


json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=10,
)
row = st.fixed_dictionaries(
    {}, optional={"query": json_value, "query_id": json_value, "passage_ids": json_value,
                  "passages": st.fixed_dictionaries({}, optional={"is_selected": json_value,
                                                                  "passage_text": json_value,
                                                                  "passage_id": json_value}) | json_value})


@FAST
@given(st.lists(row | json_value, min_size=1, max_size=4), st.booleans())
def test_row_reader_on_random_rows(rows, as_json_list):
    text = json.dumps(rows) if as_json_list else "\n".join(json.dumps(r) for r in rows)
    path = _file("rows.json" if as_json_list else "rows.jsonl", text.encode())
    _loads_or_pipeline_error(RowFileSource([path]).records)
    _loads_or_pipeline_error(RowFileSource([path]).corpus_texts)


@FAST
@given(st.binary(max_size=200), st.sampled_from(["rows.jsonl", "rows.json", "rows.parquet"]))
def test_row_reader_on_random_bytes(data, name):
    _loads_or_pipeline_error(RowFileSource([_file(name, data)]).records)


tsv_text = st.text(alphabet=st.sampled_from("0123 \t\nab\r\x00é"), max_size=80)


@FAST
@given(tsv_text, tsv_text, tsv_text, tsv_text, st.integers(-1, 3))
def test_tsv_and_qrels_readers_on_random_text(collection, queries, qrels, candidates, min_relevance):
    files = TsvFiles(collection=_file("collection.tsv", collection.encode()),
                     queries=_file("queries.train.tsv", queries.encode()),
                     qrels=_file("qrels.train.tsv", qrels.encode()),
                     candidates=_file("top1000.train.tsv", candidates.encode()))
    _loads_or_pipeline_error(read_qrels, files.qrels)
    _loads_or_pipeline_error(read_candidates, files.candidates)
    _loads_or_pipeline_error(TsvSource(files, min_relevance).records)
    _loads_or_pipeline_error(TsvSource(files, min_relevance).corpus_texts)


@FAST
@given(st.binary(max_size=100))
def test_json_loader_on_random_bytes(data):
    _loads_or_pipeline_error(load_json, _file("random.json", data))


@pytest.mark.parametrize("loader", [load_triplets, load_embeddings, load_gensim_model, load_json])
def test_loaders_refuse_missing_empty_and_folders(loader, tmp_path):
    for path, words in [(tmp_path / "missing", "not found"), (_file("empty", b""), "empty"), (tmp_path, "not a file")]:
        with pytest.raises(PipelineError, match=words):
            loader(path)


@FAST
@given(st.binary(max_size=160), st.integers(1, 4))
def test_the_tsv_reader_with_offsets_reads_what_it_reads_without(data, columns):
    """The byte-offset mode (search's index) and the text mode give the same rows or the same error, and each
    offset seeks back to its row's line."""
    path = _file("any.tsv", data)

    def rows(with_offsets: bool):
        try:
            return list(iter_tsv_lines(path, columns, with_offsets=with_offsets))
        except PipelineError as error:
            return str(error)

    text, offsets = rows(False), rows(True)
    if isinstance(text, str):
        assert offsets == text
        return
    assert [fields for _, fields in offsets] == text
    for offset, fields in offsets:
        line = decode_text(data[offset:].split(b"\n", 1)[0].rstrip(b"\r"))
        assert line.lstrip("\ufeff").split("\t", columns - 1) == fields
