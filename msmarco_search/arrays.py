"""Variable-length token sequences as two flat arrays: int32 ids and int64 offsets (nanoGPT-style).

Sequence ``i`` is ``ids[offsets[i]:offsets[i + 1]]``. Arrays are saved as ``.npy`` and memory-mapped on load,
so a training run reads only the batches it touches. Batches are gathered with vectorised numpy, no loop
over tokens: the flat ids plus per-sequence offsets feed ``nn.EmbeddingBag`` directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .checkpoints import atomic_write
from .errors import PipelineError


@dataclass
class TokenArrays:
    ids: np.ndarray  # int32, all sequences back to back
    offsets: np.ndarray  # int64, len(self) + 1 entries, offsets[0] == 0

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def gather(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Flat ids and start offsets of the sequences at ``indices`` (EmbeddingBag's input format)."""
        indices = np.asarray(indices, dtype=np.int64)
        starts = self.offsets[indices]
        lengths = self.offsets[indices + 1] - starts
        bag_offsets = np.zeros(len(indices), dtype=np.int64)
        np.cumsum(lengths[:-1], out=bag_offsets[1:])
        total = int(lengths.sum())
        # position of each output token in the flat array: its sequence's start plus its rank inside it
        positions = np.arange(total, dtype=np.int64) + np.repeat(starts - bag_offsets, lengths)
        return np.asarray(self.ids[positions], dtype=np.int64), bag_offsets

    def save(self, directory: str | Path, name: str) -> None:
        directory = Path(directory)
        atomic_write(directory / f"{name}.ids.npy", lambda tmp: _save_npy(tmp, self.ids))
        atomic_write(directory / f"{name}.offsets.npy", lambda tmp: _save_npy(tmp, self.offsets))

    @classmethod
    def load(cls, directory: str | Path, name: str, mmap: bool = True, vocab_size: int | None = None
             ) -> TokenArrays:
        """Load and validate; with ``vocab_size``, also check every id is a row of the embedding table.

        A cache that passes is safe to index with: offsets start at 0, never decrease and end at ``len(ids)``.
        """
        directory = Path(directory)
        ids = _load_npy(directory / f"{name}.ids.npy", mmap)
        offsets = _load_npy(directory / f"{name}.offsets.npy", mmap)
        where = directory / name
        if (ids.dtype != np.int32 or offsets.dtype != np.int64 or ids.ndim != 1 or offsets.ndim != 1
                or len(offsets) == 0):
            raise PipelineError("token arrays have the wrong type or shape", where)
        if int(offsets[0]) != 0 or int(offsets[-1]) != len(ids):
            raise PipelineError("token arrays do not match their offsets (truncated?)", where)
        if len(offsets) > 1 and bool((np.diff(offsets) < 0).any()):
            raise PipelineError("token array offsets decrease (corrupt)", where)
        if vocab_size is not None and len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
            raise PipelineError(f"token ids fall outside the vocabulary of {vocab_size} words (corrupt, or made "
                                "with another vocabulary)", where)
        return cls(ids, offsets)


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as handle:
        np.save(handle, array, allow_pickle=False)


def _load_npy(path: Path, mmap: bool) -> np.ndarray:
    if not path.is_file():
        raise PipelineError("file not found", path)
    try:
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except Exception as error:  # noqa: BLE001 - a damaged header fails in numpy's parser in many ways
        text = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise PipelineError(f"not a readable .npy array ({text})", path) from error
    if not isinstance(array, np.ndarray):  # allow_pickle=False already refuses object arrays; be explicit
        raise PipelineError("not a .npy array", path)
    return array
