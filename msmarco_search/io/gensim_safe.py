"""Loading a saved gensim ``Word2Vec`` model without running code from it.

gensim models are pickles, and gensim's own loader would run any code a hostile file carries; here the main
pickle goes through an allow-list of harmless globals, side arrays load with ``allow_pickle=False``, and the
model is checked to be one gensim's unchecked C training loop can index safely (``load_gensim_model``).
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from msmarco_search.core.errors import PipelineError, first_line, short
from msmarco_search.io.safe_load import (
    RefusedGlobal,
    existing_file,
)


class _AllowListUnpickler(pickle.Unpickler):
    """Resolves only the named globals; classes in ``bare`` come back as instances built without ``__init__``."""

    def __init__(self, file: Any, allowed: frozenset[tuple[str, str]], bare: dict[tuple[str, str], type]):
        super().__init__(file, encoding="latin1")  # latin1: how numpy arrays from Python 2 era pickles decode
        self._allowed, self._bare = allowed, bare

    def find_class(self, module: str, name: str):  # noqa: D401 - pickle's hook
        if (module, name) in self._bare:
            return _bare_instance_factory(self._bare[(module, name)])
        if (module, name) in self._allowed:
            return super().find_class(module, name)
        raise RefusedGlobal(module, name)


def _bare_instance_factory(cls: type) -> type:
    class Bare:
        # Called for NEWOBJ (cls.__new__(cls)) and for REDUCE (cls(*args)) alike: either way the result is
        # an empty instance whose state the pickle then sets, so a pickle cannot run the constructor (which
        # for a gensim model trains on any file it names).
        def __new__(factory, *args: Any, **kwargs: Any):
            return object.__new__(cls)

    Bare.__name__ = Bare.__qualname__ = f"Bare{cls.__name__}"
    return Bare


def load_third_party_pickle(path: str | Path, allowed: frozenset[tuple[str, str]],
                            bare: dict[tuple[str, str], type], what: str) -> Any:
    """Unpickle another library's file (a gensim model) resolving only an allow-list of harmless globals.

    Like ``torch.load(weights_only=True)``: data types and plain constructors pass, anything else
    (``os.system``, ``builtins.eval``, ...) is refused before it can run.
    """
    path = existing_file(path)
    try:
        with open(path, "rb") as handle:
            return _AllowListUnpickler(io.BufferedReader(handle), allowed, bare).load()
    except RefusedGlobal as error:
        raise PipelineError(f"unsafe {what} refused: it names {error}, which could run code", path) from error
    except OSError as error:
        raise PipelineError(f"cannot read ({error.strerror or error})", path) from error
    except Exception as error:  # noqa: BLE001 - damaged pickles raise many types; all mean "cannot load"
        raise PipelineError(f"not a readable {what} ({type(error).__name__}: {first_line(error, 80)})",
                            path) from error


GENSIM_FILENAME = "msmarco_word2vec.gensim"


def load_gensim_model(path: str | Path) -> Any:
    """A full gensim model saved by an earlier run (``--save-gensim-model``), for continued training.

    gensim models are pickles, and ``Word2Vec.load`` would run any code a hostile file carries, in the main
    file or in a side file: it follows ``__recursive_saveloads`` into any sub-object and reads each one's
    ``__scipys`` side files with a plain ``pickle.load``. So gensim's loader never opens a file here. The main
    pickle goes through an allow-list of harmless globals; then ``_attach_side_arrays`` walks the same
    bookkeeping lists gensim would (``__recursive_saveloads``, ``__numpys``, ``__scipys``, ``__ignoreds``),
    reads ``.npy``/``.npz`` side files with ``np.load(allow_pickle=False)`` and refuses pickled side files
    unopened. Last, the model is checked to be one gensim's unchecked C training loop can index safely.
    """
    from gensim.models.word2vec import Word2Vec

    path = Path(path)
    compress, _ = Word2Vec._adapt_by_suffix(str(path))
    model = _load_main_pickle(path, compress)
    _attach_side_arrays(model, str(path), compress, path, set())
    if not isinstance(model.__dict__.get("wv"), _gensim_classes()[1]):  # a side list may have replaced it
        raise PipelineError("gensim model has no word vectors (its wv was replaced or dropped)", path)
    try:
        # with every side-file list now empty, gensim's own pass only runs its upgrades of older models
        # (a cumulative table rebuilt, defaults for attributes added since): no file is opened
        model._load_specials(str(path), None, compress, lambda *parts: ".".join(parts))
        model.add_lifecycle_event("loaded", fname=str(path))
    except Exception as error:  # noqa: BLE001 - gensim fails in many ways on a model of the wrong shape
        raise PipelineError(f"gensim model is incomplete or inconsistent ({first_line(error, 120)})",
                            path) from error
    _check_trainable(model, path)
    return model


# Every global a gensim 4 Word2Vec pickle names (numpy arrays, its random generator, a defaultdict of
# ints): data types and constructors that run no code of the file's choosing.
_GENSIM_GLOBALS = frozenset({
    ("builtins", "int"), ("builtins", "hash"), ("collections", "defaultdict"), ("gensim.utils", "call_on_class_only"),
    ("numpy", "dtype"), ("numpy", "ndarray"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.multiarray", "scalar"), ("numpy.random._pickle", "__bit_generator_ctor"),
    ("numpy.random._pickle", "__randomstate_ctor"), ("numpy.random._pickle", "__generator_ctor"),
    ("numpy.random._mt19937", "MT19937"), ("numpy.random._pcg64", "PCG64"),
})

# gensim's bookkeeping lists, in the order its _load_specials handles them
_SIDE_LISTS = ("__recursive_saveloads", "__numpys", "__scipys", "__ignoreds")


def _gensim_classes() -> tuple[type, type]:
    from gensim.models.keyedvectors import KeyedVectors
    from gensim.models.word2vec import Word2Vec

    return Word2Vec, KeyedVectors


def _load_main_pickle(path: Path, compress: bool) -> Any:
    """The model object from its main pickle (``.gz``/``.bz2`` names decompressed first, as gensim does)."""
    word2vec, keyed_vectors = _gensim_classes()
    bare = {("gensim.models.word2vec", "Word2Vec"): word2vec,
            ("gensim.models.keyedvectors", "KeyedVectors"): keyed_vectors}
    if not compress:
        if _starts_with(path, b"PK\x03\x04"):  # the usual mix-up: the .pt written beside the .gensim file
            raise PipelineError(f"this is a torch .pt file, not a gensim model; pass the {GENSIM_FILENAME} file "
                                "that --save-gensim-model wrote", path)
        model = load_third_party_pickle(path, _GENSIM_GLOBALS, bare, "gensim Word2Vec model")
    else:
        import bz2
        import gzip
        import shutil
        import tempfile
        import zlib

        opener = gzip.open if path.name.endswith(".gz") else bz2.open
        with tempfile.TemporaryDirectory(prefix="msmarco-gensim-") as folder:
            plain = Path(folder) / "model.pickle"
            try:
                with opener(path, "rb") as packed, open(plain, "wb") as out:
                    shutil.copyfileobj(packed, out)
            except FileNotFoundError as error:
                raise PipelineError("file not found", path) from error
            except (OSError, EOFError, ValueError, zlib.error) as error:  # what gzip/bz2 raise on damaged data
                raise PipelineError(f"not a readable compressed gensim model ({first_line(error, 80)})",
                                    path) from error
            try:
                model = load_third_party_pickle(plain, _GENSIM_GLOBALS, bare, "gensim Word2Vec model")
            except PipelineError as error:  # name the user's file, not the temporary copy
                raise PipelineError(str(error).removeprefix(f"{plain}: "), path) from error
    if not isinstance(model, word2vec) or not isinstance(getattr(model, "wv", None), keyed_vectors):
        raise PipelineError(f"not a gensim Word2Vec model (it holds a {type(model).__name__})", path)
    return model


def _starts_with(path: Path, magic: bytes) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(len(magic)) == magic
    except OSError:
        return False  # the loader that follows names the problem


def _side_list(part: Any, name: str, path: Path) -> list[str]:
    names = part.__dict__.get(name, [])
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) and n.isidentifier() for n in names):
        # a name like "../../x" would make gensim read a file outside the model's folder
        raise PipelineError(f"gensim model's {name} is not a list of attribute names ({short(names)})", path)
    return list(names)


def _attach_side_arrays(part: Any, fname: str, compress: bool, path: Path, seen: set[int]) -> None:
    """What gensim's ``SaveLoad._load_specials`` does for ``part`` and its sub-objects, opening no pickle.

    ``fname`` is the name gensim derives side files from (``<model>.<attr>...``); ``path`` the file the user
    named, for messages. Each list is emptied once handled, so gensim's pass afterwards opens nothing.
    """
    word2vec, keyed_vectors = _gensim_classes()
    if id(part) in seen:
        raise PipelineError("gensim model's sub-objects refer to each other in a loop", path)
    seen.add(id(part))
    lists = {name: _side_list(part, name, path) for name in _SIDE_LISTS}
    if lists["__scipys"]:
        # gensim reads these with a plain pickle.load, which runs whatever code the file names; refused
        # without opening it (a Word2Vec model has no sparse matrices)
        files = ", ".join(f"{fname}.{name}.npy" for name in lists["__scipys"])
        raise PipelineError(f"the model keeps scipy matrices in pickled side files ({files}), which could run "
                            "code; refusing to load them", path)
    for name in lists["__recursive_saveloads"]:
        child = part.__dict__.get(name)
        if not isinstance(child, (word2vec, keyed_vectors)):
            raise PipelineError(f"gensim model's sub-object {name!r} is a {type(child).__name__}, not part of a "
                                "Word2Vec model", path)
        _attach_side_arrays(child, f"{fname}.{name}", compress, path, seen)
    for name in lists["__numpys"]:
        part.__dict__[name] = _load_side_array(Path(f"{fname}.{name}.{'npz' if compress else 'npy'}"), compress,
                                               path)
    for name in lists["__ignoreds"]:
        part.__dict__[name] = None
    for name in ("__numpys", "__scipys", "__ignoreds"):
        part.__dict__[name] = []


def _load_side_array(file: Path, compress: bool, path: Path) -> np.ndarray:
    """One ``.npy`` (or ``.npz`` with its array under ``val``) side file, refusing pickled objects."""
    try:
        loaded = np.load(file, mmap_mode=None, allow_pickle=False)
        if compress:
            with loaded:
                loaded = loaded["val"] if isinstance(loaded, np.lib.npyio.NpzFile) else None
    except FileNotFoundError as error:
        raise PipelineError(f"gensim model is incomplete: its side file {file.name} is missing", path) from error
    except ValueError as error:
        if "pickle" in str(error):  # numpy's "Cannot load file containing pickled data when allow_pickle=False"
            raise PipelineError(f"side file {file.name} holds pickled Python objects, which could run code; "
                                "refused", path) from error
        raise PipelineError(f"side file {file.name} is not a readable numpy array ({first_line(error, 80)})",
                            path) from error
    except (OSError, KeyError, EOFError) as error:  # a folder, a cut-short file, an .npz without 'val'
        raise PipelineError(f"side file {file.name} is not a readable numpy array ({first_line(error, 80)})",
                            path) from error
    if not isinstance(loaded, np.ndarray):
        raise PipelineError(f"side file {file.name} is not a single numpy array", path)
    return loaded


def _check_array(value: Any, name: str, shape: tuple[int, ...], dtype: Any, path: Path) -> None:
    if not isinstance(value, np.ndarray) or value.shape != shape or value.dtype != dtype:
        found = f"{value.dtype} {value.shape}" if isinstance(value, np.ndarray) else type(value).__name__
        raise PipelineError(f"gensim model's {name} should be a {np.dtype(dtype)} array of shape {shape}, "
                            f"it is {found}", path)


def _check_trainable(model: Any, path: Path) -> None:
    """Refuse a model gensim's C training loop would read out of bounds (a crash, or memory garbage).

    That loop indexes the vectors, output weights and per-word tables by word index with no checks, so
    every table must have a row per word and the dtypes the C code assumes.
    """
    words = getattr(model.wv, "index_to_key", None)
    if not isinstance(words, list) or not words or not all(isinstance(word, str) for word in words):
        raise PipelineError("gensim model has no list of words (index_to_key)", path)
    if getattr(model.wv, "key_to_index", None) != {word: index for index, word in enumerate(words)}:
        raise PipelineError("gensim model's key_to_index does not match its word list", path)
    _check_settings(model, path)
    _check_tables(model, len(words), path)


def _check_settings(model: Any, path: Path) -> None:
    for owner, name, low in ((model, "vector_size", 1), (model, "layer1_size", 1), (model, "window", 1),
                             (model, "negative", 0), (model, "hs", 0), (model, "sg", 0), (model, "epochs", 1),
                             (model, "cbow_mean", 0), (model.wv, "vector_size", 1)):
        value = getattr(owner, name, None)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise PipelineError(f"gensim model's {name} is {short(value)}, not a whole number >= {low}", path)
    if model.sg or model.hs or not model.negative:
        raise PipelineError("not a CBOW model with negative sampling (sg=0, hs=0, negative>0), the only kind "
                            "this script continues", path)
    if not (model.wv.vector_size == model.vector_size == model.layer1_size):
        raise PipelineError("gensim model's vector sizes disagree", path)
    for name in ("alpha", "min_alpha", "sample", "ns_exponent"):
        value = getattr(model, name, None)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value < 0:
            raise PipelineError(f"gensim model's {name} is {short(value)}, not a finite number >= 0", path)
    # training calls these: the pickle may only have set them to other allowed globals
    if getattr(model, "hashfxn", None) is not hash or not isinstance(getattr(model, "random", None),
                                                                      np.random.RandomState):
        raise PipelineError("gensim model's hash function or random generator is not gensim's", path)


def _check_tables(model: Any, count: int, path: Path) -> None:
    size = model.vector_size
    _check_array(getattr(model.wv, "vectors", None), "vectors", (count, size), np.float32, path)
    _check_array(getattr(model, "syn1neg", None), "syn1neg", (count, size), np.float32, path)
    lockf = getattr(model.wv, "vectors_lockf", None)
    _check_array(lockf, "vectors_lockf", (1,) if getattr(lockf, "shape", None) == (1,) else (count,), np.float32,
                 path)
    expandos = getattr(model.wv, "expandos", None)
    counts = expandos.get("count") if isinstance(expandos, dict) else None
    if not isinstance(counts, np.ndarray) or counts.shape != (count,) or counts.dtype.kind not in "iu":
        raise PipelineError("gensim model has no word count per word (expandos['count'])", path)
    _check_array(expandos.get("sample_int"), "sampling table (expandos['sample_int'])", (count,), np.uint32, path)
    if not (np.isfinite(model.wv.vectors).all() and np.isfinite(model.syn1neg).all()):
        raise PipelineError("gensim model's weights hold NaN or infinite values", path)
