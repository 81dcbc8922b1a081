"""Quality levers on the DL 2021 split: the recipe trained with one change, seeds 42, 1 and 2, against a control.

Needs the quality script's levers step first; its WORK holds the CBOW vectors, the DL 2021 split (judged pairs of
27 queries train, the other 26 are evaluated over the DL 2021 pool) and the recipe's triplets. The rows in the docs
were measured against a control on 20-epoch CBOW vectors (the recipe then; 40 since, from the cbow-40 rows):

    CBOW_EPOCHS=20 WORK=/tmp/q6 SELF_TRAINING=0 bash benchmarks/quality_dl19.sh corpus levers
    uv run benchmarks/levers_dl21.py --work /tmp/q6 control             # first: every row is against it
    uv run benchmarks/levers_dl21.py --work /tmp/q6 distill-train-queries mlp-head ...
    uv run benchmarks/levers_dl21.py --work /tmp/q6 --list              # the levers, one line each

Every lever trains the recipe's way (shared towers, word weights starting at the IDF, in-batch softmax at scale
20, batch 1,024, one epoch, learning rates 1e-4 and 1e-2 for the word tables) through the library's ``Trainer``
on the recipe's triplets (no held-out slice, so the control is not the quality script's recipe row), then ranks
the DL 2021 pool for the 26 held-out queries with the two-tower and with ``two-tower-prf`` (depth 3, weight 2: the
library's retrievers). It prints each system's nDCG@10 and R@100, mean (min-max) over the seeds, and the paired
t-test over the queries of the seeds' mean against the control's. Per-query scores are kept in WORK/levers/, so
a lever already measured is only printed again. Results and their reading: docs/experiments.md, "Quality levers"
(the rows against control F).
"""

from __future__ import annotations

import argparse
import collections
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import ttest_rel
from torch import nn

from msmarco_search.core.text import tokenize
from msmarco_search.data.generation import keyword_query, word_idf
from msmarco_search.data.tokens import TokenBatch, TripletArrays, tokenise_triplets
from msmarco_search.data.triplets import Triplets, load_triplets, save_triplets
from msmarco_search.data.vocab import PAD_ID, Vocabulary
from msmarco_search.embeddings.cbow import load_embeddings, save_embeddings
from msmarco_search.evaluation.metrics import score_run_per_query
from msmarco_search.io.atomic import file_identity
from msmarco_search.io.msmarco_files import iter_tsv_lines, read_qrels
from msmarco_search.labels.mining import mine_negatives, teacher_label_triplets
from msmarco_search.labels.teacher_labels import label_triplets
from msmarco_search.search.dense import DenseRetriever, ModelRetriever, TeacherRetriever, TwoTowerRetriever
from msmarco_search.search.hybrid import FeedbackRetriever, HybridRetriever
from msmarco_search.search.retrieval import BM25Retriever, PassagePool, Retriever
from msmarco_search.teacher.cache import TeacherCache
from msmarco_search.teacher.model import load_teacher
from msmarco_search.training.losses import InBatchDistillationLoss, InBatchSoftmaxLoss
from msmarco_search.training.model import MeanPoolTower, TwoTowerModel, build_model
from msmarco_search.training.model_file import average_two_towers, save_two_tower
from msmarco_search.training.state import TrainSettings
from msmarco_search.training.trainer import Trainer

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TEACHER = DATA.parent / "models" / "all-MiniLM-L6-v2"
SEEDS = (42, 1, 2)
SYSTEMS = ("two-tower", "two-tower-prf")
MEASURES = ("nDCG@10", "R@100")  # msmarco_search.evaluation.metrics names: relevant at grade 2, as in the evaluation
SETTINGS = {"batch_size": 1024, "learning_rate": 1e-4, "embedding_learning_rate": 1e-2, "log_every": 1000}


# ------------------------------------------------------------------------------------------ the split and scores


@dataclass
class Split:
    """The quality script's WORK: its vectors, triplets and DL 2021 split, and where this script keeps its own."""

    work: Path
    out: Path = field(init=False)

    def __post_init__(self) -> None:
        self.out = self.work / "levers"

    @property
    def embeddings(self) -> Path:
        return self.work / "cbow" / "msmarco_word2vec.pt"

    @property
    def triplets(self) -> Path:
        return sorted((self.work / "triplets" / "lever-recipe").glob("msmarco_triplets_*.pkl"))[-1]

    def dev(self, name: str) -> Path:
        return self.work / "dl21-split" / "dev" / name


def read_tsv(path: Path) -> list[tuple[str, str]]:
    """(id, text) of each line, through the project's one TSV reader."""
    return [(key, text) for key, text in iter_tsv_lines(path, 2)]


def pools() -> list[Path]:
    return [DATA / "msmarco-trec-dl-2019" / "collection.tsv", DATA / "msmarco-v2-trec-dl-2021" / "collection.tsv"]


@dataclass
class HeldOut:
    """The DL 2021 pool and the split's held-out queries with their judgments, texts rewritten as a lever's."""

    pool: PassagePool
    queries: list[tuple[str, str]]
    qrels: dict

    @classmethod
    def read(cls, split: Split, rewrite: Callable[[str], str] = str) -> HeldOut:
        passages = read_tsv(DATA / "msmarco-v2-trec-dl-2021" / "collection.tsv")
        return cls(PassagePool([pid for pid, _ in passages], [rewrite(text) for _, text in passages]),
                   [(qid, rewrite(text)) for qid, text in read_tsv(split.dev("queries.dl21.tsv"))],
                   read_qrels(split.dev("qrels.dl21-passage.in-collection.txt")))

    def scores(self, system: Retriever, measures: tuple[str, ...] = MEASURES) -> np.ndarray:
        """``(measure, query)`` scores of ``system``'s top 1,000 over the pool."""
        system.prepare(self.pool)
        hits = system.search([text for _, text in self.queries], 1000)
        run = {qid: {self.pool.pid(row): score for row, score in found}
               for (qid, _), found in zip(self.queries, hits, strict=True)}
        found = score_run_per_query(self.qrels, run, metrics=measures)
        return np.array([[found[measure].get(qid, 0.0) for qid, _ in self.queries] for measure in measures])


def per_query(split: Split, dense: DenseRetriever, rewrite: Callable[[str], str] = str) -> np.ndarray:
    """``(system, measure, query)`` scores of ``dense`` and its feedback row on the held-out DL 2021 queries."""
    held_out = HeldOut.read(split, rewrite)
    return np.stack([held_out.scores(system) for system in (dense, FeedbackRetriever(dense, depth=3, weight=2.0))])


def report(split: Split, name: str) -> None:
    """The lever's row: mean (min-max) over the seeds, and its difference to the control with the paired p."""
    mine = np.stack([np.load(split.out / f"{name}-s{seed}.npy") for seed in SEEDS])
    control = np.stack([np.load(split.out / f"control-s{seed}.npy") for seed in SEEDS])
    for s, system in enumerate(SYSTEMS):
        cells = []
        for m, measure in enumerate(MEASURES):
            means = mine[:, s, m].mean(axis=1)
            cell = f"{measure} {means.mean():.4f} ({means.min():.3f}-{means.max():.3f})"
            if name != "control":
                a, b = mine[:, s, m].mean(axis=0), control[:, s, m].mean(axis=0)
                cell += f" {a.mean() - b.mean():+.4f} (p {ttest_rel(a, b).pvalue:.3f})"
            cells.append(cell)
        print(f"{name:26s} {system:14s} " + "   ".join(cells), flush=True)


# ------------------------------------------------------------------------------------------ towers and losses


class ResidualMlpTower(MeanPoolTower):
    """The weighted mean plus a residual two-layer MLP (GELU, twice as wide; its output layer starts at zero)."""

    def prepare(self) -> None:
        size = self.embedding.weight.shape[1]
        self.hidden, self.out = nn.Linear(size, 2 * size), nn.Linear(2 * size, size)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def pool(self, offsets, unique, inverse, vectors, log_weights):  # noqa: ANN001 - MeanPoolTower.pool's
        mean = self.weighted_mean(offsets, unique, inverse, vectors, log_weights)
        return F.normalize(self.head(mean + self.out(F.gelu(self.hidden(mean)))), dim=-1)


class MeanMaxTower(MeanPoolTower):
    """The weighted mean beside the element-wise max of the word vectors, into one head (the max's half of it
    starts at zero, so the tower starts as the mean)."""

    def prepare(self) -> None:
        size = self.embedding.weight.shape[1]
        head = nn.Linear(2 * size, size)
        with torch.no_grad():
            head.weight.zero_()
            head.weight[:, :size] = torch.eye(size)
            head.bias.zero_()
        self.head = head

    def pool(self, offsets, unique, inverse, vectors, log_weights):  # noqa: ANN001 - MeanPoolTower.pool's
        mean = self.weighted_mean(offsets, unique, inverse, vectors, log_weights)
        largest = F.embedding_bag(inverse, vectors, offsets, mode="max")
        return F.normalize(self.head(torch.cat([mean, largest], dim=1)), dim=-1)


class SymmetricInBatchSoftmaxLoss(InBatchSoftmaxLoss):
    """The in-batch softmax both ways: each query over the passages, and each positive over the queries."""

    def forward(self, queries, positives, negatives=None, label_offset=0):  # noqa: ANN001 - the base class's
        forward = super().forward(queries, positives, negatives, label_offset)
        backward = F.cross_entropy(self.scale * positives @ queries.T, torch.arange(len(queries)))
        return (forward + backward) / 2


# ------------------------------------------------------------------------------------------ data changes


class WordDropout:
    """The triplets with each passage token dropped at ``rate`` (never a passage's first), queries untouched."""

    def __init__(self, data: TripletArrays, rate: float, seed: int):
        self.data, self.rate, self.seed = data, rate, seed

    def __len__(self) -> int:
        return len(self.data)

    def batch(self, indices: np.ndarray) -> tuple[TokenBatch, TokenBatch, TokenBatch]:
        queries, positives, negatives = self.data.batch(indices)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + int(indices[0]))
        return queries, self._drop(positives, generator), self._drop(negatives, generator)

    def _drop(self, batch: TokenBatch, generator: torch.Generator) -> TokenBatch:
        lengths = batch.lengths()
        keep = torch.rand(len(batch.ids), generator=generator) >= self.rate
        keep[batch.offsets[lengths > 0]] = True
        kept = torch.bincount(torch.repeat_interleave(torch.arange(len(lengths)), lengths)[keep],
                              minlength=len(lengths))
        return TokenBatch(batch.ids[keep], torch.cat([kept.new_zeros(1), kept.cumsum(0)[:-1]]))


@dataclass
class TeacherLabels:
    """Queries, the rows of their teacher's top passages over the pools, and the teacher's scores of them."""

    queries: list[str]
    rows: np.ndarray
    scores: np.ndarray


class DistillationData:
    """The triplets, each batch with the distillation queries that ride along with its triplets (each query with
    one triplet drawn at random), their top passages and the teacher's scores."""

    def __init__(self, data: TripletArrays, labels: TeacherLabels, vocab: Vocabulary, passages: list[str],
                 seed: int):
        self.data, self.labels = data, labels
        self.queries = vocab.encode_many(labels.queries, 32)
        self.passages = vocab.encode_many(passages, 128)
        self.query_of = np.full(len(data), -1)
        self.query_of[np.random.default_rng(seed).permutation(len(data))[:len(labels.queries)]] = np.arange(
            len(labels.queries))

    def __len__(self) -> int:
        return len(self.data)

    def batch(self, indices: np.ndarray) -> tuple:
        chosen = self.query_of[indices]
        chosen = chosen[chosen >= 0]
        rows = self.labels.rows[chosen]  # (queries, depth); a batch may have no distillation query
        distinct, where = np.unique(rows, return_inverse=True)
        return (*self.data.batch(indices), TokenBatch.from_arrays(self.queries, chosen),
                TokenBatch.from_arrays(self.passages, distinct), torch.from_numpy(where.reshape(rows.shape)),
                torch.from_numpy(self.labels.scores[chosen]))


class DistillationTrainer(Trainer):
    """The recipe's loss plus ``weight`` x KL(softmax(teacher_scale x teacher) || softmax(scale x student)) over
    each distillation query's top passages (listwise distillation, as in TAS-B / RocketQAv2)."""

    weight = 1.0
    teacher_scale = 20.0

    def forward_loss(self, batch: tuple) -> tuple[torch.Tensor, list]:
        # the triplets' own batch (with the teacher's in-batch vectors when the loss distils them), then the
        # distillation queries, their top passages, where each query's are, and the teacher's scores of them
        triplets, (d_queries, d_passages, where, teacher) = batch[:-4], batch[-4:]
        if len(d_queries) == 0:
            return super().forward_loss(triplets)
        queries, positives, negatives = triplets[:3]
        q, passages, _, gathered = self.model.forward_rows(TokenBatch.concatenate([queries, d_queries]),
                                                           TokenBatch.concatenate([positives, negatives, d_passages]))
        p, n, d = passages.split([len(positives), len(negatives), len(d_passages)])
        student = self.loss_fn.scale * (q[len(queries):].unsqueeze(1) * d[where]).sum(-1)
        target = torch.softmax(self.teacher_scale * teacher, dim=1)
        distilled = F.kl_div(F.log_softmax(student, dim=1), target, reduction="batchmean")
        extra = {"teacher": triplets[3]} if len(triplets) > 3 else {}
        return self.loss_fn(q[:len(queries)], p, n, **extra) + self.weight * distilled, gathered


class TeacherListwiseTrainer(DistillationTrainer):
    """The listwise KL over the teacher's own top passages, at the teacher's scale of the in-batch KL."""

    teacher_scale = 40.0


# ------------------------------------------------------------------------------------------ one lever


@dataclass
class Lever:
    """What a lever changes; anything left at its default is the recipe's."""

    about: str
    embeddings: Callable[[Split], Path] | None = None
    triplets: Callable[[Split], Path] | None = None
    rewrite: Callable[[Split], Callable[[str], str]] | None = None  # of every text, trained on and ranked
    lengths: tuple[int, int] = (32, 128)
    tower: type[ResidualMlpTower | MeanMaxTower] | None = None
    data: Callable[[TripletArrays, int, Split, Vocabulary], object] | None = None
    trainer: type[Trainer] = Trainer
    loss: Callable[[float], nn.Module] = InBatchSoftmaxLoss
    settings: dict = field(default_factory=dict)
    schedule: bool = False  # linear warm-up over the first tenth, then linear decay to 0
    teacher: bool = False  # the triplets carry the teacher's vectors (for a distillation loss)


def train_seed(split: Split, lever: Lever, seed: int) -> tuple[TwoTowerModel, Callable[[str], str]]:
    rewrite = lever.rewrite(split) if lever.rewrite else str
    matrix, vocab, _ = load_embeddings(lever.embeddings(split) if lever.embeddings else split.embeddings)
    source = lever.triplets(split) if lever.triplets else split.triplets
    triplets = load_triplets(source)
    if lever.rewrite:
        triplets = Triplets(**{k: [rewrite(x) for x in v] if k in ("queries", "positives", "negatives") else v
                               for k, v in triplets.columns().items()})
    arrays = tokenise_triplets(triplets, vocab, *lever.lengths, split.work / "data",
                               f"levers|{file_identity(source)}|{lever.about}")
    model = build_model(vocab, matrix, torch.device("cpu"), shared_towers=True, max_query_length=lever.lengths[0],
                        max_passage_length=lever.lengths[1],
                        idf_passages=list(dict.fromkeys(triplets.positives + triplets.negatives)))
    if lever.tower is not None:  # the recipe's (shared) tower, its tables and weights, pooled the lever's way
        model.query_tower.__class__ = lever.tower
        model.query_tower.prepare()
    if lever.teacher:
        passages = {pid: text for path in pools() for pid, text in read_tsv(path)}
        arrays.teacher = label_triplets(triplets, passages, teacher_cache(split))
    data = lever.data(arrays, seed, split, vocab) if lever.data else arrays
    trainer = lever.trainer(model, data, lever.loss(20.0), TrainSettings(**{**SETTINGS, **lever.settings}, seed=seed),
                            torch.device("cpu"))
    if lever.schedule:
        peaks = [group["lr"] for optimizer in trainer.optimizers for group in optimizer.param_groups]
        steps = math.ceil(len(data) / trainer.settings.batch_size)

        def linear(step: int, _log: object) -> None:
            fraction = step / steps
            factor = fraction / 0.1 if fraction < 0.1 else max(0.0, (1 - fraction) / 0.9)
            groups = [group for optimizer in trainer.optimizers for group in optimizer.param_groups]
            for group, peak in zip(groups, peaks, strict=True):
                group["lr"] = peak * factor

        trainer.after_step = linear
        linear(0, None)
    trainer.fit()
    return model, rewrite


class Concatenated(DenseRetriever):
    """Several models as one: their vectors side by side (over sqrt(n), so a row's norm stays 1), whose inner
    product is the mean of the models' scores: an ensemble that is still one vector a text."""

    def __init__(self, models: list[TwoTowerModel]):
        super().__init__("two-tower")
        self.models = models

    def encode(self, texts, side):  # noqa: ANN001 - DenseRetriever.encode's
        return torch.cat([model.encode(list(texts), side) for model in self.models], dim=1) / len(self.models) ** 0.5


class Smoothed(ModelRetriever):
    """Each passage vector moved toward the mean of its 3 nearest passages' (weight 0.5), then renormalised."""

    def _prepare(self, collection) -> None:  # noqa: ANN001 - Retriever._prepare's
        super()._prepare(collection)
        vectors = torch.from_numpy(self.vectors)
        similar = vectors @ vectors.T
        similar.fill_diagonal_(-1.0)
        nearest = similar.topk(3, dim=1).indices
        self.vectors = F.normalize(vectors + 0.5 * vectors[nearest].mean(1), dim=-1).numpy()


def evaluated_only(split: Split, name: str, seed: int) -> DenseRetriever:
    """The evaluation-only levers: the control's models (and other levers' saved ones) ranked another way."""
    from msmarco_search.training.model_file import load_model

    if name == "smoothed-passages":
        return Smoothed(load_model(split.out / f"control-s{seed}.pt"))
    if name == "teacher":
        return TeacherRetriever(teacher_cache(split))
    return Concatenated([load_model(split.out / f"{member}-s{seed}.pt") for member in ENSEMBLE])


def measure(split: Split, name: str, lever: Lever | None) -> None:
    """Train (or rank, for an evaluation-only lever, ``None``) and score each seed not scored yet, then report."""
    if name == "ensemble-3-cbow":  # its members first
        for member in ENSEMBLE[1:]:
            if not all((split.out / f"{member}-s{seed}.pt").exists() for seed in SEEDS):
                measure(split, member, LEVERS[member])
    for seed in SEEDS:
        scores = split.out / f"{name}-s{seed}.npy"
        if scores.exists():
            continue
        started = time.perf_counter()
        if lever is None:
            np.save(scores, per_query(split, evaluated_only(split, name, seed)))
        else:
            model, rewrite = train_seed(split, lever, seed)
            if name == "control" or name.startswith("cbow-"):  # the teacher and the ensembles start from these
                save_two_tower(split.out / f"{name}-s{seed}.pt", model, {})
            np.save(scores, per_query(split, ModelRetriever(model), rewrite))
        print(f"  {name} seed {seed}: {time.perf_counter() - started:.0f} s", flush=True)
    report(split, name)


# ------------------------------------------------------------------------------------------ inputs of the levers


def frequent_bigrams(split: Split) -> list[tuple[str, str]]:
    """Word bigrams of the CBOW corpus seen at least 5 times whose words both have vectors and neither is among
    the corpus's 150 commonest words, in sorted order."""
    _, vocab, _ = load_embeddings(split.embeddings)
    words, pairs = collections.Counter(), collections.Counter()
    corpus = next((split.work / "data").glob("cbow_corpus_*.txt"))
    with open(corpus, encoding="utf-8") as handle:
        for line in handle:
            tokens = line.split()
            words.update(tokens)
            pairs.update(zip(tokens, tokens[1:], strict=False))
    common = {word for word, _ in words.most_common(150)}
    return sorted(pair for pair, count in pairs.items() if count >= 5 and not common & set(pair)
                  and all(word in vocab.word_to_index for word in pair))


def bigram_rewrite(split: Split) -> Callable[[str], str]:
    """Each text as its tokens with every frequent bigram as one more token after its second word ("new york" ->
    "new york newqzxyork")."""
    kept = set(frequent_bigrams(split))

    def rewrite(text: str) -> str:
        tokens = tokenize(text)
        out = tokens[:1]
        for first, second in zip(tokens, tokens[1:], strict=False):
            out.append(second)
            if (first, second) in kept:
                out.append(f"{first}qzx{second}")
        return " ".join(out)

    return rewrite


def bigram_embeddings(split: Split) -> Path:
    """The CBOW vectors plus one row per frequent bigram, starting at the mean of its two words' vectors."""
    path = split.out / "bigrams" / "msmarco_word2vec.pt"
    if not path.exists():
        matrix, vocab, metadata = load_embeddings(split.embeddings)
        bigrams = frequent_bigrams(split)
        index = vocab.word_to_index
        rows = torch.stack([(matrix[index[a]] + matrix[index[b]]) / 2 for a, b in bigrams])
        save_embeddings(path, torch.cat([matrix, rows]), Vocabulary(vocab.index_to_word + [f"{a}qzx{b}" for a, b in
                                                                                           bigrams]),
                        {**metadata, "bigrams": len(bigrams)})
    return path


def lexical_embeddings(split: Split) -> Path:
    """The CBOW vectors with 256 random columns beside them (each row's random part as long as the mean CBOW
    row): near-orthogonal word ids, whose pooled dot product counts shared words."""
    path = split.out / "lexical" / "msmarco_word2vec.pt"
    if not path.exists():
        matrix, vocab, metadata = load_embeddings(split.embeddings)
        generator = torch.Generator().manual_seed(0)
        columns = torch.randn(len(matrix), 256, generator=generator) / 16 * matrix[2:].norm(dim=1).mean()
        columns[PAD_ID] = 0
        save_embeddings(path, torch.cat([matrix, columns], dim=1), vocab, {**metadata, "random_columns": 256})
    return path


def fasttext_embeddings(split: Split) -> Path:
    """gensim FastText in CBOW mode (character 3-6-grams in 500K buckets) with the recipe's CBOW settings."""
    path = split.out / "fasttext" / "msmarco_word2vec.pt"
    if not path.exists():
        from gensim.models import FastText

        from msmarco_search.embeddings.cbow import embeddings_from_gensim

        corpus = str(next((split.work / "data").glob("cbow_corpus_*.txt")))
        model = FastText(sg=0, vector_size=300, window=20, min_count=3, workers=2, epochs=20, bucket=500_000,
                         min_n=3, max_n=6, seed=42)
        model.build_vocab(corpus_file=corpus)
        model.train(corpus_file=corpus, total_examples=model.corpus_count, total_words=model.corpus_total_words,
                    epochs=20)
        save_embeddings(path, *embeddings_from_gensim(model), {"model": "fasttext"})
    return path


def concatenated_embeddings(*levers: str) -> Callable[[Split], Path]:
    """Word vectors side by side: the given CBOW levers' tables (one vocabulary: the same corpus and min count),
    one 300-d half each, as one wider table."""
    def make(split: Split) -> Path:
        path = split.out / "+".join(levers) / "msmarco_word2vec.pt"
        if not path.exists():
            tables = [load_embeddings(LEVERS[lever].embeddings(split)) for lever in levers]
            if any(vocab.index_to_word != tables[0][1].index_to_word for _, vocab, _ in tables):
                raise SystemExit(f"{', '.join(levers)}: the vocabularies differ; their tables cannot be joined")
            save_embeddings(path, torch.cat([matrix for matrix, _, _ in tables], dim=1), tables[0][1],
                            {**tables[0][2], "concatenated": list(levers)})
        return path

    return make


def cbow_embeddings(name: str, *flags: str) -> Callable[[Split], Path]:
    def make(split: Split) -> Path:
        import subprocess

        path = split.out / name / "msmarco_word2vec.pt"
        if not path.exists():
            subprocess.run([sys.executable, "text_embeddings/train_text_embeddings_cbow_msmarco.py", "--dataset-path",
                            str(split.work / "alltext" / "collection.tsv"), "--vector-size", "300", "--min-count", "3",
                            "--window", "20", "-c", str(path.parent), "--data-dir", str(split.work / "data"),
                            "--workers", "1", "--no-word-benchmarks", *flags], check=True,
                           cwd=Path(__file__).resolve().parents[1])
        return path

    return make


def keyword_triplets(split: Split) -> Path:
    """Half the inverse-cloze queries replaced by 3-6 of their own words drawn by IDF; positives unchanged."""
    path = split.out / "keywords.pkl"
    if not path.exists():
        from msmarco_search.data.triplets import save_triplets

        triplets = load_triplets(split.triplets)
        idf = word_idf(list(dict.fromkeys(triplets.positives)))
        rng = random.Random(7)
        for i, qid in enumerate(triplets.query_ids):
            if qid.startswith("ict:") and rng.random() < 0.5:
                triplets.queries[i] = keyword_query(triplets.queries[i], idf, rng) or triplets.queries[i]
        save_triplets(triplets, path, {"lever": "keywords from the pseudo-query sentence"})
    return path


def cli_triplets(name: str, judged_flags: list[str], ict_flags: list[str]) -> Callable[[Split], Path]:
    """Triplets made the levers step's way by the triplets script, with other flags."""
    def make(split: Split) -> Path:
        import subprocess

        path = split.out / f"{name}.pkl"
        if not path.exists():
            script = [sys.executable, "preprocessing/generate_triplets.py"]
            held_out = ["--exclude-queries", str(DATA / "msmarco-trec-dl-2019" / "queries.dl19.tsv"),
                        str(split.dev("queries.dl21.tsv"))]
            judged = split.out / f"{name}-judged.pkl"
            root = Path(__file__).resolve().parents[1]
            subprocess.run([*script, "--dataset-path", str(split.work / "dl21-split" / "train"), "--split", "dl21",
                            "--negatives", "hard", "--output", str(judged), *judged_flags], check=True, cwd=root)
            subprocess.run([*script, "--mode", "ict", "--dataset-path", *map(str, pools()), "--ict-per-passage", "8",
                            "--include", str(judged), *held_out, "--output", str(path), *ict_flags], check=True,
                           cwd=root)
        return path

    return make


def teacher_labels(split: Split, queries: list[str], depth: int = 16) -> TeacherLabels:
    """hybrid-rrf-prf of the control's soup over both pools (fusion over each system's top 100): each query's top
    ``depth`` rows and their scores (cosines with the moved query vector)."""
    model = average_two_towers([split.out / f"control-s{seed}.pt" for seed in SEEDS])
    passages = [row for path in pools() for row in read_tsv(path)]
    pool = PassagePool([pid for pid, _ in passages], [text for _, text in passages])
    dense = TwoTowerRetriever(model)
    hybrid = HybridRetriever(dense, BM25Retriever(), "rrf", depth=100)
    teacher = FeedbackRetriever(dense, hybrid, depth=3, weight=2.0)
    teacher.prepare(pool)
    hits = [h for start in range(0, len(queries), 2048) for h in teacher.search(queries[start:start + 2048], depth)]
    return TeacherLabels(queries, np.array([[row for row, _ in h] for h in hits]),
                         np.array([[score for _, score in h] for h in hits], dtype=np.float32))


def distillation(on: str) -> Callable[[TripletArrays, int, Split, Vocabulary], DistillationData]:
    def make(arrays: TripletArrays, seed: int, split: Split, vocab: Vocabulary) -> DistillationData:
        cached = split.out / f"teacher-{on}.npz"
        if not cached.exists():
            if on == "train-queries":  # the 48,780 distinct real MS MARCO train queries (none is a DL query)
                texts = dict.fromkeys(text for path in sorted((DATA / "msmarco-queries").glob("queries.train.*.tsv"))
                                      for _, text in read_tsv(path))
            else:  # 48,000 of the recipe's pseudo-queries
                queries = load_triplets(split.triplets).queries
                texts = dict.fromkeys(queries[i] for i in np.random.default_rng(0).choice(len(queries), 48_000,
                                                                                          replace=False))
            labels = teacher_labels(split, list(texts))
            np.savez(cached, queries=np.array(labels.queries), rows=labels.rows, scores=labels.scores)
        saved = np.load(cached)
        labels = TeacherLabels([str(q) for q in saved["queries"]], saved["rows"], saved["scores"])
        passages = [text for path in pools() for _, text in read_tsv(path)]
        return DistillationData(arrays, labels, vocab, passages, seed)

    return make


def teacher_listwise(depth: int = 16) -> Callable[[TripletArrays, int, Split, Vocabulary], DistillationData]:
    """The 48,780 distinct real train queries with the teacher's top ``depth`` passages over both pools and its
    cosines of them, riding along with the triplets."""
    def make(arrays: TripletArrays, seed: int, split: Split, vocab: Vocabulary) -> DistillationData:
        cached = split.out / f"teacher-top{depth}-train-queries.npz"
        pool = pool_of_both()
        if not cached.exists():
            texts = list(dict.fromkeys(text for path in sorted((DATA / "msmarco-queries").glob("queries.train.*.tsv"))
                                       for _, text in read_tsv(path)))
            teacher = TeacherRetriever(teacher_cache(split))
            teacher.prepare(pool)
            hits = [h for start in range(0, len(texts), 2048) for h in teacher.search(texts[start:start + 2048], depth)]
            np.savez(cached, queries=np.array(texts), rows=np.array([[row for row, _ in h] for h in hits]),
                     scores=np.array([[score for _, score in h] for h in hits], dtype=np.float32))
        saved = np.load(cached)
        labels = TeacherLabels([str(q) for q in saved["queries"]], saved["rows"], saved["scores"])
        return DistillationData(arrays, labels, vocab, list(pool.texts()), seed)

    return make


def teacher_cache(split: Split) -> TeacherCache:
    return TeacherCache(load_teacher(TEACHER), split.work / "data")


def pool_of_both() -> PassagePool:
    passages = [row for path in pools() for row in read_tsv(path)]
    return PassagePool([pid for pid, _ in passages], [text for _, text in passages])


def held_out_queries(split: Split) -> list[str]:
    return [text for path in (DATA / "msmarco-trec-dl-2019" / "queries.dl19.tsv", split.dev("queries.dl21.tsv"))
            for _, text in read_tsv(path)]


def own_passage_ranks(triplets: Triplets, pool: PassagePool, cache: TeacherCache) -> np.ndarray:
    """The teacher's rank (0: first) of each triplet's own positive passage among ``pool``'s, for its query."""
    passages = torch.from_numpy(cache.vectors(list(pool.texts()), desc="Teacher: passages"))
    queries = torch.from_numpy(cache.vectors(list(triplets.queries), desc="Teacher: queries"))
    # an inverse-cloze positive's id is "<source>:<passage id>"
    own = torch.tensor([pool.position[pid.split(":", 1)[-1]] for pid in triplets.positive_ids])
    ranks = []
    for start in range(0, len(own), 2048):
        scores = queries[start:start + 2048] @ passages.T
        ranks.append((scores > scores.gather(1, own[start:start + 2048, None])).sum(1))
    return torch.cat(ranks).numpy()


def teacher_triplets(name: str, train_queries: bool = False, ict_negatives: tuple[int, int] | None = None,
                     margin: float = 0.1, min_score: float = 0.5,
                     pseudo_within: int | None = None) -> Callable[[Split], Path]:
    """The recipe's triplets, their inverse-cloze negatives re-drawn from the teacher's ranks ``ict_negatives``
    (within ``margin`` of its first hit refused), plus, with ``train_queries``, the 50K real train queries
    labelled by the teacher (its first passage when it scores ``min_score``); with ``pseudo_within``, only the
    pseudo-queries whose own passage the teacher ranks in its first ``pseudo_within`` over both pools."""
    def make(split: Split) -> Path:
        path = split.out / f"triplets-{name}.pkl"
        if path.exists():
            return path
        triplets = load_triplets(split.triplets)
        pool = pool_of_both()
        teacher = TeacherRetriever(teacher_cache(split))
        if pseudo_within is not None:
            pseudo = [i for i, qid in enumerate(triplets.query_ids) if qid.startswith("ict:")]
            ranks = own_passage_ranks(triplets.subset(pseudo), pool, teacher.cache)
            kept = set(np.asarray(pseudo)[ranks < pseudo_within].tolist())
            print(f"  {name}: {len(kept):,} of {len(pseudo):,} pseudo-queries kept", flush=True)
            triplets = triplets.subset([i for i in range(len(triplets.query_ids))
                                        if i in kept or not triplets.query_ids[i].startswith("ict:")])
        if ict_negatives is not None:
            pseudo = [i for i, qid in enumerate(triplets.query_ids) if qid.startswith("ict:")]
            judged = [i for i, qid in enumerate(triplets.query_ids) if not qid.startswith("ict:")]
            mined, stats = mine_negatives(triplets.subset(pseudo), pool, teacher, ict_negatives, margin=margin)
            print(f"  {name}: {stats}", flush=True)
            mined.extend(triplets.subset(judged))
            triplets = mined
        if train_queries:
            files = sorted((DATA / "msmarco-queries").glob("queries.train.*.tsv"))
            queries = [row for path in files for row in read_tsv(path)]
            labelled, stats = teacher_label_triplets(queries, pool, teacher, min_score=min_score, margin=margin)
            print(f"  {name}: {stats}", flush=True)
            triplets.extend(labelled.without_queries(held_out_queries(split)))
        save_triplets(triplets, path, {"lever": name})
        return path

    return make


def distilled(teacher_scale: float = 20.0, weight: float = 1.0) -> Callable[[float], InBatchDistillationLoss]:
    return lambda scale: InBatchDistillationLoss(scale, teacher_scale, weight)


LEVERS: dict[str, Lever | None] = {
    "control": Lever("the recipe, as it trains here"),
    "lexical-columns": Lever("256 random columns beside each word's vector", embeddings=lexical_embeddings),
    "bigrams": Lever("word bigrams as tokens", embeddings=bigram_embeddings, rewrite=bigram_rewrite,
                     lengths=(48, 192)),
    "fasttext": Lever("FastText vectors instead of CBOW's (~15 min to train)", embeddings=fasttext_embeddings),
    "cbow-40-epochs": Lever("CBOW 40 epochs, not 20", embeddings=cbow_embeddings("cbow-40", "--epochs", "40")),
    "cbow-40-epochs-seed-7": Lever("CBOW 40 epochs, seed 7",
                                   embeddings=cbow_embeddings("cbow-40-seed-7", "--epochs", "40", "--seed", "7")),
    "cbow-40-two-draws-joined": Lever("the two 40-epoch CBOW draws' vectors side by side (600-d)",
                                      embeddings=concatenated_embeddings("cbow-40-epochs", "cbow-40-epochs-seed-7")),
    "cbow-seed-7": Lever("CBOW 20 epochs again, seed 7",
                         embeddings=cbow_embeddings("cbow-seed-7", "--epochs", "20", "--seed", "7")),
    "keywords-from-sentence": Lever("half the pseudo-queries: 3-6 of their words", triplets=keyword_triplets),
    "grade-1-pairs": Lever("judged pairs of grade 1 too",
                           triplets=cli_triplets("grade-1", ["--min-relevance", "1"], [])),
    "distill-train-queries": Lever("KL to hybrid-rrf-prf on the real train queries", data=distillation("train-queries"),
                                   trainer=DistillationTrainer),
    "distill-pseudo-queries": Lever("KL to hybrid-rrf-prf on 48K pseudo-queries", data=distillation("pseudo-queries"),
                                    trainer=DistillationTrainer),
    "mlp-head": Lever("a residual MLP before the head (dense lr 1e-3)", tower=ResidualMlpTower,
                      settings={"learning_rate": 1e-3}),
    "dense-lr-1e-3": Lever("the head's learning rate 1e-3", settings={"learning_rate": 1e-3}),
    "mean-max": Lever("mean and max pooling", tower=MeanMaxTower),
    "word-dropout": Lever("passage words dropped at 0.3", data=lambda a, seed, split, vocab: WordDropout(a, 0.3, seed)),
    "symmetric-loss": Lever("the in-batch softmax both ways", loss=SymmetricInBatchSoftmaxLoss),
    "linear-schedule": Lever("warm-up then linear decay of both learning rates", schedule=True),
    "linear-schedule-16-cuts": Lever("the same, 16 pseudo-queries a passage", schedule=True,
                                     triplets=cli_triplets("cuts-16", ["--min-relevance", "2"],
                                                           ["--ict-per-passage", "16"])),
    "teacher-kl": Lever("in-batch KL to the teacher (scale 20, weight 1)", teacher=True, loss=distilled()),
    "teacher-kl-w0.5": Lever("in-batch KL to the teacher, weight 0.5", teacher=True, loss=distilled(20, 0.5)),
    "teacher-kl-w2": Lever("in-batch KL to the teacher, weight 2", teacher=True, loss=distilled(20, 2)),
    "teacher-kl-t10": Lever("in-batch KL to the teacher, teacher scale 10", teacher=True, loss=distilled(10)),
    "teacher-kl-t40": Lever("in-batch KL to the teacher, teacher scale 40", teacher=True, loss=distilled(40)),
    "teacher-train-queries": Lever("+ the 50K train queries labelled by the teacher (hard labels only)",
                                   triplets=teacher_triplets("train-queries", train_queries=True)),
    "teacher-kl-train-queries": Lever("in-batch KL, + the 50K train queries labelled by the teacher",
                                      triplets=teacher_triplets("train-queries", train_queries=True), teacher=True,
                                      loss=distilled()),
    "teacher-kl-train-queries-t40": Lever("in-batch KL (teacher scale 40), + the 50K train queries labelled",
                                          triplets=teacher_triplets("train-queries", train_queries=True),
                                          teacher=True, loss=distilled(40)),
    "teacher-kl-train-queries-t40-2-epochs": Lever("the teacher recipe (train queries, scale 40) for 2 epochs",
                                                   triplets=teacher_triplets("train-queries", train_queries=True),
                                                   teacher=True, loss=distilled(40), settings={"epochs": 2}),
    "teacher-kl-train-queries-t40-min-0.4": Lever("the teacher recipe, a train query labelled when the teacher's "
                                                  "first passage scores at least 0.4",
                                                  triplets=teacher_triplets("train-queries-0.4", train_queries=True,
                                                                            min_score=0.4),
                                                  teacher=True, loss=distilled(40)),
    "teacher-kl-train-queries-all": Lever("in-batch KL, + every one of the 50K train queries (its teacher's first "
                                          "passage, whatever its score)",
                                          triplets=teacher_triplets("train-queries-all", train_queries=True,
                                                                    min_score=-1.0),
                                          teacher=True, loss=distilled()),
    "teacher-kl-train-queries-negatives": Lever("in-batch KL, + the train queries, inverse-cloze negatives from "
                                                "the teacher's ranks 10-50",
                                                triplets=teacher_triplets("train-queries-negatives",
                                                                          train_queries=True,
                                                                          ict_negatives=(10, 50)),
                                                teacher=True, loss=distilled()),
    "teacher-kl-train-queries-t40-pseudo-top10": Lever("the teacher recipe, only the pseudo-queries whose own "
                                                       "passage the teacher ranks in its first 10",
                                                       triplets=teacher_triplets("train-queries-pseudo-top10",
                                                                                 train_queries=True,
                                                                                 pseudo_within=10),
                                                       teacher=True, loss=distilled(40)),
    "teacher-kl-train-queries-t40-batch-2048": Lever("the teacher recipe, batches of 2,048",
                                                     triplets=teacher_triplets("train-queries", train_queries=True),
                                                     teacher=True, loss=distilled(40),
                                                     settings={"batch_size": 2048}),
    "teacher-kl-train-queries-t40-w2": Lever("the teacher recipe, the KL at weight 2",
                                             triplets=teacher_triplets("train-queries", train_queries=True),
                                             teacher=True, loss=distilled(40, 2)),
    "teacher-kl-train-queries-t40-student-30": Lever("the teacher recipe, the student's scale 30 (not 20)",
                                                     triplets=teacher_triplets("train-queries", train_queries=True),
                                                     teacher=True,
                                                     loss=lambda scale: InBatchDistillationLoss(30.0, 40.0, 1.0)),
    "teacher-kl-train-queries-t40-listwise": Lever("the teacher recipe, + a listwise KL over the teacher's top 16 "
                                                   "passages of each train query",
                                                   triplets=teacher_triplets("train-queries", train_queries=True),
                                                   teacher=True, loss=distilled(40), data=teacher_listwise(),
                                                   trainer=TeacherListwiseTrainer),
    "teacher-negatives": Lever("inverse-cloze negatives from the teacher's ranks 10-50 (margin 0.1)",
                               triplets=teacher_triplets("negatives", ict_negatives=(10, 50))),
    "teacher-kl-negatives": Lever("in-batch KL, inverse-cloze negatives from the teacher's ranks 10-50",
                                  triplets=teacher_triplets("negatives", ict_negatives=(10, 50)), teacher=True,
                                  loss=distilled()),
    # evaluation only: the models above, ranked another way
    "smoothed-passages": None,
    "teacher": None,
    "ensemble-3-cbow": None,
}
ENSEMBLE = ("control", "cbow-40-epochs", "cbow-seed-7")
ABOUT = {"teacher": "the teacher itself (all-MiniLM-L6-v2), the ceiling",
         "smoothed-passages": "the control's passage vectors moved toward their 3 nearest passages (0.5)",
         "ensemble-3-cbow": "control + cbow-40-epochs + cbow-seed-7 side by side, seed by seed"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, help="the quality script's WORK (its levers step ran); needed to measure")
    parser.add_argument("--list", action="store_true", help="list the levers and stop")
    parser.add_argument("levers", nargs="*", help="levers to measure (the control first, once)")
    args = parser.parse_args(argv)
    if args.list or not args.levers:
        for name, lever in LEVERS.items():
            print(f"{name:26s} {ABOUT[name] if lever is None else lever.about}")
        return 0
    if args.work is None:
        parser.error("--work is needed to measure levers (see --help)")
    unknown = [name for name in args.levers if name not in LEVERS]
    if unknown:
        parser.error(f"unknown lever(s) {', '.join(unknown)} (see --list)")
    split = Split(args.work)
    if not split.dev("queries.dl21.tsv").is_file() or not split.embeddings.is_file():
        parser.error(f"{args.work}: run the quality script's levers step there first (see --help)")
    split.out.mkdir(exist_ok=True)
    torch.set_num_threads(1)
    for name in dict.fromkeys(["control", *args.levers]):
        measure(split, name, LEVERS[name])
    return 0


if __name__ == "__main__":
    sys.exit(main())
