"""A teacher: a sentence-transformers bi-encoder whose judgments train the two-tower (never searched with).

The two-tower learns from the teacher's vectors of queries and passages (``distill.py``: its in-batch scores, and
the positives and hard negatives of its ranking); the model that is indexed and searched stays static. Loading is
offline from a folder, or by hub name where the hub can be reached, and never runs code from the model: only
sentence-transformers' own module types are accepted (``modules.json``), weights load from safetensors only, and
``trust_remote_code`` stays off.

Encoding costs minutes on a CPU (tens of passages a second on 2 cores), so vectors are cached under the data
folder (``TeacherCache``): one file per teacher, keyed by the digest of its files, holding a vector per text keyed
by the text's digest. A second run encodes only the texts the cache lacks. Texts are encoded longest first in
batches of similar length (padding is wasted work), on every core, with a progress bar.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import PipelineError, first_line
from .fileio import atomic_write
from .report import info, progress
from .text import repair
from .triplets import TeacherLabels, Triplets

HUB_TEACHER = "sentence-transformers/all-MiniLM-L6-v2"
# the files of a sentence-transformers folder that decide its vectors: their bytes are the teacher's identity
_IDENTITY_FILES = ("modules.json", "config.json", "config_sentence_transformers.json", "sentence_bert_config.json",
                   "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                   "1_Pooling/config.json", "2_Normalize/config.json")
_MODULE_PREFIX = "sentence_transformers."
CACHE_KIND = "teacher-vectors"
CACHE_FORMAT_VERSION = 1
INSTALL_HINT = "install the teacher's extra: uv sync --extra st (or pip install 'msmarco-search[st]')"


def text_digest(text: str) -> bytes:
    """The 16-byte key of a text in the cache (of the text as given: the teacher reads it repaired)."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


class Teacher:
    """A loaded sentence-transformers model: ``encode(texts)`` gives float32, L2-normalised rows (``dim`` wide).

    ``identity`` names the model by the digest of its files, so a cache or a triplets file made with another
    teacher (or another revision of this one) is told apart.
    """

    def __init__(self, model: Any, name: str, identity: str, batch_size: int = 64):
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


def import_sentence_transformers() -> Any:
    """The ``sentence_transformers`` package, or a one-line error that says how to install it (an optional extra)."""
    try:
        import sentence_transformers
    except ImportError as error:
        raise PipelineError(f"not installed ({first_line(error, 80)}); {INSTALL_HINT}",
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
    weights = [p.name for p in folder.rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt")]
    if not any(folder.rglob("*.safetensors")):
        pickled = f" (it has {', '.join(sorted(weights))}, pickles that could run code)" if weights else ""
        raise PipelineError(f"no safetensors weights in the model folder{pickled}; a teacher loads from "
                            "safetensors only", folder)


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


def load_teacher(spec: str | Path, device: str = "cpu", batch_size: int = 64) -> Teacher:
    """A teacher from a local folder (offline), or a hub name (``sentence-transformers/all-MiniLM-L6-v2``).

    A path that exists, or that looks like one (``./x``, ``../x``, ``/x``), is a folder; anything else a hub name,
    downloaded to the hub's cache once (then read offline with ``HF_HUB_OFFLINE=1``).
    """
    st = import_sentence_transformers()
    text = str(spec)
    folder = Path(text).expanduser()
    if folder.exists() or text.startswith((".", "/", "~")):
        if not folder.is_dir():
            raise PipelineError("no such teacher model folder", folder)
        _check_folder(folder)
        where = folder
    else:
        where = _hub_folder(text)
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
        raise PipelineError("neither a model folder nor a hub model name", name) from error
    except Exception as error:  # noqa: BLE001 - offline, unknown repository, network errors
        raise PipelineError(f"cannot fetch the teacher from the Hugging Face hub ({type(error).__name__}: "
                            f"{first_line(error, 100)}); give a local model folder instead", name) from error
    _check_folder(folder)
    return folder


class TeacherCache:
    """The teacher's vectors of texts, kept under ``data_dir`` in one ``.npz`` a teacher (``teacher_vectors_<id>``):
    ``keys`` (the texts' 16-byte digests), ``vectors`` (float16 rows: cosines to 1e-3, half the bytes) and a
    header naming the teacher and its dimension, checked on every load."""

    def __init__(self, teacher: Teacher, data_dir: str | Path):
        self.teacher = teacher
        self.path = Path(data_dir) / f"teacher_vectors_{teacher.identity}.npz"

    def _load(self) -> tuple[np.ndarray, np.ndarray]:
        empty = (np.zeros(0, dtype="V16"), np.zeros((0, self.teacher.dim), dtype=np.float16))
        if not self.path.is_file():
            return empty
        try:
            with np.load(self.path, allow_pickle=False) as data:
                header = json.loads(str(data["header"]))
                keys, vectors = data["keys"], data["vectors"]
        except Exception as error:  # noqa: BLE001 - a damaged zip or array fails in numpy in many ways
            raise PipelineError(f"not a readable teacher cache ({first_line(error, 80)}); delete it to encode "
                                "again", self.path) from error
        if not isinstance(header, dict) or header.get("kind") != CACHE_KIND:
            raise PipelineError("not a teacher cache", self.path)
        if header.get("teacher") != self.teacher.identity:
            raise PipelineError(f"a cache of another teacher ({header.get('teacher')}, this one is "
                                f"{self.teacher.identity}); delete it or use another --data-dir", self.path)
        if header.get("dim") != self.teacher.dim or vectors.shape[1:] != (self.teacher.dim,):
            raise PipelineError(f"holds {vectors.shape[1:]} vectors, the teacher gives {self.teacher.dim} "
                                "dimensions; delete it or use another --data-dir", self.path)
        if keys.dtype != np.dtype("V16") or vectors.dtype != np.float16 or len(keys) != len(vectors):
            raise PipelineError("teacher cache is damaged (its keys and vectors do not match); delete it",
                                self.path)
        return keys, vectors

    def vectors(self, texts: Sequence[str], desc: str = "Teacher encoding") -> np.ndarray:
        """float32 rows of ``texts`` in order: read from the cache, encoding (and caching) only what it lacks."""
        keys, stored = self._load()
        row_of = {key.tobytes(): row for row, key in enumerate(keys)}
        wanted = [text_digest(text) for text in texts]
        missing = list({key: text for key, text in zip(wanted, texts, strict=True) if key not in row_of}.items())
        if missing:
            info(f"The teacher encodes {len(missing):,} texts ({len(texts) - sum(k not in row_of for k in wanted):,} "
                 f"of {len(texts):,} from its cache {self.path.name})")
            fresh = self.teacher.encode([text for _, text in missing], desc=desc).astype(np.float16)
            row_of.update({key: len(keys) + i for i, (key, _) in enumerate(missing)})
            new_keys = np.frombuffer(b"".join(key for key, _ in missing), dtype="V16")
            keys, stored = np.concatenate([keys, new_keys]), np.concatenate([stored, fresh])
            self._save(keys, stored)
        return stored[[row_of[key] for key in wanted]].astype(np.float32)

    def _save(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        header = json.dumps({"kind": CACHE_KIND, "format_version": CACHE_FORMAT_VERSION,
                             "teacher": self.teacher.identity, "name": self.teacher.name, "dim": self.teacher.dim})

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as handle:
                np.savez(handle, header=np.array(header), keys=keys, vectors=vectors)

        atomic_write(self.path, write)


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
