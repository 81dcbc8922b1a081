"""Stage 1: CBOW word vectors with gensim, and the embeddings file the two towers start from.

The tokenised corpus is written once to ``data/cbow_corpus_<key>.txt`` (one text per line, tokens separated
by spaces: gensim's ``LineSentence`` format) and gensim trains from that file with ``corpus_file=``, which
scales over all cores without the Python iterator bottleneck. The key covers the source, the sample limit
and the tokeniser, so a cache is reused exactly when those match.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import PipelineError, first_line, short
from .fileio import (
    KIND_EMBEDDINGS,
    OutputKind,
    atomic_write,
    cache_key,
    cached_record,
    check_own_vocabulary,
    claim,
    claim_marker,
    leading_strings,
    load_json,
    load_side_record,
    load_third_party_pickle,
    load_torch,
    marker_holder,
    recognise_json,
    recognise_tagged,
    release,
    save_cache_record,
    save_side_record,
    save_torch,
)
from .report import info, progress, warn
from .sources import Source
from .text import STEMMERS, TOKENIZER_VERSION
from .vocab import PAD_ID, UNK_ID, Vocabulary, read_stemmer, vocabulary_fingerprint

EMBEDDINGS_FILENAME = "msmarco_word2vec.pt"
GENSIM_FILENAME = "msmarco_word2vec.gensim"


@dataclass
class CbowSettings:
    vector_size: int = 300
    window: int = 5
    min_count: int = 5
    epochs: int = 5
    workers: int = 0  # 0: all CPU cores
    negative: int = 5
    sample: float = 1e-3
    seed: int = 42

    def resolved_workers(self) -> int:
        return self.workers or multiprocessing.cpu_count()


def corpus_cache_path(source: Source, data_dir: str | Path, max_samples: int | None, stemmer: str = "none") -> Path:
    key = cache_key(source.identity(), max_samples, TOKENIZER_VERSION, stemmer)
    return Path(data_dir) / f"cbow_corpus_{key}.txt"


def _cached_corpus_count(path: Path) -> int | None:
    """The text count of a cached corpus, or None when the cache is absent or does not match its record.

    The record (written after the corpus) holds the corpus's size: a corpus edited, cut short or replaced
    since is rebuilt, not trained on.
    """
    record = cached_record(path)
    count = None if record is None else record.get("texts")
    return count if isinstance(count, int) and count > 0 else None


def prepare_corpus(source: Source, data_dir: str | Path, max_samples: int | None, stemmer: str = "none"
                   ) -> tuple[Path, int]:
    """The tokenised corpus file for ``source`` (built once, then reused) and its number of texts; with a
    ``stemmer``, its words are stems (``Vocabulary.tokens``), and so are the vectors' words."""
    path = corpus_cache_path(source, data_dir, max_samples, stemmer)
    words = Vocabulary.from_words([], stemmer).tokens
    cached = _cached_corpus_count(path)
    if cached is not None:
        info(f"📦 Loading cached processed texts from {path}...")
        info(f"✅ Loaded {cached:,} cached text documents")
        return path, cached
    if path.exists():
        warn(f"{path}: cached corpus does not match its record (damaged or from an older version); rebuilding it")

    count = 0

    def write(tmp: Path) -> None:
        nonlocal count
        with open(tmp, "w", encoding="utf-8") as out:
            for text in progress(source.corpus_texts(max_samples), desc="Tokenising corpus", unit="text"):
                tokens = words(text)
                if tokens:
                    out.write(" ".join(tokens))
                    out.write("\n")
                    count += 1

    atomic_write(path, write)
    if count == 0:
        path.unlink(missing_ok=True)
        raise PipelineError(f"no text with any word was read from {source.description}")
    save_cache_record(path, texts=count, source=source.description, max_samples=max_samples,
                      tokenizer=TOKENIZER_VERSION, stemmer=stemmer)
    info(f"✅ Processed and cached {count:,} text documents in {path}")
    return path, count


def recognise_gensim_model(path: Path) -> str | None:
    """``fileio.OutputKind`` recogniser of a saved gensim ``Word2Vec`` (its pickle names the class first; read
    opcode by opcode, nothing is built)."""
    return None if leading_strings(path) == ["gensim.models.word2vec", "Word2Vec"] else "it is not a gensim Word2Vec"


EMBEDDINGS_OUTPUT = OutputKind("CBOW embeddings file", recognise_tagged(KIND_EMBEDDINGS))
GENSIM_OUTPUT = OutputKind("gensim model", recognise_gensim_model)
GENSIM_RECORD_OUTPUT = OutputKind("gensim model record", recognise_json("kind", "stemmer"))


def cbow_outputs(directory: Path, save_gensim: bool) -> dict[Path, OutputKind]:
    """The files a CBOW run writes into ``directory``, each with its kind (``fileio.check_output``)."""
    outputs = {directory / EMBEDDINGS_FILENAME: EMBEDDINGS_OUTPUT}
    if save_gensim:
        outputs |= {directory / GENSIM_FILENAME: GENSIM_OUTPUT,
                    _gensim_record(directory / GENSIM_FILENAME): GENSIM_RECORD_OUTPUT}
    return outputs


@contextmanager
def claim_output_folder(directory: str | Path) -> Iterator[Path]:
    """Hold the CBOW outputs of ``directory`` (its fixed-name files) for one run; refuse a second run meanwhile.

    The files have fixed names (the next stage looks for ``msmarco_word2vec.pt``), so two runs into one folder
    would both print "Saved" and one result would be lost. The claim is ``fileio.claim`` on the embeddings
    file (a locked ``.msmarco_word2vec.pt.claim``): the lock goes with its process however it ends, so the
    marker of a run killed with SIGKILL never blocks a later run, which takes it over.
    """
    directory = Path(directory)
    target = directory / EMBEDDINGS_FILENAME
    if not claim(target):
        raise PipelineError(f"another CBOW run (process {marker_holder(claim_marker(target))}) is writing its files "
                            "into this folder; wait for it to finish or pass another -c/--checkpoint-dir", directory)
    try:
        yield directory
    finally:
        release(target)


def train_cbow(corpus_file: Path, settings: CbowSettings, resume_from: Path | None = None,
               model: Any | None = None) -> tuple[Any, float]:
    """Train (or continue training) gensim ``Word2Vec`` with ``sg=0`` on a LineSentence file.

    To continue, pass ``model`` (from ``load_gensim_model``, loaded before the corpus is built so that a bad
    model fails at once) or ``resume_from``, its path.
    """
    from gensim.models import Word2Vec

    start = time.perf_counter()
    if model is None and resume_from is not None:
        model = load_gensim_model(resume_from)
    if model is not None:
        model.build_vocab(corpus_file=str(corpus_file), update=True)
    else:
        # built in two steps (what the one-call constructor does inside) so that an empty vocabulary is a
        # clear error here, not gensim's "you must first build vocabulary" from inside train()
        model = Word2Vec(
            sg=0, vector_size=settings.vector_size, window=settings.window, min_count=settings.min_count,
            workers=settings.resolved_workers(), epochs=settings.epochs, negative=settings.negative,
            sample=settings.sample, seed=settings.seed,
        )
        model.build_vocab(corpus_file=str(corpus_file))
    if len(model.wv) == 0:
        raise PipelineError(f"no word occurs at least min_count={settings.min_count} times; lower --min-count",
                            corpus_file)
    model.train(corpus_file=str(corpus_file), total_examples=model.corpus_count,
                total_words=model.corpus_total_words, epochs=settings.epochs)
    return model, time.perf_counter() - start


def save_gensim_model(model: Any, path: str | Path, stemmer: str = "none") -> Path:
    """The full gensim model as one pickle, for ``--resume-from``, written atomically, and beside it
    ``NAME.json`` with the stemmer its words were made with (gensim's own file has no place for it).

    One file: gensim would otherwise put arrays above 10M elements (any real MS MARCO vocabulary at 300-d)
    into side files named after the temporary file, which the rename into place does not carry along, so
    the saved model could not be loaded.
    """
    path = atomic_write(path, lambda tmp: model.save(str(tmp), separately=[], sep_limit=2**62))
    # the record after the model, naming it: a run killed between the two leaves the new model beside an old
    # record, which then no longer describes it (``fileio.load_side_record``) and is not trusted
    save_side_record({"kind": "cbow-gensim-model", "stemmer": stemmer}, _gensim_record(path), path)
    return path


def _gensim_record(path: Path) -> Path:
    return path.with_name(f"{path.name}.json")


def check_resumed_stemmer(path: str | Path, stemmer: str) -> None:
    """Refuse to continue a gensim model on text stemmed otherwise than the text it was trained on: its words
    and the new ones would mix in one vocabulary that says it is one or the other."""
    record_path = _gensim_record(Path(path))
    if not record_path.is_file():  # saved before the record existed, or copied without it
        warn(f"{path}: no {record_path.name} beside it to say which --stemmer it was trained with (saved before "
             f"the record existed, or copied without it); taking it as {stemmer}: give the stemmer it was trained with")
        return
    record = load_json(record_path)
    saved = record.get("stemmer") if isinstance(record, dict) else None
    if saved not in STEMMERS:
        raise PipelineError(f"names no known stemmer ({short(saved)}); save the model again", record_path)
    if load_side_record(record_path, path)[0] is None:  # the record of another model (this one replaced since)
        warn(f"{record_path}: does not describe {Path(path).name} as it is now (the model was replaced after the "
             f"record was written), so it cannot say which --stemmer the model was trained with; taking it as "
             f"{stemmer}: give the stemmer it was trained with")
        return
    if saved != stemmer:
        raise PipelineError(f"this model was trained with --stemmer {saved}; continue it with --stemmer {saved}, "
                            f"not {stemmer}", path)


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


def embeddings_from_gensim(model: Any, stemmer: str = "none") -> tuple[torch.Tensor, Vocabulary]:
    """The embedding matrix with ``<pad>`` (zeros) at 0 and ``<unk>`` (the mean vector) at 1; ``stemmer``: the
    one the corpus was stemmed with (the vocabulary then stems the text it encodes)."""
    vectors = np.asarray(model.wv.vectors, dtype=np.float32)
    matrix = np.zeros((len(vectors) + 2, vectors.shape[1]), dtype=np.float32)
    matrix[UNK_ID] = vectors.mean(axis=0)
    matrix[2:] = vectors
    matrix[PAD_ID] = 0.0
    return torch.from_numpy(matrix), Vocabulary.from_words(model.wv.index_to_key, stemmer)


def save_embeddings(path: Path, matrix: torch.Tensor, vocab: Vocabulary, metadata: dict[str, Any]) -> Path:
    return save_torch(
        {"embeddings": matrix, "word_to_index": vocab.word_to_index, "index_to_word": vocab.index_to_word,
         "stemmer": vocab.stemmer, "vocabulary_fingerprint": vocabulary_fingerprint(vocab), "metadata": metadata},
        path, KIND_EMBEDDINGS,
    )


def load_embeddings(path: str | Path) -> tuple[torch.Tensor, Vocabulary, dict[str, Any]]:
    data = load_torch(path, KIND_EMBEDDINGS)
    matrix = data.get("embeddings")
    words = data.get("index_to_word")
    if not isinstance(matrix, torch.Tensor) or matrix.ndim != 2 or not isinstance(words, list):
        raise PipelineError("embeddings file lacks its matrix or vocabulary", path)
    if matrix.shape[1] == 0 or matrix.is_complex() or matrix.dtype == torch.bool:
        raise PipelineError(f"embedding matrix is not a matrix of real word vectors ({matrix.dtype}, "
                            f"shape {tuple(matrix.shape)})", path)
    metadata = data.get("metadata", {})
    if not isinstance(metadata, dict):
        raise PipelineError(f"embeddings file's metadata is a {type(metadata).__name__}, not a dict", path)
    if matrix.shape[0] != len(words):
        raise PipelineError(f"embedding matrix has {matrix.shape[0]} rows but the vocabulary {len(words)} words",
                            path)
    if not all(isinstance(word, str) for word in words):
        raise PipelineError("embeddings vocabulary holds something other than words", path)
    try:
        vocab = Vocabulary(words, read_stemmer(data))
    except (ValueError, TypeError) as error:
        raise PipelineError(str(error), path) from error
    if "vocabulary_fingerprint" in data:  # files from before the fingerprint have none to check
        check_own_vocabulary(data["vocabulary_fingerprint"], vocabulary_fingerprint(vocab), path)
    if not bool(torch.isfinite(matrix).all()):
        raise PipelineError("embedding matrix holds NaN or infinite values", path)
    return matrix.float(), vocab, metadata
