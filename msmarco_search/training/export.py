"""Export a trained two-tower model as a sentence-transformers folder, built from sentence-transformers' own modules.

``SentenceTransformer(folder)`` then loads it offline, with no custom code (no ``trust_remote_code``), and gives
the project's vectors: ``encode_query`` = ``model.encode_queries``, ``encode_document`` = ``model.encode_passages``.

One ``mean`` tower is ``normalize(W p + b)`` with ``p = sum_t e_t v_t / sum_t e_t`` over the text's first
``max_length`` tokens, ``e_t = exp(clamp(w_t, -10, 10))`` the learned word weight (1 without token weights).
Sentence-transformers' ``StaticEmbedding`` is an ``EmbeddingBag(mode="mean")``: it gives ``m = (1/n) sum_t r_t``
for the rows ``r_t`` of its table, a plain mean. How the tower becomes modules, and why each form is exact:

- Without token weights (``e_t = 1``), ``m = p``: rows ``v_t``, then ``Dense(W, b)`` and ``Normalize``.
- With token weights, folding ``e_t`` into the rows (``r_t = e_t v_t``) gives ``m = (E / n) p`` with
  ``E = sum_t e_t``: the right direction but the wrong scale, and the scale matters because the head has a bias
  (``normalize(W c p + b) != normalize(W p + b)`` for ``c != 1`` unless ``b = 0``; training moves ``b`` off 0).
  So each row carries its weight in one more column, ``r_t = [e_t v_t, e_t]``, and then
  ``m = (1/n) [S, E]`` with ``S = sum_t e_t v_t``. A linear map with weight ``[W | b]`` and no bias gives
  ``W S / n + b E / n = (E / n) (W p + b)``: the tower's vector times ``E / n > 0``, which ``Normalize`` removes.
  Exact, for every text with at least one token.
- A text with no token at all (empty, punctuation, symbols: the project's tokens are runs of letters and digits)
  has ``p = 0`` in the project, so its vector is ``normalize(b)``; the mean of an empty bag is ``m = 0`` and
  ``[W | b] m = 0``. A gate restores it with built-in modules only: ``Dense`` with ReLU computes
  ``[relu(h), relu(-h), relu(1 - K m_E)]`` with ``h = [W | b] m`` and ``m_E = E / n`` the weight column, then a
  linear ``Dense`` ``[I, -I, b]`` gives ``relu(h) - relu(-h) + b g = h + b g``. Every ``e_t >= exp(-10)`` (the
  project clamps ``w_t``), so a non-empty text has ``m_E >= exp(-10)`` and, with ``K = 2 exp(10)``, ``g = 0``:
  the output is ``h``, as above; an empty text has ``g = 1`` and the output is ``b``. Exact in both cases.

The cut at ``max_query_length`` / ``max_passage_length`` tokens is the tokenizer's truncation, and the tokens are the
project's (``msmarco_search.core.text``: NFKC, lower-case, accents folded, runs of letters and digits of any script,
unknown words -> ``<unk>``) through ``tokenizers`` normalizers (``NFKC``, ``Lowercase``, ``NFD``, ``StripAccents``,
``NFC``) and a ``Split`` pre-tokenizer that keeps the pattern's matches only. The project also repairs mojibake before
tokenising (``text.repair``), which no ``tokenizers`` module does: the export gives the project's vectors for every
text that repair leaves unchanged (ASCII and correctly encoded text), and raw MS MARCO v1 passages should be
repaired before they are encoded.

Separate towers become a ``Router`` with a ``query`` and a ``document`` route (``encode_query`` /
``encode_document``; plain ``encode`` takes the document route). Shared towers are one stack, except when the two
sides cut at different lengths: the cut lives in the tokenizer, so then the Router has one ``StaticEmbedding`` per
side (the word table stored twice) and the head after it is shared.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from msmarco_search.core.errors import PipelineError, first_line
from msmarco_search.core.text import TOKEN_PATTERN, TOKENIZER_VERSION
from msmarco_search.data.vocab import PAD_ID, UNK, Vocabulary
from msmarco_search.io.outputs import OutputKind, claim_output, output_path, release
from msmarco_search.io.records import load_side_record
from msmarco_search.training.model import TOKEN_WEIGHT_CLAMP, MeanPoolTower, TwoTowerModel
from msmarco_search.training.model_file import load_model

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer
    from tokenizers import Tokenizer

# The token pattern of each tokeniser version this export reproduces (msmarco_search.core.text). A new version must be
# added here, checked against text.tokenize by the tests, before models made with it can be exported.
TOKEN_PATTERNS = {"unicode-v2": TOKEN_PATTERN}
# The project clamps the log word weights to [-10, 10] (MeanPoolTower), so a weight is at least exp(-10), and so
# is the mean weight of a non-empty text: this gate constant makes 1 - K * mean <= -1 < 0 for every such text.
GATE_SCALE = 2.0 * math.exp(TOKEN_WEIGHT_CLAMP)
UMASK = os.umask(0)
os.umask(UMASK)
INSTALL_HINT = "install the export's extra: uv sync --extra st (or pip install 'msmarco-search[st]')"


def import_sentence_transformers() -> Any:
    """The ``sentence_transformers`` package, or a one-line error that says how to install it (an optional extra)."""
    try:
        import sentence_transformers
        from sentence_transformers.sentence_transformer import modules  # noqa: F401 - the modules this export uses
    except ImportError as error:
        raise PipelineError(f"not installed or broken ({first_line(error, 80)}); {INSTALL_HINT}",
                            "sentence-transformers") from error
    return sentence_transformers


def build_tokenizer(vocab: Vocabulary, max_length: int | None) -> Tokenizer:
    """A ``tokenizers`` WordLevel tokenizer giving ``vocab.encode(text, max_length)``'s ids for any text."""
    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel

    pattern = TOKEN_PATTERNS.get(TOKENIZER_VERSION)
    if pattern is None:
        raise PipelineError(f"the export does not know the token rules {TOKENIZER_VERSION!r} of "
                            "msmarco_search.core.text")
    if vocab.stemmer != "none":  # check_exportable says it first, naming the file
        raise PipelineError(_STEMMED)
    tokenizer = Tokenizer(WordLevel(dict(vocab.word_to_index), unk_token=UNK))
    # text.normalize's steps in its order. Python's str.lower() and the Lowercase normalizer both apply Unicode's
    # full lower-case mapping (İ -> i + dot), and StripAccents drops every combining mark (category M), as text does.
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase(), normalizers.NFD(),
                                                 normalizers.StripAccents(), normalizers.NFC()])
    # invert=True: the pattern describes the tokens, not the separators; "removed" drops everything between
    # them (spaces, punctuation, symbols), as findall does.
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="removed", invert=True)
    if max_length:  # the project keeps every token when the length is 0
        tokenizer.enable_truncation(max_length=max_length)
    return tokenizer


def _tower_parts(tower: MeanPoolTower) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """Word vectors, word weights exp(w) (None without token weights), head weight and bias, float64 on the CPU."""
    vectors = tower.embedding.weight.detach().double().cpu().clone()
    weights = None
    if tower.token_weight is not None:
        log_weights = tower.token_weight.weight.detach().double().cpu()[:, 0]
        weights = log_weights.clamp(-TOKEN_WEIGHT_CLAMP, TOKEN_WEIGHT_CLAMP).exp()
        weights[PAD_ID] = 0.0  # the project masks padding out; the tokenizer never yields it anyway
    vectors[PAD_ID] = 0.0
    return vectors, weights, tower.head.weight.detach().double().cpu(), tower.head.bias.detach().double().cpu()


def embedding_table(tower: MeanPoolTower) -> torch.Tensor:
    """The ``StaticEmbedding`` rows of a tower: ``v_t``, or ``[e_t v_t, e_t]`` with token weights (float32)."""
    vectors, weights, _, _ = _tower_parts(tower)
    if weights is None:
        return vectors.float()
    return torch.cat([vectors * weights[:, None], weights[:, None]], dim=1).float()


def head_modules(tower: MeanPoolTower) -> list[nn.Module]:
    """The ``Dense`` modules that turn the mean of ``embedding_table``'s rows into the tower's (unnormalised) vector."""
    from sentence_transformers.sentence_transformer.modules import Dense

    _, weights, head_weight, head_bias = _tower_parts(tower)
    out_dim, in_dim = head_weight.shape
    if weights is None:  # a plain mean: the head as it is
        return [Dense(in_dim, out_dim, bias=True, activation_function=nn.Identity(),
                      init_weight=head_weight.float(), init_bias=head_bias.float())]
    folded = torch.cat([head_weight, head_bias[:, None]], dim=1)  # [W | b] on [S / n, E / n]
    gate = torch.zeros(1, in_dim + 1, dtype=torch.float64)
    gate[0, in_dim] = -GATE_SCALE
    first = torch.cat([folded, -folded, gate])  # -> relu(h), relu(-h), relu(1 - K E / n)
    first_bias = torch.zeros(2 * out_dim + 1, dtype=torch.float64)
    first_bias[-1] = 1.0
    eye = torch.eye(out_dim, dtype=torch.float64)
    second = torch.cat([eye, -eye, head_bias[:, None]], dim=1)  # -> h + b * gate
    return [Dense(in_dim + 1, 2 * out_dim + 1, bias=True, activation_function=nn.ReLU(),
                  init_weight=first.float(), init_bias=first_bias.float()),
            Dense(2 * out_dim + 1, out_dim, bias=False, activation_function=nn.Identity(),
                  init_weight=second.float())]


def static_embedding(tower: MeanPoolTower, vocab: Vocabulary, max_length: int | None) -> nn.Module:
    from sentence_transformers.sentence_transformer.modules import StaticEmbedding

    return StaticEmbedding(build_tokenizer(vocab, max_length), embedding_weights=embedding_table(tower))


def tower_modules(tower: MeanPoolTower, vocab: Vocabulary, max_length: int | None) -> list[nn.Module]:
    """One tower as sentence-transformers modules, without the final ``Normalize``."""
    return [static_embedding(tower, vocab, max_length), *head_modules(tower)]


_STEMMED = ("its words are stems (CBOW --stemmer), and a sentence-transformers tokenizer cannot stem; export a "
            "model trained on unstemmed vectors")


def check_exportable(model: TwoTowerModel, path: str | Path) -> None:
    if model.vocab.stemmer != "none":  # a WordLevel tokenizer looks words up as written; no tokenizers module stems
        raise PipelineError(_STEMMED, path)
    if model.config.tower != "mean":
        raise PipelineError(f"a {model.config.tower!r} tower cannot be written as static sentence-transformers "
                            "modules (only 'mean' towers can be exported)", path)


def build_sentence_transformer(model: TwoTowerModel) -> SentenceTransformer:
    """The model as a ``SentenceTransformer`` (CPU) whose ``encode_query`` / ``encode_document`` give its vectors."""
    st = import_sentence_transformers()
    from sentence_transformers.sentence_transformer.modules import Normalize, Router

    check_exportable(model, "the model")
    config, vocab = model.config, model.vocab
    if config.shared_towers and config.max_query_length == config.max_passage_length:
        modules = [*tower_modules(model.query_tower, vocab, config.max_query_length), Normalize()]
    elif config.shared_towers:  # one set of weights, two cuts: a tokenizer (and so a table) per side, one head
        router = Router.for_query_document(
            query_modules=[static_embedding(model.query_tower, vocab, config.max_query_length)],
            document_modules=[static_embedding(model.passage_tower, vocab, config.max_passage_length)])
        modules = [router, *head_modules(model.query_tower), Normalize()]
    else:
        router = Router.for_query_document(
            query_modules=tower_modules(model.query_tower, vocab, config.max_query_length),
            document_modules=tower_modules(model.passage_tower, vocab, config.max_passage_length))
        modules = [router, Normalize()]
    return st.SentenceTransformer(modules=modules, device="cpu", similarity_fn_name="cosine")


def _package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


def _triplets_metadata(training: dict[str, Any]) -> dict[str, Any]:
    """The metadata JSON written beside the training triplets, when it is still where training read it and
    still describes those triplets (``records.load_side_record``)."""
    triplets = (training.get("arguments") or {}).get("triplets_file")
    if not triplets:
        return {}
    path = Path(triplets)
    if not path.is_file():
        return {}
    record, _ = load_side_record(path.with_name(path.stem + "_metadata.json"), path)
    return record or {}


def _number(value: Any, spec: str = ".4f", empty: str = "?") -> str:
    """A figure from the training record for the card; a missing or odd one must not stop the export."""
    return format(value, spec) if isinstance(value, (int, float)) and not isinstance(value, bool) else empty


def _table(rows: list[tuple[str, Any]]) -> list[str]:
    return ["| | |", "|---|---|", *(f"| {key} | {value} |" for key, value in rows if value not in (None, ""))]


def _training_section(training: dict[str, Any]) -> list[str]:
    arguments = training.get("arguments") or {}
    data = _triplets_metadata(training)
    lines = ["## Training data", ""]
    lines += _table([
        ("triplets file", f"`{Path(str(arguments.get('triplets_file', 'unknown'))).name}`"),
        ("triplets", training.get("num_triplets")), ("trained on (after the validation split)",
                                                     training.get("num_training_triplets")),
        ("source", data.get("source")), ("split", data.get("split")), ("queries", data.get("num_queries")),
        ("negatives", data.get("negative_strategy")), ("triplet mode", data.get("mode"))])
    keys = ("epochs", "batch_size", "learning_rate", "embedding_learning_rate", "loss", "scale", "margin", "seed",
            "freeze_embeddings", "init_token_weights", "validation_fraction", "embeddings")
    lines += ["", "## Recipe", "", "`training/train_two_tower_from_triplets.py` with:", ""]
    unused = {"softmax": {"margin"}, "triplet": {"scale"}}.get(arguments.get("loss"), set())  # the other loss's
    lines += _table([(f"`--{key.replace('_', '-')}`", arguments.get(key)) for key in keys
                     if key in arguments and key not in unused])
    lines += [f"| device | {training.get('device')} |",
              f"| training time | {_number(training.get('training_seconds'), '.1f')} s |"]
    return lines


def _scoreboard_section(training: dict[str, Any]) -> list[str]:
    validation = training.get("validation") or {}
    epochs = training.get("epochs") or []
    if not validation and not epochs:
        return []
    lines = ["", "## Scoreboard", ""]
    metric = validation.get("metric", "MRR@10")
    best = validation.get("best")
    if best:
        kept = "the weights exported here" if validation.get("keep_best", True) else "the last weights were kept"
        lines += [f"Held-out validation ({validation.get('queries')} queries, {validation.get('passages')} "
                  f"passages): best {metric} **{_number(best.get(metric))}** at epoch {best.get('epoch')}, step "
                  f"{best.get('step')} ({kept}).", ""]
    scores = {entry.get("epoch"): entry.get(metric) for entry in validation.get("entries", [])
              if entry.get("end_of_epoch")}
    lines += [f"| epoch | training loss | validation {metric} |", "|---|---|---|"]
    for entry in epochs:
        score = scores.get(entry.get("epoch"))
        lines.append(f"| {entry.get('epoch')} | {_number(entry.get('loss'))} | {_number(score, empty='')} |")
    return lines


def model_card(model: TwoTowerModel, model_path: str | Path, layout: str) -> str:
    """README.md for the exported folder: how to use it, the training data, the recipe and the model's settings."""
    meta, config = model.metadata, model.config
    training = meta.get("training") or {}
    lines = ["---", "library_name: sentence-transformers", "pipeline_tag: sentence-similarity",
             "tags: [sentence-transformers, sentence-similarity, feature-extraction, static-embeddings, msmarco]",
             "---", "", f"# msmarco-search two-tower model `{meta.get('model_id', 'unknown')}`", "",
             "A static two-tower retrieval model trained on MS MARCO with msmarco-search, exported from "
             f"`{Path(model_path).name}`. It gives the same vectors as `msmarco_search.load_model(...)."
             "encode_queries` / `encode_passages` (cosine >= 0.9999, tested), L2-normalised: score with the dot "
             "product.", "", "```python", "from sentence_transformers import SentenceTransformer", "",
             "model = SentenceTransformer(\"path/to/this/folder\", device=\"cpu\")",
             "queries = model.encode_query([\"what is a two-tower model\"])",
             "passages = model.encode_document([\"A two-tower model encodes queries and passages separately.\"])",
             "scores = queries @ passages.T", "```", "", f"Layout: {layout}", "",
             "## Model settings", ""]
    lines += _table([("towers", "shared" if config.shared_towers else "separate query and passage towers"),
                     ("tower", f"{config.tower}: learned-weight mean of word vectors, linear head, L2 norm"),
                     ("token weights", config.token_weights), ("vocabulary", f"{config.vocab_size:,} words "
                                                               f"(fingerprint {meta.get('vocabulary_fingerprint')})"),
                     ("word vector size", config.embedding_dim), ("output size", config.output_dim),
                     ("max query tokens", config.max_query_length or "all"),
                     ("max passage tokens", config.max_passage_length or "all"),
                     ("tokens", f"`{TOKENIZER_VERSION}`: NFKC, lower-case, accents folded, runs of letters and digits "
                                "of any script, others dropped; unknown words -> `<unk>`; mojibake is not repaired "
                                "(`msmarco_search.core.text.repair` does it)"),
                     ("CBOW embeddings", f"`{meta.get('embeddings_file')}`")])
    if meta.get("averaged_from"):
        lines += ["", f"The weights are the mean of {len(meta['averaged_from'])} models (a model soup): "
                  + ", ".join(f"`{Path(p).name}`" for p in meta["averaged_from"]) + "."]
    lines += ["", *_training_section(training), *_scoreboard_section(training), "",
              "## Export", "",
              f"Exported {datetime.now().isoformat(timespec='seconds')} by msmarco-search "
              f"{_package_version('msmarco-search')} with sentence-transformers "
              f"{_package_version('sentence-transformers')}; built-in modules only (no `trust_remote_code`). "
              "Why the modules reproduce the towers exactly: the docstring of `msmarco_search/training/export.py`.", ""]
    return "\n".join(lines)


def describe_layout(model: TwoTowerModel) -> str:
    config = model.config
    head = ("Dense(W, b)" if not config.token_weights
            else "Dense+ReLU, Dense (the head [W | b] on the weighted mean, gated for texts without tokens)")
    if config.shared_towers and config.max_query_length == config.max_passage_length:
        return f"one stack: StaticEmbedding -> {head} -> Normalize"
    if config.shared_towers:
        return (f"Router(query: StaticEmbedding cut at {config.max_query_length}, document: StaticEmbedding cut at "
                f"{config.max_passage_length}) -> {head} -> Normalize (shared weights)")
    return f"Router(query, document: StaticEmbedding -> {head} each) -> Normalize"


# What sentence-transformers writes at the top of a saved model folder: --overwrite replaces only such a folder
EXPORT_MARKER = "modules.json"


def recognise_export(output_dir: Path) -> str | None:
    """``outputs.OutputKind`` recogniser of an earlier export: ``--overwrite`` removes the folder whole, and
    ``--output-dir checkpoints --overwrite`` would take the models, indexes and logs in it with it."""
    entries = sorted(entry.name for entry in output_dir.iterdir())
    if EXPORT_MARKER in entries:
        return None
    shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
    return f"no {EXPORT_MARKER}; it holds {shown}"


EXPORT_OUTPUT = OutputKind("sentence-transformers export", recognise_export, folder=True)


def _prepare_output(output_dir: Path, overwrite: bool, model_path: Path) -> tuple[Path, Path]:
    """Claim and check ``output_dir`` (``outputs.claim_output``: an earlier export, replaced only with
    ``overwrite``; never a folder of other files or one holding the model) and make the temporary folder
    beside it that the export is built in: (the temporary folder, the folder to write, through a link to what
    it points at). The caller releases the claim."""
    output_dir = output_path(output_dir)
    parent = output_dir.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PipelineError(f"cannot write the export here ({error.strerror or error})", output_dir) from error
    output_dir = claim_output(output_dir, EXPORT_OUTPUT, [model_path], overwrite, flag="--output-dir")
    try:
        return Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", suffix=".tmp", dir=parent)), output_dir
    except OSError as error:
        release(output_dir)
        raise PipelineError(f"cannot write the export here ({error.strerror or error})", output_dir) from error


def _move_into_place(tmp: Path, output_dir: Path) -> None:
    """Rename the finished folder to ``output_dir``; an old one is renamed aside first and removed after."""
    old = None
    if output_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", suffix=".old", dir=tmp.parent))
        os.replace(output_dir, old / "previous")
    try:
        os.replace(tmp, output_dir)
    except OSError:
        if old is not None:  # put the previous export back
            os.replace(old / "previous", output_dir)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def export_sentence_transformers(model_path: str | Path, output_dir: str | Path, overwrite: bool = False) -> Path:
    """Write the model at ``model_path`` as a sentence-transformers folder ``output_dir`` (atomically).

    The folder is built in a temporary folder beside ``output_dir`` and renamed into place, so an interrupted
    export never leaves a half-written model under that name. A non-empty ``output_dir`` is refused unless
    ``overwrite``.
    """
    # The cheap checks first (the folder, the model file), so that a mistake is reported in a second, before the
    # slow import of sentence-transformers (tens of seconds: it pulls in transformers and scikit-learn).
    tmp, written = _prepare_output(Path(output_dir), overwrite, Path(model_path))
    try:
        model = load_model(model_path)
        check_exportable(model, model_path)
        st_model = build_sentence_transformer(model)
        st_model.save(str(tmp), create_model_card=False, safe_serialization=True)
        (tmp / "README.md").write_text(model_card(model, model_path, describe_layout(model)), encoding="utf-8")
        tmp.chmod(0o777 & ~UMASK)  # mkdtemp makes the folder private; give it the usual permissions
        _move_into_place(tmp, written)
    except OSError as error:
        raise PipelineError(f"cannot write the export ({error.strerror or error})", output_dir) from error
    except Exception as error:
        # The Rust writers report a failed write (a full disk, a quota) without an OSError: tokenizers as a bare
        # Exception ("No space left on device (os error 28)"), safetensors as a SafetensorError ("Error while
        # serializing: I/O error: ... (os error 28)"). Only those become the one-line error; anything else is a
        # bug and keeps its traceback.
        failed = re.search(r"\(os error (\d+)\)", str(error))
        if failed is None:
            raise
        raise PipelineError(f"cannot write the export ({os.strerror(int(failed.group(1)))}); free some space or "
                            "choose another folder, then run again", output_dir) from error
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        release(written)
    return Path(output_dir)
