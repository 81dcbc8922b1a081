"""The teacher's vectors of texts, cached under the data folder: one file per teacher, keyed by the digest of
its files, holding a vector per text keyed by the text's digest. A second run encodes only the texts the cache
lacks."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from msmarco_search.core.errors import PipelineError, first_line
from msmarco_search.core.report import info
from msmarco_search.io.atomic import atomic_write
from msmarco_search.teacher.model import Teacher, load_teacher

CACHE_KIND = "teacher-vectors"
CACHE_FORMAT_VERSION = 1


def text_digest(text: str) -> bytes:
    """The 16-byte key of a text in the cache (of the text as given: the teacher reads it repaired)."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


class TeacherCache:
    """The teacher's vectors of texts, kept under ``data_dir`` in one ``.npz`` a teacher (``teacher_vectors_<id>``):
    ``keys`` (the texts' 16-byte digests), ``vectors`` (float16 rows: cosines to 1e-3, half the bytes) and a
    header naming the teacher and its dimension, checked on every load."""

    def __init__(self, teacher: Teacher, data_dir: str | Path):
        self.teacher = teacher
        self.path = Path(data_dir) / f"teacher_vectors_{teacher.identity}.npz"
        self.encoded = 0  # distinct texts this cache object had the teacher encode, over all calls

    def check(self) -> None:
        """Read the file's header and arrays now (a cache of another teacher, of another dimension or damaged is a
        one-line error), before hours of other work."""
        self._load()

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
        if not np.isfinite(vectors).all():
            raise PipelineError("teacher cache is damaged (NaN or infinite values); delete it", self.path)
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
            self.encoded += len(missing)
        return stored[[row_of[key] for key in wanted]].astype(np.float32)

    def _save(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        header = json.dumps({"kind": CACHE_KIND, "format_version": CACHE_FORMAT_VERSION,
                             "teacher": self.teacher.identity, "name": self.teacher.name, "dim": self.teacher.dim})

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as handle:
                np.savez(handle, header=np.array(header), keys=keys, vectors=vectors)

        atomic_write(self.path, write)


def open_teacher_cache(spec: str | Path, data_dir: str | Path, device: str, batch_size: int) -> TeacherCache:
    """The teacher ``spec`` (a folder or hub name), loaded safely, with its cache under ``data_dir`` read and
    checked now: a refused model or a cache of another teacher costs seconds, before any other work."""
    cache = TeacherCache(load_teacher(spec, device=device, batch_size=batch_size), data_dir)
    cache.check()
    teacher = cache.teacher
    info(f"Teacher: {teacher.name} ({teacher.dim}-d, files {teacher.identity}); its vectors are cached in {cache.path}")
    return cache
