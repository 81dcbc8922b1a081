"""The fast data path, streaming inputs, resumable training (signals, NaN), CBOW resume and DDP (gloo)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CBOW_SCRIPT, ROOT, TRAIN_SCRIPT, cli

from msmarco_search.core.errors import PipelineError
from msmarco_search.data.tokens import TripletArrays, read_tsv_chunks, tokenise_triplets, triples_tsv_arrays
from msmarco_search.data.triplets import load_triplets
from msmarco_search.data.vocab import Vocabulary
from msmarco_search.embeddings.cbow import load_embeddings
from msmarco_search.io.arrays import TokenArrays, TokenArrayWriter
from msmarco_search.io.safe_load import KIND_TRAINING_STATE, load_torch
from msmarco_search.training import optim
from msmarco_search.training.config import TwoTowerConfig
from msmarco_search.training.losses import InBatchSoftmaxLoss
from msmarco_search.training.model import TwoTowerModel, distinct_ids
from msmarco_search.training.optim import RowAdam
from msmarco_search.training.state import TrainingDiverged, TrainingInterrupted, TrainSettings, load_training_state
from msmarco_search.training.trainer import train_two_tower


def test_encode_chunk_is_encode_per_text():
    vocab = Vocabulary.from_words(["the", "cat", "sat", "x1", "mat"])
    texts = ["The cat SAT on\nthe mat", "", "x1 x1 x1 the the cat cat", "ÀB, cat; ﬁsh İstanbul 3.5 K", "\n\n",
             "mat", "  ", "the\r\ncat"]
    for limit in (None, 1, 2, 50):
        arrays = vocab.encode_chunk(texts, limit)
        assert arrays.ids.dtype == np.int32 and len(arrays) == len(texts)
        assert [arrays.ids[arrays.offsets[i]:arrays.offsets[i + 1]].tolist() for i in range(len(texts))] == [
            vocab.encode(text, limit) for text in texts]
    many = vocab.encode_many(iter(texts * 3), 2)
    assert many.ids.tolist() == [t for text in texts * 3 for t in vocab.encode(text, 2)]


@pytest.mark.parametrize("fused", [True, False], ids=["fused-kernel", "plain-ops"])
def test_row_adam_is_sparse_adam(monkeypatch, fused):
    """Both ways into RowAdam (a sparse gradient through step(), gathered rows through update_rows), with
    torch's fused kernel (CPU, CUDA) and with the plain ops (MPS), give SparseAdam's weights."""
    if not fused:
        monkeypatch.setattr(optim, "FUSED_DEVICES", ())
    torch.manual_seed(0)
    ours = torch.nn.Parameter(torch.randn(50, 6))
    by_rows = torch.nn.Parameter(ours.detach().clone())
    reference = torch.nn.Parameter(ours.detach().clone())
    row_adam, rows_adam = RowAdam([ours], lr=0.05), RowAdam([by_rows], lr=0.05)
    sparse_adam = torch.optim.SparseAdam([reference], lr=0.05)
    start, touched = ours.detach().clone(), []
    for step in range(6):
        rows = torch.randint(0, 50, (20,))  # repeated rows: the gradient is uncoalesced, as from an embedding
        scale = 10.0 ** -(step % 4)  # gradients as small as eps matters at, and as large as 1
        grad = torch.sparse_coo_tensor(rows[None], scale * torch.randn(20, 6), (50, 6), check_invariants=True)
        ours.grad, reference.grad = grad.clone(), grad.clone()
        row_adam.step()
        sparse_adam.step()
        coalesced = grad.coalesce()
        distinct = coalesced.indices()[0]
        touched.append(distinct)
        rows_adam.update_rows(by_rows, distinct, by_rows.detach()[distinct].clone(), coalesced.values())
    torch.testing.assert_close(ours.detach(), reference.detach(), rtol=0, atol=1e-6)
    torch.testing.assert_close(by_rows.detach(), reference.detach(), rtol=0, atol=1e-6)
    untouched = torch.ones(50, dtype=torch.bool)
    untouched[torch.cat(touched)] = False
    assert untouched.any() and torch.equal(by_rows.detach()[untouched], start[untouched])  # lazy: not moved
    assert row_adam.state[ours]["moments"].shape == (2, 50, 6)  # exp_avg and exp_avg_sq in one buffer


def test_distinct_ids_is_torch_unique():
    generator = torch.Generator().manual_seed(0)
    for vocab_size, tokens in ((100, 1000), (31, 31), (1000, 10), (50, 0), (7, 3)):  # marking, and the sort
        ids = torch.randint(0, vocab_size, (tokens,), generator=generator)
        for mine, reference in zip(distinct_ids(ids, vocab_size), torch.unique(ids, return_inverse=True),
                                   strict=True):
            assert torch.equal(mine, reference)


def test_row_adam_resumes_a_state_saved_with_two_moment_tensors():
    """Training states written before the [2, rows, dim] buffer hold exp_avg and exp_avg_sq apart."""
    torch.manual_seed(0)
    param = torch.nn.Parameter(torch.randn(8, 3))
    reference = torch.nn.Parameter(param.detach().clone())
    sparse_adam = torch.optim.SparseAdam([reference], lr=0.1)
    grad = torch.sparse_coo_tensor(torch.tensor([[1, 4]]), torch.randn(2, 3), (8, 3), check_invariants=True)
    reference.grad = grad.clone()
    sparse_adam.step()
    param.data.copy_(reference.detach())
    old = sparse_adam.state_dict()  # the old layout: step, exp_avg, exp_avg_sq
    assert set(old["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}
    row_adam = RowAdam([param], lr=0.1)
    row_adam.load_state_dict(old)
    grad = torch.sparse_coo_tensor(torch.tensor([[4, 6]]), torch.randn(2, 3), (8, 3), check_invariants=True)
    param.grad, reference.grad = grad.clone(), grad.clone()
    row_adam.step()
    sparse_adam.step()
    torch.testing.assert_close(param.detach(), reference.detach(), rtol=0, atol=1e-6)


def test_token_arrays_concatenate_keeps_sequences():
    parts = [TokenArrays(np.array([1, 2, 3], np.int32), np.array([0, 1, 3])),
             TokenArrays(np.array([], np.int32), np.array([0, 0])),
             TokenArrays(np.array([4], np.int32), np.array([0, 1]))]
    joined = TokenArrays.concatenate(parts)
    assert joined.ids.tolist() == [1, 2, 3, 4] and joined.offsets.tolist() == [0, 1, 3, 3, 4]


@pytest.mark.parametrize("mmap", [True, False])
def test_token_arrays_are_checked_chunk_by_chunk(tmp_path, monkeypatch, mmap):
    """The load's checks read the arrays a chunk at a time (flat memory at any size): a fault in a later chunk,
    or an offset that decreases across a chunk boundary, is still found."""
    from msmarco_search.io import arrays as arrays_module

    monkeypatch.setattr(arrays_module, "_CHECK_CHUNK", 3)
    good = TokenArrays(np.arange(10, dtype=np.int32) % 5, np.array([0, 2, 2, 5, 6, 9, 10], np.int64))
    good.save(tmp_path, "good")
    loaded = TokenArrays.load(tmp_path, "good", mmap=mmap, vocab_size=5)
    assert np.array_equal(loaded.ids, good.ids) and isinstance(loaded.ids, np.memmap) == mmap
    # offsets 0 2 2 | 6 5 ... : the decrease sits across the first chunk boundary
    TokenArrays(good.ids, np.array([0, 2, 6, 5, 6, 9, 10], np.int64)).save(tmp_path, "down")
    with pytest.raises(PipelineError, match="offsets decrease"):
        TokenArrays.load(tmp_path, "down", mmap=mmap)
    late = good.ids.copy()
    late[-1] = 7  # outside the 5-word vocabulary, in the last chunk
    TokenArrays(late, good.offsets).save(tmp_path, "late")
    with pytest.raises(PipelineError, match="outside the vocabulary"):
        TokenArrays.load(tmp_path, "late", mmap=mmap, vocab_size=5)


def test_rows_of_a_memory_map_are_read_through_its_file_exactly(tmp_path):
    """read_rows gives the rows slicing would, for maps (2-D vectors, 1-D ids), views of maps and arrays in
    memory, and shards joined (JoinedRows.rows); read_row_list the rows indexing would; a map cut short is one
    line, not garbage."""
    from msmarco_search.index.vectors import JoinedRows
    from msmarco_search.io.arrays import read_row_list, read_rows

    vectors = np.arange(70 * 3, dtype=np.float16).reshape(70, 3)
    np.save(tmp_path / "v.npy", vectors)
    mapped = np.load(tmp_path / "v.npy", mmap_mode="r")
    for start, stop in ((0, 70), (5, 9), (64, 80), (69, 70), (30, 30), (75, 90)):
        assert np.array_equal(read_rows(mapped, start, stop), vectors[start:stop])
        assert np.array_equal(read_rows(mapped[10:], start, stop), vectors[10:][start:stop])  # a view of the map
        assert np.array_equal(read_rows(vectors, start, stop), vectors[start:stop])
    ids = np.arange(1000, dtype=np.int32)
    np.save(tmp_path / "i.npy", ids)
    assert np.array_equal(read_rows(np.load(tmp_path / "i.npy", mmap_mode="r"), 990, 2000), ids[990:])
    joined = JoinedRows([mapped[:0], np.load(tmp_path / "v.npy", mmap_mode="r"), vectors[:7]])
    assert np.array_equal(joined.rows(60, 74), np.concatenate([vectors, vectors[:7]])[60:74])
    rows = np.array([69, 0, 5, 5, 33, 68])  # scattered, repeated, unsorted: read_row_list, what a sample takes
    assert np.array_equal(read_row_list(mapped, rows), vectors[rows])
    assert np.array_equal(read_row_list(vectors, rows), vectors[rows])
    scattered = np.array([76, 3, 70, 69])
    assert np.array_equal(joined.row_list(scattered), np.concatenate([vectors, vectors[:7]])[scattered])
    with pytest.raises(IndexError):
        read_row_list(mapped, np.array([70]))
    cut = np.load(tmp_path / "v.npy", mmap_mode="r")
    with open(tmp_path / "v.npy", "r+b") as handle:
        handle.truncate(cut.offset + 100 * 2)
    with pytest.raises(PipelineError, match="shorter than its header says"):
        read_rows(cut, 0, 70)
    with pytest.raises(PipelineError, match="shorter than its header says"):
        read_row_list(cut, np.array([1, 60]))


def test_token_array_writer_streams_chunks_into_npy(tmp_path):
    vocab = Vocabulary.from_words(["a", "b", "c"])
    texts = [" ".join("abc"[(i + k) % 3] for k in range(i % 7)) for i in range(100)]
    writer = TokenArrayWriter(tmp_path, "side")
    for start in range(0, 100, 30):
        writer.append(vocab.encode_chunk(texts[start:start + 30], 5))
    assert not (tmp_path / "side.ids.npy").exists()  # nothing under the final name until close()
    arrays = writer.close()
    expected = vocab.encode_many(texts, 5)
    assert isinstance(arrays.ids, np.memmap)
    assert np.array_equal(arrays.ids, expected.ids) and np.array_equal(arrays.offsets, expected.offsets)
    assert np.array_equal(np.load(tmp_path / "side.offsets.npy"), expected.offsets)
    assert not list(tmp_path.glob(".*.tmp"))


def _write_triples_tsv(corpus, path: Path, repeat: int = 2) -> Path:
    by_topic: dict[int, list[str]] = {}
    for _, text, topic in corpus.passages:
        by_topic.setdefault(topic, []).append(text)
    lines = []
    for _ in range(repeat):
        for index, (_, query, topic) in enumerate(corpus.queries):
            other = (topic + 1 + index % 5) % len(by_topic)
            lines.append(f"{query}\t{by_topic[topic][index % 10]}\t{by_topic[other][index % 10]}\n")
    path.write_text("".join(lines))
    return path


def test_triples_tsv_streams_into_cached_arrays(tmp_path, corpus):
    tsv = _write_triples_tsv(corpus, tmp_path / "triples.tsv")
    vocab = Vocabulary.from_words(sorted({w for _, t, _ in corpus.passages + corpus.queries for w in t.split()}))
    arrays = triples_tsv_arrays(tsv, vocab, 4, 9, tmp_path / "cache", chunk_lines=37)
    columns = [c for chunk in read_tsv_chunks(tsv, 3) for c in [chunk]][0]
    assert len(arrays) == len(columns[0]) == 2 * len(corpus.queries)
    for side, texts, limit in zip((arrays.queries, arrays.positives, arrays.negatives), columns, (4, 9, 9),
                                  strict=True):
        assert side.ids.tolist() == [t for text in texts for t in vocab.encode(text, limit)]
    (tmp_path / "bad.tsv").write_text("q\tp\tn\nonly two\tcolumns\n")
    with pytest.raises(Exception, match=r"bad.tsv: line 2 has 2 tab-separated field\(s\), a triples"):
        triples_tsv_arrays(tmp_path / "bad.tsv", vocab, 4, 9, tmp_path / "cache")


# ------------------------------------------------------------------------------------------ resumable training


@pytest.fixture(scope="module")
def small_setup(corpus):
    vocab = Vocabulary.from_words(sorted({w.lower().strip(".") for _, t, _ in corpus.passages + corpus.queries
                                          for w in t.split()}))
    by_topic: dict[int, list[str]] = {}
    for _, text, topic in corpus.passages:
        by_topic.setdefault(topic, []).append(text)
    queries = [q for _, q, _ in corpus.queries]
    positives = [by_topic[t][i % 10] for i, (_, _, t) in enumerate(corpus.queries)]
    negatives = [by_topic[(t + 3) % 12][i % 10] for i, (_, _, t) in enumerate(corpus.queries)]
    data = TripletArrays(vocab.encode_many(queries, 8), vocab.encode_many(positives, 20),
                         vocab.encode_many(negatives, 20))
    embeddings = torch.randn(len(vocab), 16, generator=torch.Generator().manual_seed(1))
    return vocab, data, embeddings


def _model(vocab, embeddings) -> TwoTowerModel:
    return TwoTowerModel(TwoTowerConfig(vocab_size=len(vocab), embedding_dim=16), vocab, embeddings)


def test_resume_after_a_signal_gives_the_same_weights(tmp_path, small_setup):
    vocab, data, embeddings = small_setup
    settings = TrainSettings(epochs=3, batch_size=16, learning_rate=3e-3, log_every=1, checkpoint_every=4)
    reference = _model(vocab, embeddings)
    train_two_tower(reference, data, InBatchSoftmaxLoss(), settings, torch.device("cpu"))

    def interrupt(step, log):
        if step == 19:  # mid-epoch 2 (15 batches per epoch), past a periodic checkpoint
            os.kill(os.getpid(), signal.SIGINT)

    state_path = tmp_path / "state.pt"
    with pytest.raises(TrainingInterrupted) as stopped:
        train_two_tower(_model(vocab, embeddings), data, InBatchSoftmaxLoss(), settings, torch.device("cpu"),
                        after_step=interrupt, state_path=state_path)
    assert stopped.value.step == 19 and stopped.value.signum == signal.SIGINT
    state = load_torch(state_path, KIND_TRAINING_STATE)  # weights_only=True
    assert (state["epoch"], state["batch"], state["step"]) == (2, 4, 19)

    resumed = _model(vocab, embeddings)
    log = train_two_tower(resumed, data, InBatchSoftmaxLoss(), settings, torch.device("cpu"),
                          resume=load_training_state(state_path), state_path=state_path)
    assert log.resumed_from_step == [19] and [s["step"] for s in log.steps] == list(range(1, 46))
    for name, value in reference.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name

    with pytest.raises(Exception, match="batch_size 16 -> 8"):
        train_two_tower(_model(vocab, embeddings), data, InBatchSoftmaxLoss(),
                        TrainSettings(epochs=3, batch_size=8), torch.device("cpu"),
                        resume=load_training_state(state_path))


@pytest.mark.parametrize("shared_towers", [False, True], ids=["two-towers", "shared-tower"])
def test_row_updates_train_like_sparse_and_dense_gradients(small_setup, shared_towers):
    """One process updates the gathered rows in place; DDP keeps the tables in autograd (sparse gradients on
    gloo, dense ones under NCCL and on MPS): the same optimiser, the same result."""
    vocab, data, embeddings = small_setup
    models = []
    for sparse, row_updates in ((True, True), (True, False), (False, False)):
        config = TwoTowerConfig(vocab_size=len(vocab), embedding_dim=16, sparse_embeddings=sparse,
                                shared_towers=shared_towers)
        model = TwoTowerModel(config, vocab, embeddings)
        train_two_tower(model, data, InBatchSoftmaxLoss(), TrainSettings(
            batch_size=32, learning_rate=3e-3, row_updates=row_updates), torch.device("cpu"))
        models.append(model.state_dict())
    for other in models[1:]:
        for name, value in models[0].items():
            torch.testing.assert_close(other[name], value, rtol=1e-4, atol=1e-5)
    start = embeddings.clone()
    start[0] = 0.0  # <pad>
    for state in models:  # every path learned
        assert not torch.allclose(state["passage_tower.embedding.weight"], start)
        assert state["passage_tower.token_weight.weight"].abs().sum() > 0


class _NaNAfter(InBatchSoftmaxLoss):
    def __init__(self, calls: int):
        super().__init__()
        self.calls = calls

    def forward(self, *args, **kwargs):
        self.calls -= 1
        loss = super().forward(*args, **kwargs)
        return loss * float("nan") if self.calls < 0 else loss


def test_nan_loss_stops_and_keeps_the_last_good_state(tmp_path, small_setup):
    vocab, data, embeddings = small_setup
    settings = TrainSettings(epochs=2, batch_size=16, checkpoint_every=5)
    with pytest.raises(TrainingDiverged, match="NaN or infinite at or before step 8; the last good training"):
        train_two_tower(_model(vocab, embeddings), data, _NaNAfter(7), settings, torch.device("cpu"),
                        state_path=tmp_path / "state.pt")
    assert load_training_state(tmp_path / "state.pt")["step"] == 5


@pytest.mark.slow
def test_sigterm_saves_a_state_and_resume_finishes_from_a_triples_tsv(work, corpus, trained_pipeline, capsys):
    tsv = _write_triples_tsv(corpus, work / "triples.train.tsv", repeat=1)
    args = [str(ROOT / TRAIN_SCRIPT), tsv, "--embeddings", trained_pipeline["embeddings"], "--batch-size", "4",
            "--epochs", "100", "--checkpoint-every", "5", "--output-dir", work / "out"]
    env = {**os.environ, "MSMARCO_SEARCH_NO_PROGRESS": "1"}
    process = subprocess.Popen([sys.executable, *map(str, args)], cwd=work, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list((work / "out").glob("*_training_state.pt")) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stdout + stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1
    state_path = next((work / "out").glob("*_training_state.pt"))
    assert "interrupted by SIGTERM" in stderr and f"--resume {state_path}" in stderr
    assert "Tokenised 240 triplets" in stdout
    state = load_training_state(state_path)
    epochs = str(max(state["epoch"], 2))
    args[args.index("100")] = epochs
    # the signal needs a real process; the resume runs the same script's main in this process, in the same folder
    status, out, err = cli(capsys, TRAIN_SCRIPT, *args[1:], "--resume", state_path)
    assert status == 0, err
    assert "Resuming at epoch" in out and "Loading cached token arrays" in out
    model = state_path.with_name(state_path.name.replace("_training_state", ""))
    log = json.loads(model.with_name(model.stem + "_training_log.json").read_text())
    assert log["resumed_from_step"] == [state["step"]] and len(log["epochs"]) == int(epochs)
    assert not state_path.exists()  # removed once the model is saved


def test_cbow_continues_from_a_saved_gensim_model(work, rows_file, capsys):
    from msmarco_search.data.sources import open_source
    from msmarco_search.embeddings.cbow import CbowSettings, embeddings_from_gensim, prepare_corpus, train_cbow

    corpus_file, _ = prepare_corpus(open_source([rows_file]), work / "data", None)
    first_model, _ = train_cbow(corpus_file, CbowSettings(vector_size=8, min_count=1, epochs=1, workers=1))
    (work / "ckpt").mkdir()
    first_model.save(str(work / "ckpt" / "w2v.gensim"))
    first, vocab = embeddings_from_gensim(first_model)
    status, _, err = cli(capsys, CBOW_SCRIPT, "--dataset-path", rows_file, "--min-count", "1", "--vector-size", "8",
                         "--epochs", "2", "--resume-from", work / "ckpt" / "w2v.gensim", "-c", work / "ckpt",
                         "--data-dir", work / "data")
    assert status == 0, err
    second, vocab2, _ = load_embeddings(work / "ckpt" / "msmarco_word2vec.pt")
    assert vocab2.index_to_word == vocab.index_to_word
    assert first.shape == second.shape and not torch.allclose(first, second)


# ---------------------------------------------------------------------------------------------------- DDP


@pytest.mark.slow
def test_two_gloo_processes_train_like_one_with_the_doubled_batch(tmp_path, trained_pipeline):
    common = [trained_pipeline["triplets"], "--embeddings", trained_pipeline["embeddings"], "--max-steps", "3",
              "--log-every", "1", "--learning-rate", "3e-3", "--data-dir", tmp_path / "data",
              "--validation-fraction", "0"]
    env = {**os.environ, "MSMARCO_SEARCH_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          str(ROOT / TRAIN_SCRIPT), *map(str, common), "--batch-size", "16", "--output-dir",
                          str(tmp_path / "two")], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert ddp.returncode == 0, ddp.stdout + ddp.stderr
    assert "(2 processes)" in ddp.stdout and ddp.stdout.count("Training completed") == 1  # rank 0 prints
    assert len(list((tmp_path / "two").glob("two_tower_model_*.pt"))) == 1
    log = json.loads(next((tmp_path / "two").glob("*_training_log.json")).read_text())
    assert log["world_size"] == 2

    # the same run in this process, one process with the doubled batch (as the script builds it)
    matrix, vocab, _ = load_embeddings(trained_pipeline["embeddings"])
    triplets = load_triplets(trained_pipeline["triplets"])
    data = tokenise_triplets(triplets, vocab, 32, 128)
    model = TwoTowerModel(TwoTowerConfig(vocab_size=len(vocab), embedding_dim=matrix.shape[1]), vocab, matrix)
    single = train_two_tower(model, data, InBatchSoftmaxLoss(20.0), TrainSettings(
        batch_size=32, learning_rate=3e-3, max_steps=3, log_every=1), torch.device("cpu"))
    one, two = [s["loss"] for s in single.steps], [s["loss"] for s in log["steps"]]
    assert len(one) == len(two) == 3
    np.testing.assert_allclose(two, one, rtol=1e-4)  # step 1: the same loss; steps 2-3: the same updates
    saved = torch.load(next((tmp_path / "two").glob("two_tower_model_*[0-9].pt")), weights_only=True)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(saved["state_dict"][name], value, rtol=1e-3, atol=1e-4)  # Adam: lr 3e-3 steps
