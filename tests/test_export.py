"""Export to sentence-transformers: models trained through the scripts, exported through the command line, loaded
offline with ``SentenceTransformer(DIR)``, give the project's own query and passage vectors."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import socket
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_main, run_script
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from msmarco_search.core.text import repair, tokenize
from msmarco_search.data.vocab import Vocabulary
from msmarco_search.training.config import TwoTowerConfig
from msmarco_search.training.export import build_tokenizer
from msmarco_search.training.model import TwoTowerModel
from msmarco_search.training.model_file import load_model, save_two_tower

# the `st` extra (in the dev group too), looked up without importing it: the import takes seconds, which only the
# tests that load an export pay
pytestmark = pytest.mark.skipif(importlib.util.find_spec("sentence_transformers") is None,
                                reason="sentence-transformers (the `st` extra) is not installed")

EXPORT_SCRIPT = "training/export_sentence_transformers.py"
MIN_COSINE = 0.9999

# strings where a tokenizer could part ways with the project's regex: punctuation, digits, case, accents, other
# scripts, characters whose lower case is ASCII (the Kelvin sign, dotted capital I), ligatures, full-width letters
TRICKY = ["", " ", "!!!", "...?", "\n\t", "Hello, World!", "café au lait", "CAFÉ", "naïve résumé", "日本語のテキスト",
          "Привет мир", "مرحبا", "İstanbul", "\u212a kelvin", "ﬁne ﬂow", "ＡＢＣ full width", "Straße", "x\u0301y",
          "42", "3.14159 is pi", "a-b_c/d\\e", "don't stop", "e-mail: a@b.com", "<unk> <pad>", "emoji 🙂 text",
          "UPPER lower MiXeD", "tab\tseparated\nlines\r\nhere", "\u00a0non-breaking\u2003space", "what is ask3x1?"]


def _layout(trained_pipeline, tmp_path_factory, name: str, **settings) -> Path:
    """The trained model's vocabulary, word vectors and training record in another tower layout, every weight
    moved off its start at random (word weights spread over most of their range, head and bias far from the
    identity): an exact export must follow all of them, and training more models through the script would only
    cost CI time (the training script is tested elsewhere)."""
    trained = load_model(trained_pipeline["model"])
    config = TwoTowerConfig(vocab_size=trained.config.vocab_size, embedding_dim=trained.config.embedding_dim,
                            **settings)
    model = TwoTowerModel(config, trained.vocab, trained.query_tower.embedding.weight.detach())
    generator = torch.Generator().manual_seed(len(name))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * parameter.std().clamp_min(0.3))
    extra = {key: value for key, value in trained.metadata.items() if key not in ("model_id", "config")}
    return save_two_tower(tmp_path_factory.mktemp(name) / "two_tower_model_layout.pt", model, extra)


@pytest.fixture(scope="module")
def models(trained_pipeline, tmp_path_factory):
    """Three layouts: separate towers with word weights (the default training, the conftest fixture, trained
    through the script); shared towers cutting both sides at 12 tokens (one stack); shared towers without word
    weights at 32/128 tokens (a Router over two tokenizers, one head)."""
    return {
        "separate": trained_pipeline["model"],
        "shared_one_stack": _layout(trained_pipeline, tmp_path_factory, "shared", shared_towers=True,
                                    max_query_length=12, max_passage_length=12),
        "shared_plain": _layout(trained_pipeline, tmp_path_factory, "plain", shared_towers=True,
                                token_weights=False),
    }


@pytest.fixture(scope="module")
def exported(models, tmp_path_factory):
    """Each model exported as a user runs it: through the command line for the trained model, through the same
    command's ``main`` in this process for the others (a fresh interpreter costs seconds to import
    sentence-transformers)."""
    from msmarco_search.cli.export import main as export_main

    folders = {}
    for name, model in models.items():
        folder = tmp_path_factory.mktemp(f"export_{name}") / "st-model"
        if name == "shared_plain":
            folder.mkdir()  # an existing empty folder is written into as if it were not there
        if name == "separate":
            result = run_script(EXPORT_SCRIPT, model, "--output-dir", folder, cwd=folder.parent)
            assert "Exported" in result.stdout
        else:
            assert export_main([str(model), "--output-dir", str(folder)]) == 0
        folders[name] = folder
    return folders


@pytest.fixture
def offline(monkeypatch):
    """The hub switched off, and any socket connection an error: loading must need nothing but the folder."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise OSError("a test tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def _texts(model, corpus) -> list[str]:
    """Many texts: the corpus, the tricky strings, random mixes of known and unknown words with punctuation and
    case, and texts far longer than both cuts (so that truncation must match too)."""
    rng = random.Random(7)
    words = model.vocab.index_to_word[2:]
    noise = ["unknownword", "zzz9", "Ünïcödé", "—", ",", ".", "?!", "42", "日本", "(x)", "'s"]
    texts = [text for _, text, _ in corpus.queries] + [text for _, text, _ in corpus.passages] + TRICKY
    for length in [1, 2, 5, 11, 12, 13, 31, 32, 33, 60, 127, 128, 129, 300]:
        for _ in range(6):
            picks = [rng.choice(words) if rng.random() < 0.8 else rng.choice(noise) for _ in range(length)]
            picks = [word.upper() if rng.random() < 0.1 else word for word in picks]
            texts.append(rng.choice([" ", "  ", ", ", "\n"]).join(picks))
    return texts


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row cosines; two zero rows (no tokens and no bias) count as equal."""
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    both_zero = (np.linalg.norm(a, axis=1) < 1e-6) & (np.linalg.norm(b, axis=1) < 1e-6)
    return np.where(both_zero, 1.0, (a * b).sum(1) / np.maximum(norms, 1e-12))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["separate", "shared_one_stack", "shared_plain"])
def test_exported_model_gives_the_projects_vectors(name, models, exported, corpus, offline):
    from sentence_transformers import SentenceTransformer

    model = load_model(models[name])
    st_model = SentenceTransformer(str(exported[name]), device="cpu")
    texts = _texts(model, corpus)
    assert len(texts) > 300 and any(len(tokenize(text)) > model.config.max_passage_length for text in texts)

    queries, passages = st_model.encode_query(texts), st_model.encode_document(texts)
    expected_queries, expected_passages = model.encode_queries(texts), model.encode_passages(texts)
    assert queries.dtype == np.float32 and queries.shape == expected_queries.shape
    query_cosines = _cosines(queries, expected_queries)
    passage_cosines = _cosines(passages, expected_passages)
    print(f"{name}: {len(texts)} texts, min cosine queries {query_cosines.min():.7f}, "
          f"passages {passage_cosines.min():.7f}")
    assert query_cosines.min() >= MIN_COSINE, texts[int(query_cosines.argmin())]
    assert passage_cosines.min() >= MIN_COSINE, texts[int(passage_cosines.argmin())]
    np.testing.assert_allclose(np.linalg.norm(queries, axis=1), np.linalg.norm(expected_queries, axis=1), atol=1e-5)
    # plain encode() is the document side
    assert _cosines(st_model.encode(texts[:50]), expected_passages[:50]).min() >= MIN_COSINE


@pytest.mark.slow
def test_the_router_picks_the_right_tower(models, exported, corpus, offline):
    """Separate towers give different vectors for one text; encode_query must be the query tower's, not the other."""
    from sentence_transformers import SentenceTransformer

    model = load_model(models["separate"])
    st_model = SentenceTransformer(str(exported["separate"]), device="cpu")
    texts = [text for _, text, _ in corpus.queries[:40]]
    crossed = _cosines(st_model.encode_query(texts), model.encode_passages(texts))
    assert crossed.min() < 0.999  # the towers differ, so this test can tell them apart
    assert _cosines(st_model.encode_query(texts), model.encode_queries(texts)).min() >= MIN_COSINE


@pytest.mark.slow
def test_texts_without_tokens_get_the_heads_bias_direction(models, exported, offline):
    """Empty and non-Latin texts have no token: the project's vector is normalize(bias), not zero."""
    from sentence_transformers import SentenceTransformer

    model = load_model(models["separate"])
    assert model.query_tower.head.bias.abs().max() > 1e-4  # training moved the bias off zero, so this is a test
    st_model = SentenceTransformer(str(exported["separate"]), device="cpu")
    texts = ["", "日本語", "!!!", "é"]
    vectors = st_model.encode_query(texts)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert _cosines(vectors, model.encode_queries(texts)).min() >= MIN_COSINE
    assert _cosines(st_model.encode_query([""] * 3), model.encode_queries([""] * 3)).min() >= MIN_COSINE


@pytest.mark.slow
def test_folder_layout_safetensors_and_model_card(models, exported):
    for name, folder in exported.items():
        files = [path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()]
        assert any(path.endswith("model.safetensors") for path in files)
        assert not any(path.endswith((".bin", ".pt", ".pkl", ".py")) for path in files), files  # no pickles, no code
        modules = json.loads((folder / "modules.json").read_text())
        assert all(module["type"].startswith("sentence_transformers.") for module in modules)
        types = [module["type"].rsplit(".", 1)[-1] for module in modules]
        if name == "shared_one_stack":
            assert types[0] == "StaticEmbedding" and types[-1] == "Normalize" and "Router" not in types
        else:
            assert types[0] == "Router" and types[-1] == "Normalize"
        assert not any(path.name.startswith(f".{folder.name}.") for path in folder.parent.iterdir())  # no temp left

        card = (folder / "README.md").read_text()
        meta = load_model(models[name]).metadata
        assert "library_name: sentence-transformers" in card
        assert meta["model_id"] in card and "msmarco_triplets_" in card and "MRR@10" in card
        assert "## Training data" in card and "## Recipe" in card and "## Model settings" in card
        assert f"| `--epochs` | {meta['training']['arguments']['epochs']} |" in card


def test_why_the_weights_need_a_column_and_a_gate():
    """On a model with a large head bias and word weights at both clamps, the export is exact; folding the weights
    into the rows alone (StaticEmbedding's plain mean, then Dense(W, b)) is not, and a text without tokens needs the
    gate (the plain mean of nothing is zero, the project's vector is normalize(b))."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, StaticEmbedding

    from msmarco_search.training.export import build_sentence_transformer

    torch.manual_seed(0)
    vocab = Vocabulary.from_words([f"w{i}" for i in range(40)])
    config = TwoTowerConfig(vocab_size=len(vocab), embedding_dim=6, output_dim=4, shared_towers=True,
                            max_query_length=8, max_passage_length=8)
    model = TwoTowerModel(config, vocab).eval()
    tower = model.query_tower
    with torch.no_grad():
        tower.token_weight.weight.normal_(0, 2)
        tower.token_weight.weight[2:6] = -50.0  # clamped to -10: the smallest weight, where the gate is tightest
        tower.token_weight.weight[6:10] = 50.0  # clamped to +10
        tower.head.bias.normal_(0, 1)
    rng = random.Random(3)
    texts = ["", "!!", "w0 w1 w2 w3 w4 w5 w6 w7 w8 w9 w10 w11", "w2 w3", "w6 w7", "w2 w6", "unknown w5"]
    texts += [" ".join(f"w{rng.randrange(40)}" for _ in range(rng.randrange(1, 12))) for _ in range(200)]
    expected = model.encode_queries(texts)

    exact = build_sentence_transformer(model).encode_query(texts)
    assert _cosines(exact, expected).min() >= MIN_COSINE

    weights = tower.token_weight.weight.detach()[:, 0].clamp(-10, 10).exp()
    rows = tower.embedding.weight.detach() * weights[:, None]
    naive = SentenceTransformer(modules=[
        StaticEmbedding(build_tokenizer(vocab, 8), embedding_weights=rows),
        Dense(6, 4, activation_function=torch.nn.Identity(), init_weight=tower.head.weight.detach().clone(),
              init_bias=tower.head.bias.detach().clone()),
        Normalize()], device="cpu").encode_query(texts)
    assert _cosines(naive, expected).min() < 0.99  # the scale of the pooled vector matters once there is a bias
    assert np.linalg.norm(expected[0]) > 0.99 and np.linalg.norm(exact[0]) > 0.99  # "" -> normalize(b), not 0


def test_model_card_of_a_model_without_training_record():
    """An untrained or hand-made model has no training metadata: the card still says what the model is."""
    from msmarco_search.training.export import model_card

    vocab = Vocabulary.from_words(["hello"])
    model = TwoTowerModel(TwoTowerConfig(vocab_size=len(vocab), embedding_dim=4), vocab)
    assert "## Model settings" in model_card(model, "bare.pt", "one stack")
    model.metadata = {"training": {"epochs": [{"epoch": 1, "loss": None}], "validation": {"best": {}}}}
    card = model_card(model, "bare.pt", "one stack")
    assert "## Model settings" in card and "| max query tokens | 32 |" in card and "| 1 | ? |  |" in card


FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
_VOCAB = Vocabulary.from_words(["hello", "world", "cafe", "au", "42", "i", "k", "istanbul", "xy", "ne", "e", "a1",
                                 "fine", "abc", "straße", "привет", "日本語のテキスト", "日本", "naive", "resume"])
_TOKENIZER = build_tokenizer(_VOCAB, None)
_CUT_TOKENIZER = build_tokenizer(_VOCAB, 3)


@pytest.mark.parametrize("text", TRICKY)
def test_tokenizer_matches_the_project_on_tricky_strings(text):
    assert _TOKENIZER.encode(text, add_special_tokens=False).ids == _VOCAB.encode(text)
    assert _CUT_TOKENIZER.encode(text, add_special_tokens=False).ids == _VOCAB.encode(text, 3)


_PIECES = ["hello", "World", "café", "42", "x", "İ", "\u212a", " ", ",", "日本", "a1b", "\n", "ß", "-", "NE"]


# characters both libraries' Unicode tables know (test_tokenizer_matches_the_project_on_every_character)
_KNOWN_CHARACTERS = st.characters().filter(lambda c: unicodedata.ucd_3_2_0.category(c) not in ("Cn", "Cs"))


@FAST
@given(st.text(_KNOWN_CHARACTERS, max_size=80) | st.lists(st.sampled_from(_PIECES), max_size=20).map("".join))
def test_tokenizer_matches_the_project_on_any_text(text):
    assume(repair(text) == text)  # the export cannot repair mojibake (module docstring); the rest must match
    assert _TOKENIZER.encode(text, add_special_tokens=False).ids == _VOCAB.encode(text)
    assert _CUT_TOKENIZER.encode(text, add_special_tokens=False).ids == _VOCAB.encode(text, 3)


@pytest.mark.slow
def test_tokenizer_matches_the_project_on_every_character():
    """Every character Unicode 3.2 assigned, inside a word and alone: the two libraries' Unicode tables agree on all
    of them. (Newer characters can differ: tokenizers' accent and letter tables are older than Python's.)"""
    old = unicodedata.ucd_3_2_0
    texts = [f"a{chr(c)}b {chr(c)}" for c in range(0x110000) if old.category(chr(c)) not in ("Cn", "Cs")]
    texts = [text for text in texts if repair(text) == text]
    vocab = Vocabulary.from_words(sorted({token for text in texts for token in tokenize(text)}))
    encoded = build_tokenizer(vocab, None).encode_batch(texts, add_special_tokens=False)
    mismatched = [text for text, encoding in zip(texts, encoded, strict=True) if encoding.ids != vocab.encode(text)]
    assert len(texts) > 200_000 and not mismatched, mismatched[:5]


# ------------------------------------------------------------------------------------------------ bad input


def _error(result) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def _no_temp_left(parent, name: str) -> None:
    assert not [path for path in parent.iterdir() if path.name.startswith(f".{name}.")]


def test_refuses_files_that_are_not_models(tmp_path, capsys):
    text = tmp_path / "notes.txt"
    text.write_text("not a model\n")
    line = _error(run_main(capsys, EXPORT_SCRIPT, text, "--output-dir", tmp_path / "out", cwd=tmp_path, check=False))
    assert line.startswith(f"error: {text}: ")
    line = _error(run_main(capsys, EXPORT_SCRIPT, tmp_path / "missing.pt", "--output-dir", tmp_path / "out",
                           cwd=tmp_path, check=False))
    assert "file not found" in line
    assert not (tmp_path / "out").exists()
    _no_temp_left(tmp_path, "out")


def test_refuses_a_gru_model(tmp_path, capsys):
    vocab = Vocabulary.from_words(["hello", "world"])
    model = TwoTowerModel(TwoTowerConfig(vocab_size=len(vocab), embedding_dim=8, tower="gru", gru_hidden_dim=4), vocab)
    path = save_two_tower(tmp_path / "gru.pt", model, {})
    line = _error(run_main(capsys, EXPORT_SCRIPT, path, "--output-dir", tmp_path / "out", cwd=tmp_path, check=False))
    assert line.startswith(f"error: {path}: ") and "'gru'" in line and "mean" in line
    assert not (tmp_path / "out").exists()


def test_refuses_bad_output_folders(trained_pipeline, tmp_path, capsys):
    model = trained_pipeline["model"]
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    line = _error(run_main(capsys, EXPORT_SCRIPT, model, "--output-dir", a_file, cwd=tmp_path, check=False))
    assert line.startswith(f"error: {a_file}: ") and "not a folder" in line
    line = _error(run_main(capsys, EXPORT_SCRIPT, model, "--output-dir", a_file / "sub", cwd=tmp_path, check=False))
    assert line.startswith(f"error: {a_file / 'sub'}: ") and "cannot write" in line
    assert a_file.read_text() == "x"
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        try:
            line = _error(run_main(capsys, EXPORT_SCRIPT, model, "--output-dir", locked / "out", cwd=tmp_path,
                                   check=False))
            assert "cannot write" in line
        finally:
            locked.chmod(0o755)


@pytest.mark.slow
def test_refuses_a_non_empty_folder_unless_overwrite(trained_pipeline, tmp_path, offline, capsys):
    from types import SimpleNamespace

    from conftest import cli
    from sentence_transformers import SentenceTransformer

    def export(*args):  # the script's main in this process (the fixture exports through a fresh interpreter)
        status, out, err = cli(capsys, EXPORT_SCRIPT, *args)
        return SimpleNamespace(returncode=status, stdout=out, stderr=err)

    model = trained_pipeline["model"]
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    line = _error(export(model, "--output-dir", out))
    assert "not an earlier sentence-transformers export" in line and "keep.txt" in line
    assert [path.name for path in out.iterdir()] == ["keep.txt"]

    # --overwrite replaces an earlier export only: a folder of other files (here the user's; it might be the
    # checkpoints folder) is never removed, nor one that holds the model being exported
    line = _error(export(model, "--output-dir", out, "--overwrite"))
    assert "not an earlier sentence-transformers export" in line and "keep.txt" in line
    (out / "model.pt").write_bytes(model.read_bytes())
    line = _error(export(out / "model.pt", "--output-dir", out, "--overwrite"))
    assert "holds an input of this run" in line and "model.pt" in line
    assert sorted(path.name for path in out.iterdir()) == ["keep.txt", "model.pt"]
    (out / "keep.txt").unlink()
    (out / "model.pt").unlink()

    assert export(model, "--output-dir", out).returncode == 0
    (out / "extra.txt").write_text("left by the earlier export's user")
    assert export(model, "--output-dir", out, "--overwrite").returncode == 0
    assert not (out / "extra.txt").exists() and (out / "modules.json").exists()
    _no_temp_left(tmp_path, "out")
    texts = ["what is ask1x2", "Doc1y3 doc1y4."]
    vectors = SentenceTransformer(str(out), device="cpu").encode_query(texts)
    assert _cosines(vectors, load_model(model).encode_queries(texts)).min() >= MIN_COSINE


@pytest.mark.slow
def test_says_how_to_install_sentence_transformers_when_it_is_missing(trained_pipeline, tmp_path, monkeypatch):
    hidden = tmp_path / "hide"
    (hidden / "sentence_transformers").mkdir(parents=True)
    (hidden / "sentence_transformers" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'sentence_transformers'\")\n")
    monkeypatch.setenv("PYTHONPATH", str(hidden))
    line = _error(run_script(EXPORT_SCRIPT, trained_pipeline["model"], "--output-dir", tmp_path / "out", cwd=tmp_path,
                             check=False))
    assert line.startswith("error: sentence-transformers: ") and "uv sync --extra st" in line
    assert not (tmp_path / "out").exists()
