"""The two-tower model file: saving a model, loading one (checked against its own record of what it holds),
and averaging models of one recipe into one."""

from __future__ import annotations

import uuid
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch

from msmarco_search.core.errors import PipelineError
from msmarco_search.core.report import warn
from msmarco_search.data.provenance import merge_provenance
from msmarco_search.data.vocab import (
    Vocabulary,
    check_own_vocabulary,
    check_vocabulary,
    read_stemmer,
    vocabulary_fingerprint,
)
from msmarco_search.io.safe_load import KIND_TWO_TOWER, load_torch, save_torch
from msmarco_search.training.config import TwoTowerConfig
from msmarco_search.training.model import TwoTowerModel


def save_two_tower(path: str | Path, model: TwoTowerModel, extra: dict[str, Any]) -> Path:
    """Weights, config and vocabulary in one file, with a fresh id that indexes built from it record."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    vocab = model.vocab
    return save_torch({"model_id": uuid.uuid4().hex, "config": asdict(model.config), "state_dict": state,
                       "index_to_word": vocab.index_to_word, "stemmer": vocab.stemmer,
                       "vocabulary_fingerprint": vocabulary_fingerprint(vocab),
                       **extra}, path, KIND_TWO_TOWER)


def state_shapes(config: TwoTowerConfig) -> dict[str, tuple[int, ...]]:
    """The ``state_dict`` shapes of a ``TwoTowerModel`` of ``config`` (a shared tower is listed under both
    prefixes, as ``state_dict`` lists it); ``test_state_shapes_match_the_modules`` holds it to the modules."""
    vocab, dim, out, hidden = config.vocab_size, config.embedding_dim, config.output_dim, config.gru_hidden_dim
    tower: dict[str, tuple[int, ...]] = {"embedding.weight": (vocab, dim)}
    if config.tower == "mean":
        if config.token_weights:
            tower["token_weight.weight"] = (vocab, 1)
        head_in = dim
    else:
        for suffix in ("l0", "l0_reverse"):
            tower |= {f"gru.weight_ih_{suffix}": (3 * hidden, dim), f"gru.weight_hh_{suffix}": (3 * hidden, hidden),
                      f"gru.bias_ih_{suffix}": (3 * hidden,), f"gru.bias_hh_{suffix}": (3 * hidden,)}
        head_in = 2 * hidden
    tower |= {"head.weight": (out, head_in), "head.bias": (out,)}
    return {f"{side}.{name}": shape for side in ("query_tower", "passage_tower") for name, shape in tower.items()}


def load_model(path: str | Path, device: torch.device | str = "cpu",
               expected_vocabulary: str | None = None, expected_from: str | Path = "") -> TwoTowerModel:
    """A saved model in eval mode, with its vocabulary and the rest of the file (``model_id``, ...) in ``metadata``.

    ``expected_vocabulary``: the ``vocabulary_fingerprint`` of the embeddings or index the model is used
    with (named by ``expected_from``); a model made with another vocabulary is refused. Every field is
    checked for its type, every weight for its shape (before anything that size is allocated) and for
    being finite: a model whose training diverged would otherwise index and search with ``nan`` scores.
    """
    from msmarco_search.core.errors import short  # here: only this loader's messages use it

    data = load_torch(path, KIND_TWO_TOWER)
    kinds = {"int": int, "bool": bool, "str": str}
    kinds_named = {"int": "a whole number", "bool": "true or false", "str": "a string"}
    try:
        raw_config, words, state = data["config"], data["index_to_word"], data["state_dict"]
        if not isinstance(raw_config, dict):
            raise TypeError(f"its config is a {type(raw_config).__name__}, not a dict")
        if not isinstance(words, list) or not all(isinstance(word, str) for word in words):
            raise TypeError("its vocabulary is not a list of words")
        if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
            raise TypeError("its state_dict is not a dict of tensors")
        if not isinstance(data.get("model_id", ""), str):  # indexes record it and compare it as a string
            raise TypeError(f"its model_id is {short(data['model_id'])}, not a string")
        config = TwoTowerConfig.from_dict(raw_config)
        for field in fields(TwoTowerConfig):
            value, kind = getattr(config, field.name), kinds.get(str(field.type))
            if kind is not None and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
                raise TypeError(f"config field {field.name} is {short(value)}, not {kinds_named[field.type]}")
        vocab = Vocabulary(words, read_stemmer(data))
        if len(vocab) != config.vocab_size:
            raise ValueError(f"its vocabulary has {len(vocab)} words but its config says {config.vocab_size}")
        # the shapes the config implies, computed (no memory): a config of absurd sizes is refused here instead
        # of allocating them. (Building the model on the meta device would do too, but torch's first meta-device
        # context costs 6 s of imports, which every search and evaluation would pay.)
        expected = state_shapes(config)
        found = {name: tuple(value.shape) for name, value in state.items()}
        if found != expected:
            name = sorted(set(found) ^ set(expected)) or [n for n in expected if found[n] != expected[n]]
            raise ValueError(f"its weights do not fit its config (first difference: {name[0]}, "
                             f"{found.get(name[0], 'missing')} instead of {expected.get(name[0], 'none')})")
        model = TwoTowerModel(config, vocab)
        model.load_state_dict(state)
    except (KeyError, TypeError, ValueError, RuntimeError, PipelineError) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise PipelineError(f"model file is incomplete or inconsistent ({first})", path) from error
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise PipelineError(f"its weights hold NaN or infinite values ({name}): the training that wrote it "
                                "diverged; use an earlier model or train again with a lower learning rate", path)
    own = vocabulary_fingerprint(vocab)
    check_own_vocabulary(data.get("vocabulary_fingerprint"), own, path)
    if expected_vocabulary is not None:
        check_vocabulary(own, path, expected_vocabulary, expected_from or "the files it is used with")
    model.metadata = {k: v for k, v in data.items() if k not in ("state_dict", "index_to_word")}
    return model.to(device).eval()


@torch.no_grad()
def average_two_towers(paths: list[str | Path]) -> TwoTowerModel:
    """A uniform model soup (Wortsman et al. 2022, "Model soups"): the element-wise mean of the weights of models.

    Models fine-tuned from the same start (here the CBOW vectors, an identity head and the same word weights)
    with different seeds stay in one basin of the loss, so the mean of their weights is itself a good model,
    usually better than the typical one of them: it averages out the noise of one run's batch order, at no
    cost at search time. The models must share their settings and vocabulary; the soup keeps the first one's
    metadata, and what all of them were trained on.
    """
    if not paths:
        raise PipelineError("no models to average")
    first = load_model(paths[0])
    fingerprint = vocabulary_fingerprint(first.vocab)
    state = first.state_dict()
    total = {name: tensor.detach().double().clone() for name, tensor in state.items()}
    seen = {first.metadata.get("model_id"): paths[0]}
    for path in paths[1:]:
        model = load_model(path)
        model_id = model.metadata.get("model_id")
        # the same file twice (or a copy): not an error (a weighted soup), but never silent, as a glob that
        # catches a model twice would look like a soup of more seeds than it is
        if model_id is not None and model_id in seen:
            warn(f"{path}: is the same model as {seen[model_id]} (model_id {str(model_id)[:12]}), so the average "
                 "weighs it more than the others")
        seen[model_id] = path
        if model.config != first.config:
            raise PipelineError(f"its settings differ from those of {paths[0]}, so the weights cannot be averaged",
                                path)
        if vocabulary_fingerprint(model.vocab) != fingerprint:
            raise PipelineError(f"its vocabulary differs from that of {paths[0]}", path)
        for name, tensor in model.state_dict().items():
            total[name] += tensor.double()
        first.metadata["trained_on"] = merge_provenance(first.metadata.get("trained_on"),
                                                        model.metadata.get("trained_on"))
    first.load_state_dict({name: (tensor / len(paths)).to(state[name].dtype) for name, tensor in total.items()})
    return first
