"""A teacher: a sentence-transformers bi-encoder whose judgments train the two-tower (never searched with).

The two-tower learns from the teacher's vectors of queries and passages (``losses.InBatchDistillationLoss``: its
in-batch scores; ``mining.teacher_label_triplets``: the positives and hard negatives of its ranking); the model
that is indexed and searched stays static. Loading is offline from a folder, or by hub name where the hub can be
reached, and never runs code from the model: only sentence-transformers' own module types are accepted
(``modules.json``), no Python files or ``auto_map``, weights load from safetensors only, and ``trust_remote_code``
stays off.

Encoding costs minutes on a CPU (tens of passages a second on 2 cores), so vectors are cached under the data
folder (``cache.TeacherCache``): one file per teacher, keyed by the digest of its files, holding a vector per text
keyed by the text's digest. A second run encodes only the texts the cache lacks. Texts are encoded longest first in
batches of similar length (padding is wasted work), on every core, with a progress bar.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from msmarco_search.core.errors import PipelineError, first_line
from msmarco_search.core.report import progress
from msmarco_search.core.text import repair
from msmarco_search.teacher.settings import BATCH_SIZE, HUB_TEACHER

__all__ = ["HUB_TEACHER", "Teacher", "TeacherUnavailable", "load_teacher", "teacher_folder"]
# the files of a sentence-transformers folder that decide its vectors: their bytes are the teacher's identity
_IDENTITY_FILES = ("modules.json", "config.json", "config_sentence_transformers.json", "sentence_bert_config.json",
                   "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                   "1_Pooling/config.json", "2_Normalize/config.json")
_MODULE_PREFIX = "sentence_transformers."
# the configuration files that could ask for the model's own code (``auto_map``, ``trust_remote_code``)
_CODE_SETTINGS = ("config.json", "tokenizer_config.json", "config_sentence_transformers.json",
                  "sentence_bert_config.json")
_PICKLES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


INSTALL_HINT = "install the teacher's extra: uv sync --extra st (or pip install 'msmarco-search[st]')"


class TeacherUnavailable(PipelineError):
    """The teacher cannot be had here (no such folder, the hub out of reach, sentence-transformers not installed),
    as opposed to a folder that is refused: the main job then trains without a teacher and says so."""


class Teacher:
    """A loaded sentence-transformers model: ``encode(texts)`` gives float32, L2-normalised rows (``dim`` wide).

    ``identity`` names the model by the digest of its files, so a cache or a triplets file made with another
    teacher (or another revision of this one) is told apart.
    """

    def __init__(self, model: Any, name: str, identity: str, batch_size: int = BATCH_SIZE):
        self.model, self.name, self.identity, self.batch_size = model, name, identity, batch_size
        self.dim = int(model.get_embedding_dimension())

    def encode(self, texts: Sequence[str], desc: str = "Teacher encoding") -> np.ndarray:
        """``texts`` as rows in their order, encoded longest first in batches (padding costs as much as text)."""
        import torch

        vectors = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return vectors
        order = np.argsort([-len(text) for text in texts], kind="stable")
        batches = range(0, len(order), self.batch_size)
        threads = torch.get_num_threads()
        torch.set_num_threads(os.cpu_count() or 1)  # the teacher alone: every core
        try:
            with torch.inference_mode():
                bar = progress(batches, desc=desc, total=len(batches), unit="batch")
                for start in bar:
                    rows = order[start:start + self.batch_size]
                    encoded = self.model.encode([repair(texts[i]) for i in rows], batch_size=len(rows),
                                                convert_to_numpy=True, normalize_embeddings=True,
                                                show_progress_bar=False)
                    vectors[rows] = encoded
        finally:
            torch.set_num_threads(threads)
        return vectors


def check_installed() -> None:
    """A one-line error when sentence-transformers (an optional extra) is missing, found without importing it
    (the import alone takes seconds)."""
    if importlib.util.find_spec("sentence_transformers") is None:
        raise TeacherUnavailable(f"not installed; {INSTALL_HINT}", "sentence-transformers")


def import_sentence_transformers() -> Any:
    """The ``sentence_transformers`` package, or a one-line error that says how to install it (an optional extra)."""
    try:
        import sentence_transformers
    except ImportError as error:
        raise TeacherUnavailable(f"not installed ({first_line(error, 80)}); {INSTALL_HINT}",
                                 "sentence-transformers") from error
    return sentence_transformers


def _check_folder(folder: Path) -> None:
    """Refuse a folder that is not a sentence-transformers model made of its own modules, with safetensors
    weights: anything else could run code as it loads (custom modules, pickled ``pytorch_model.bin``)."""
    modules_path = folder / "modules.json"
    if not modules_path.is_file():
        raise PipelineError("not a sentence-transformers model folder (no modules.json)", folder)
    try:
        modules = json.loads(modules_path.read_text(encoding="utf-8"))
        types = [str(module["type"]) for module in modules]
        paths = [str(module.get("path", "")) for module in modules]
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError) as error:
        raise PipelineError(f"modules.json is not a list of sentence-transformers modules ({first_line(error, 80)})",
                            modules_path) from error
    foreign = [kind for kind in types if not kind.startswith(_MODULE_PREFIX)]
    if foreign:
        raise PipelineError(f"modules.json names a module that is not sentence-transformers' own ({foreign[0]}), "
                            "which would run code from elsewhere; refused", modules_path)
    for path in paths:
        inside = (folder / path).resolve()
        if not inside.is_relative_to(folder.resolve()):
            raise PipelineError(f"modules.json points outside the model folder ({path}); refused", modules_path)
    _refuse_code(folder)
    weights = [p.name for p in folder.rglob("*") if p.suffix in _PICKLES]
    if not any(folder.rglob("*.safetensors")):
        pickled = f" (it has {', '.join(sorted(weights))}, pickles that could run code)" if weights else ""
        raise PipelineError(f"no safetensors weights in the model folder{pickled}; a teacher loads from "
                            "safetensors only", folder)


def _refuse_code(folder: Path) -> None:
    """Refuse a folder that brings its own code (Python files, or a configuration naming classes to import from
    it: ``auto_map``), which loading with ``trust_remote_code`` off would refuse deep inside transformers."""
    code = sorted(str(p.relative_to(folder)) for p in folder.rglob("*.py"))
    if code:
        raise PipelineError(f"the model folder brings its own code ({code[0]}); a teacher runs "
                            "sentence-transformers' own modules only, never remote code", folder)
    for name in [*_CODE_SETTINGS, *(str(p.relative_to(folder)) for p in folder.glob("*/config.json"))]:
        path = folder / name
        if not path.is_file():
            continue
        try:
            settings = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as error:
            raise PipelineError(f"not readable JSON ({first_line(error, 80)})", path) from error
        if isinstance(settings, dict) and ("auto_map" in settings or settings.get("trust_remote_code")):
            raise PipelineError("asks for remote code (auto_map / trust_remote_code); a teacher runs "
                                "sentence-transformers' own modules only", path)


def folder_identity(folder: Path) -> str:
    """A digest of the files that decide the model's vectors: its configuration, tokenizer and weights."""
    digest = hashlib.sha256()
    files = [name for name in _IDENTITY_FILES if (folder / name).is_file()]
    files += sorted(str(p.relative_to(folder)) for p in folder.rglob("*.safetensors"))
    for name in files:
        digest.update(name.encode() + b"\0")
        with open(folder / name, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def teacher_folder(spec: str | Path) -> Path:
    """The checked model folder of ``spec``: a local folder, or a hub name's snapshot (downloaded now unless
    cached), without importing sentence-transformers (checked to be installed, though).

    A path that exists, or that looks like one (``./x``, ``../x``, ``/x``, ``~/x``), is a folder; anything else a
    hub name. Raises ``TeacherUnavailable`` when it cannot be had here, ``PipelineError`` when it is refused.
    """
    check_installed()
    text = str(spec)
    folder = Path(text).expanduser()
    if folder.exists() or text.startswith((".", "/", "~")):
        if not folder.exists():
            raise TeacherUnavailable("no such teacher model folder", folder)
        if not folder.is_dir():
            raise PipelineError("not a folder; a teacher is a sentence-transformers model folder or a hub name",
                                folder)
        _check_folder(folder)
        return folder
    return _hub_folder(text)


def load_teacher(spec: str | Path, device: str = "cpu", batch_size: int = BATCH_SIZE) -> Teacher:
    """A teacher from a local folder (offline), or a hub name (``sentence-transformers/all-MiniLM-L6-v2``,
    downloaded to the hub's cache once, then read offline with ``HF_HUB_OFFLINE=1``); see ``teacher_folder``."""
    text = str(spec)
    where = teacher_folder(text)
    st = import_sentence_transformers()
    from transformers.utils import logging as transformers_logging

    # a second's loading bar and transformers' notes would bury the command's own lines (and its one-line errors)
    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    try:
        model = st.SentenceTransformer(str(where), device=device, trust_remote_code=False, local_files_only=True,
                                       model_kwargs={"use_safetensors": True})
    except Exception as error:  # noqa: BLE001 - transformers raises many types for a damaged folder
        raise PipelineError(f"cannot load as a sentence-transformers model ({type(error).__name__}: "
                            f"{first_line(error, 120)})", where) from error
    return Teacher(model, text, folder_identity(where), batch_size)


def _hub_folder(name: str) -> Path:
    """The local snapshot of hub model ``name`` (downloaded now unless cached), checked as a folder is."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HFValidationError
    except ImportError as error:  # comes with sentence-transformers
        raise PipelineError(f"huggingface_hub is missing; {INSTALL_HINT}", name) from error
    try:
        folder = Path(snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "*.txt", "*/*.json"]))
    except HFValidationError as error:
        raise TeacherUnavailable("neither a model folder nor a hub model name", name) from error
    except Exception as error:  # noqa: BLE001 - offline, unknown repository, network errors
        raise TeacherUnavailable(f"cannot fetch the teacher from the Hugging Face hub ({type(error).__name__}: "
                            f"{first_line(error, 100)}); give a local model folder instead", name) from error
    _check_folder(folder)
    return folder
