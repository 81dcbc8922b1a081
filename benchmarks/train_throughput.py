"""Training throughput side by side: the project's two-tower trainer against sentence-transformers'.

All systems train in ONE process, on the same triplets and batch size and thread count, and their steps are
interleaved (step 1 of every system, then step 2 of every system, ..., the order rotating), so a shared
machine's load falls on all of them alike; the table gives each system's rate over blocks of its steps and
its median (batch / median step time), and the ratios.

Systems:

- ``trainable``: the project's mean towers (separate query and passage towers, word weights, linear heads),
  trainable word vectors, the in-batch softmax with the explicit negatives: ``trainer.Trainer.step``.
- ``frozen``: the same with the word vectors frozen (``--freeze-embeddings``; the word weights still learn).
- ``autograd``: ``trainable`` with the word tables' lookups in autograd (sparse gradients + ``RowAdam.step``),
  the path DDP takes (``TrainSettings(row_updates=False)``).
- ``before``: ``trainable`` with another checkout's ``msmarco_search`` (``--before DIR``, imported under
  another name beside this one): a checkout of the flat package, one module per concern.
- ``st``: sentence-transformers' ``StaticEmbedding`` (the same vocabulary, tokens and start vectors, one
  shared tower) with ``MultipleNegativesRankingLoss`` (scale 20) on (anchor, positive, negative):
  ``SentenceTransformerTrainer``'s own data loader (its collator tokenises each batch), ``training_step``
  (forward and backward), optimiser and scheduler steps, driven one step at a time so the steps interleave.

Each step is timed alone (``torch.cuda.synchronize`` on CUDA) after ``--warmup`` untimed steps.

    uv run benchmarks/train_throughput.py --triplets TRIPLETS.pkl --embeddings msmarco_word2vec.pt \
        --systems trainable frozen st before --before /tmp/old-checkout
    uv run benchmarks/train_throughput.py --triplets triples.tsv --systems trainable --device cuda \
        --batch-size 1024 --threads 0     # the GPU check (bf16 autocast on CUDA)

Without ``--embeddings`` the word vectors are random, over the words of the triplets (speed only).
"""

from __future__ import annotations

import argparse
import atexit
import importlib.util
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from msmarco_search.cli import run
from msmarco_search.cli.arguments import batch_rows, dimension, positive_int, thread_count
from msmarco_search.core.errors import PipelineError
from msmarco_search.io.atomic import save_json
from msmarco_search.io.outputs import OutputKind, claim_output, release
from msmarco_search.io.safe_load import recognise_json

ROOT = Path(__file__).resolve().parents[1]
THROUGHPUT_OUTPUT = OutputKind("throughput record", recognise_json("median_triplets_per_second"))
SYSTEMS = ("trainable", "frozen", "autograd", "before", "st")
LABELS = {"trainable": "project, trainable word vectors (row updates)",
          "frozen": "project, frozen word vectors",
          "autograd": "project, trainable, tables in autograd (sparse gradients; the DDP path)",
          "before": "project before (--before checkout), trainable",
          "st": "sentence-transformers StaticEmbedding + MultipleNegativesRankingLoss"}


def _texts(path: Path, count: int):
    """The first ``count`` triplets of a .pkl (generate_triplets.py) or a triples TSV, as texts."""
    from msmarco_search.data.tokens import triples_tsv_head
    from msmarco_search.data.triplets import load_triplets

    if path.suffix == ".pkl":
        triplets = load_triplets(path)
        return triplets.queries[:count], triplets.positives[:count], triplets.negatives[:count]
    triplets = triples_tsv_head(path, count)
    return triplets.queries, triplets.positives, triplets.negatives


def _vectors(args: argparse.Namespace, texts):
    import torch

    from msmarco_search.core.text import tokenize
    from msmarco_search.data.vocab import Vocabulary
    from msmarco_search.embeddings.cbow import load_embeddings

    if args.embeddings:
        matrix, vocab, _ = load_embeddings(args.embeddings)
        return matrix, vocab
    words = sorted({word for side in texts for text in side for word in tokenize(text)})
    vocab = Vocabulary.from_words(words)
    return torch.randn(len(vocab), args.dim, generator=torch.Generator().manual_seed(0)) * 0.1, vocab


# where each class the step needs lives: in the package's subpackages, and in a checkout of the flat package
# (one module per concern, before the subpackages), which ``--before`` names
HOMES = {"TripletArrays": "data.tokens", "TwoTowerConfig": "training.config", "TwoTowerModel": "training.model",
         "InBatchSoftmaxLoss": "training.losses", "Trainer": "training.trainer", "TrainSettings": "training.state",
         "Vocabulary": "data.vocab"}
FLAT_HOMES = {"TripletArrays": "batches", "TwoTowerConfig": "model", "TwoTowerModel": "model",
              "InBatchSoftmaxLoss": "losses", "Trainer": "train", "TrainSettings": "train", "Vocabulary": "vocab"}


def _classes(checkout: Path | None) -> dict[str, type]:
    """The classes of ``HOMES`` from ``msmarco_search`` of this checkout, or of ``checkout`` (the flat package,
    whose modules import each other relatively) imported as ``msmarco_search_before``: two checkouts side by side,
    their modules found by name."""
    if checkout is None:
        return {name: getattr(importlib.import_module(f"msmarco_search.{home}"), name) for name, home in HOMES.items()}
    folder = checkout.resolve() / "msmarco_search"
    if (folder / "core").is_dir():  # its modules import msmarco_search by name: they would load this checkout's
        raise PipelineError("--before: a checkout with subpackages cannot be loaded beside this one; run this "
                            "script in that checkout and compare the figures", checkout)
    if "msmarco_search_before" not in sys.modules:
        spec = importlib.util.spec_from_file_location("msmarco_search_before", folder / "__init__.py",
                                                      submodule_search_locations=[str(folder)])
        package = importlib.util.module_from_spec(spec)
        sys.modules["msmarco_search_before"] = package
        spec.loader.exec_module(package)
    return {name: getattr(importlib.import_module(f"msmarco_search_before.{home}"), name)
            for name, home in FLAT_HOMES.items()}


def _project(args: argparse.Namespace, texts, matrix, words: list[str], system: str) -> Callable[[int], None]:
    """One training step of batch ``i`` of ``system``, through the project's ``Trainer.step``."""
    import numpy as np
    import torch

    checkout = Path(args.before) if system == "before" else None
    c = _classes(checkout)
    vocab = c["Vocabulary"](words)
    device = torch.device(args.device)
    data = c["TripletArrays"](vocab.encode_many(texts[0], 32), vocab.encode_many(texts[1], 128),
                              vocab.encode_many(texts[2], 128))
    config = c["TwoTowerConfig"](vocab_size=len(vocab), embedding_dim=matrix.shape[1],
                                 freeze_embeddings=system == "frozen")
    settings = {"batch_size": args.batch_size} | ({"row_updates": False} if system == "autograd" else {})
    trainer = c["Trainer"](c["TwoTowerModel"](config, vocab, matrix), data, c["InBatchSoftmaxLoss"](20.0),
                           c["TrainSettings"](**settings), device)

    def step(i: int) -> None:
        trainer.step(data.batch(np.arange(i * args.batch_size, (i + 1) * args.batch_size)))

    return step


def _sentence_transformers(args: argparse.Namespace, texts, matrix, words: list[str]) -> Callable[[int], None]:
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    from msmarco_search.data.vocab import Vocabulary
    from msmarco_search.training.config import TwoTowerConfig
    from msmarco_search.training.export import static_embedding
    from msmarco_search.training.model import TwoTowerModel

    vocab = Vocabulary(words)
    tower = TwoTowerModel(TwoTowerConfig(vocab_size=len(vocab), embedding_dim=matrix.shape[1], token_weights=False),
                          vocab, matrix).query_tower
    model = SentenceTransformer(modules=[static_embedding(tower, vocab, 128)], device=args.device)
    dataset = Dataset.from_dict({"anchor": list(texts[0]), "positive": list(texts[1]), "negative": list(texts[2])})
    output = tempfile.mkdtemp(prefix="st_throughput_")  # nothing is saved there (save_strategy "no")
    atexit.register(shutil.rmtree, output, True)
    total = args.warmup + args.steps
    training = SentenceTransformerTrainingArguments(
        output_dir=output, per_device_train_batch_size=args.batch_size, max_steps=total, learning_rate=1e-2,
        save_strategy="no", report_to="none", logging_steps=10 ** 9, dataloader_num_workers=0,
        use_cpu=args.device == "cpu", disable_tqdm=True, seed=42)
    trainer = SentenceTransformerTrainer(model=model, args=training, train_dataset=dataset,
                                         loss=MultipleNegativesRankingLoss(model, scale=20.0))
    trainer.create_optimizer_and_scheduler(num_training_steps=total)
    loader = iter(trainer.get_train_dataloader())
    trainer.current_gradient_accumulation_steps = 1  # what Trainer.train's loop sets per step (no accumulation)
    model.train()

    def step(i: int) -> None:
        loss = trainer.training_step(model, next(loader))  # forward and backward, as Trainer.train runs them
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
        trainer.optimizer.zero_grad()
        del loss

    return step


def run_all(args: argparse.Namespace) -> dict[str, list[float]]:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    needed = (args.warmup + args.steps) * args.batch_size
    texts = _texts(args.triplets, needed)
    if len(texts[0]) < needed:
        raise SystemExit(f"{args.triplets}: {len(texts[0])} triplets, fewer than (warmup + steps) x batch = {needed}")
    matrix, vocab = _vectors(args, texts)
    steps = {system: (_sentence_transformers(args, texts, matrix, vocab.index_to_word) if system == "st" else
                      _project(args, texts, matrix, vocab.index_to_word, system)) for system in args.systems}
    synchronize = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    seconds: dict[str, list[float]] = {system: [] for system in args.systems}
    loads: list[float] = []
    for i in range(args.warmup + args.steps):
        order = args.systems[i % len(args.systems):] + args.systems[:i % len(args.systems)]
        for system in order:
            synchronize()
            start = time.perf_counter()
            steps[system](i)
            synchronize()
            if i >= args.warmup:
                seconds[system].append(time.perf_counter() - start)
        if i >= args.warmup:
            loads.append(os.getloadavg()[0])
        if (i + 1) % 10 == 0:
            print(f"step {i + 1}: " + ", ".join(f"{s} {args.batch_size / seconds[s][-1]:,.0f}/s"
                                                for s in args.systems if seconds[s]), flush=True)
    return {"seconds": seconds, "loads": loads}


def _rates(times: list[float], batch: int, blocks: int) -> tuple[list[float], float]:
    size = max(len(times) // blocks, 1)
    chunks = [times[i:i + size] for i in range(0, size * blocks, size) if times[i:i + size]]
    return [batch * len(c) / sum(c) for c in chunks], batch / statistics.median(times)


def table(result: dict, args: argparse.Namespace) -> str:
    rates = {system: _rates(result["seconds"][system], args.batch_size, args.rounds) for system in args.systems}
    reference = rates["st"][1] if "st" in rates else None
    before = rates["before"][1] if "before" in rates else None
    blocks = len(next(iter(rates.values()))[0])
    header = "| system | " + " | ".join(f"steps block {i + 1}" for i in range(blocks)) + " | median |"
    header += " x sentence-transformers |" if reference else ""
    header += " x before |" if before else ""
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for system in args.systems:
        per_block, median = rates[system]
        row = f"| {LABELS[system]} | " + " | ".join(f"{r:,.0f}" for r in per_block) + f" | **{median:,.0f}** |"
        row += f" {median / reference:.2f} |" if reference else ""
        row += f" {median / before:.2f} |" if before else ""
        lines.append(row)
    load = result["loads"]
    lines.append(f"\ntriplets/s; batch {args.batch_size}, {args.steps} timed steps of each system after "
                 f"{args.warmup} warm-up steps, interleaved in one process; {args.threads or 'all'} thread(s), "
                 f"device {args.device}; load (1 min) {min(load):.1f}-{max(load):.1f}, median "
                 f"{statistics.median(load):.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--triplets", type=Path, required=True, help="a generate_triplets.py .pkl or a triples TSV")
    parser.add_argument("--embeddings", type=Path, help="CBOW vectors (.pt); default: random, over the triplets' words")
    parser.add_argument("--systems", nargs="+", choices=SYSTEMS, default=["trainable", "frozen", "st"])
    parser.add_argument("--before", help="another checkout of the project, for the 'before' system")
    parser.add_argument("--batch-size", type=batch_rows, default=256)
    parser.add_argument("--steps", type=positive_int, default=60, help="timed steps of each system (60)")
    parser.add_argument("--warmup", type=positive_int, default=5, help="untimed steps of each system first (5)")
    parser.add_argument("--rounds", type=positive_int, default=3,
                        help="the table's rate per block of consecutive steps: this many blocks (3)")
    parser.add_argument("--threads", type=thread_count, default=1, help="torch threads (1; 0: PyTorch's default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dim", type=dimension, default=300, help="dimension of the random vectors (300)")
    parser.add_argument("--json", type=Path, help="also write the rates here")
    args = parser.parse_args(argv)
    os.environ.setdefault("MSMARCO_SEARCH_NO_PROGRESS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if "before" in args.systems and not args.before:
        parser.error("the 'before' system needs --before DIR")
    args.systems = list(dict.fromkeys(args.systems))
    if args.json:  # claimed before the run: it replaces only an earlier record of this script, never another file
        args.json = claim_output(args.json, THROUGHPUT_OUTPUT, flag="--json")
    try:
        return report(args, run_all(args))
    finally:
        if args.json:
            release(args.json)


def report(args: argparse.Namespace, result: dict) -> int:
    """Print the table of ``result`` and, with ``--json``, write the rates."""
    print()
    print(table(result, args))
    if args.json:
        medians = {s: _rates(result["seconds"][s], args.batch_size, 1)[1] for s in args.systems}
        save_json({"median_triplets_per_second": medians, **result,
                   "settings": {k: str(v) for k, v in vars(args).items()}}, args.json)
    return 0


if __name__ == "__main__":
    run(main)
