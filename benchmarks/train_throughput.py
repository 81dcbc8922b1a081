"""Training throughput side by side: the project's two-tower trainer against sentence-transformers'.

Each measurement is its own process (same triplets, same batch, same thread count), and the rounds are
interleaved (round 1: every system, round 2: every system, ...), so a shared machine's load falls on all of
them alike; the table gives the median triplets/s of each system and its ratio to sentence-transformers.

Systems:

- ``trainable``: the project's mean towers (separate query and passage towers, word weights, linear heads),
  trainable word vectors, the in-batch softmax with the explicit negatives (``train.Trainer``, one process).
- ``frozen``: the same with the word vectors frozen (``--freeze-embeddings``; the word weights still learn).
- ``autograd``: ``trainable`` with the word tables' lookups in autograd (sparse gradients + ``RowAdam.step``),
  the path DDP takes, and the only one before row updates (``TrainSettings(row_updates=False)``).
- ``st``: sentence-transformers' ``StaticEmbedding`` (the same vocabulary, tokens and start vectors) with
  ``MultipleNegativesRankingLoss`` on (anchor, positive, negative) through ``SentenceTransformerTrainer``
  (its collator tokenises each batch, as that trainer always does; the project tokenises once, before).
- ``before``: ``trainable`` run against another checkout's ``msmarco_search`` (``--before DIR``).

Rates exclude start-up and the first ``--warmup`` steps: (steps after the warm-up) x batch / their seconds.

    uv run benchmarks/train_throughput.py --triplets TRIPLETS.pkl --embeddings msmarco_word2vec.pt
    uv run benchmarks/train_throughput.py --triplets triples.tsv --systems trainable --device cuda \\
        --batch-size 1024 --rounds 1     # the GPU check (bf16 autocast on CUDA)

Without ``--embeddings`` the word vectors are random, over the words of the triplets (speed only).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SYSTEMS = ("trainable", "frozen", "autograd", "st", "before")
LABELS = {"trainable": "project, trainable word vectors (row updates)",
          "frozen": "project, frozen word vectors",
          "autograd": "project, trainable, tables in autograd (sparse gradients; the DDP path)",
          "st": "sentence-transformers StaticEmbedding + MultipleNegativesRankingLoss",
          "before": "project before (--before checkout), trainable"}


def _texts(path: Path, count: int):
    """The first ``count`` triplets of a .pkl (generate_triplets.py) or a triples TSV, as texts."""
    from msmarco_search.streaming import triples_tsv_head
    from msmarco_search.triplets import load_triplets

    if path.suffix == ".pkl":
        triplets = load_triplets(path)
        return triplets.queries[:count], triplets.positives[:count], triplets.negatives[:count]
    triplets = triples_tsv_head(path, count)
    return triplets.queries, triplets.positives, triplets.negatives


def _vectors(args: argparse.Namespace, texts):
    import torch

    from msmarco_search.cbow import load_embeddings
    from msmarco_search.text import tokenize
    from msmarco_search.vocab import Vocabulary

    if args.embeddings:
        matrix, vocab, _ = load_embeddings(args.embeddings)
        return matrix, vocab
    words = sorted({word for side in texts for text in side for word in tokenize(text)})
    vocab = Vocabulary.from_words(words)
    return torch.randn(len(vocab), args.dim, generator=torch.Generator().manual_seed(0)) * 0.1, vocab


def _project(args: argparse.Namespace, texts, matrix, vocab, system: str) -> float:
    import torch

    from msmarco_search.batches import TripletArrays
    from msmarco_search.losses import InBatchSoftmaxLoss
    from msmarco_search.model import TwoTowerConfig, TwoTowerModel
    from msmarco_search.train import TrainSettings, train_two_tower

    device = torch.device(args.device)
    data = TripletArrays(vocab.encode_many(texts[0], 32), vocab.encode_many(texts[1], 128),
                         vocab.encode_many(texts[2], 128))
    config = TwoTowerConfig(vocab_size=len(vocab), embedding_dim=matrix.shape[1],
                            freeze_embeddings=system == "frozen")
    model = TwoTowerModel(config, vocab, matrix)
    settings = {"batch_size": args.batch_size, "max_steps": args.warmup + args.steps, "log_every": 10 ** 9}
    if system == "autograd":
        settings["row_updates"] = False
    times: list[float] = []

    def clock(step: int, log) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter())

    train_two_tower(model, data, InBatchSoftmaxLoss(20.0), TrainSettings(**settings), device, after_step=clock)
    return args.steps * args.batch_size / (times[-1] - times[args.warmup - 1])


def _sentence_transformers(args: argparse.Namespace, texts, matrix, vocab) -> float:
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.losses import MultipleNegativesRankingLoss
    from transformers import TrainerCallback

    from msmarco_search.export import static_embedding
    from msmarco_search.model import TwoTowerConfig, TwoTowerModel

    tower = TwoTowerModel(TwoTowerConfig(vocab_size=len(vocab), embedding_dim=matrix.shape[1], token_weights=False),
                          vocab, matrix).query_tower
    model = SentenceTransformer(modules=[static_embedding(tower, vocab, 128)], device=args.device)
    dataset = Dataset.from_dict({"anchor": list(texts[0]), "positive": list(texts[1]), "negative": list(texts[2])})
    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *_, **__):
            times.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as output:
        training = SentenceTransformerTrainingArguments(
            output_dir=output, per_device_train_batch_size=args.batch_size, max_steps=args.warmup + args.steps,
            learning_rate=1e-2, save_strategy="no", report_to="none", logging_steps=10 ** 9,
            dataloader_num_workers=0, use_cpu=args.device == "cpu", disable_tqdm=True, seed=42)
        trainer = SentenceTransformerTrainer(model=model, args=training, train_dataset=dataset,
                                             loss=MultipleNegativesRankingLoss(model, scale=20.0),
                                             callbacks=[Clock()])
        trainer.train()
    return args.steps * args.batch_size / (times[-1] - times[args.warmup - 1])


def run_stage(args: argparse.Namespace) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    texts = _texts(args.triplets, (args.warmup + args.steps) * args.batch_size)
    if len(texts[0]) < (args.warmup + args.steps) * args.batch_size:
        raise SystemExit(f"{args.triplets}: {len(texts[0])} triplets, fewer than (warmup + steps) x batch")
    matrix, vocab = _vectors(args, texts)
    if args.stage == "st":
        rate = _sentence_transformers(args, texts, matrix, vocab)
    else:
        rate = _project(args, texts, matrix, vocab, "trainable" if args.stage == "before" else args.stage)
    print("result " + json.dumps({"system": args.stage, "triplets_per_second": rate}), flush=True)


def _stage_command(args: argparse.Namespace, system: str) -> tuple[list[str], dict[str, str], Path]:
    command = [sys.executable, str(Path(__file__).resolve()), "--stage", system, "--triplets", str(args.triplets),
               "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--threads", str(args.threads), "--device", args.device, "--dim", str(args.dim)]
    if args.embeddings:
        command += ["--embeddings", str(args.embeddings)]
    env = {**os.environ, "MSMARCO_SEARCH_NO_PROGRESS": "1", "TOKENIZERS_PARALLELISM": "false"}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    cwd = ROOT
    if system == "before":  # the other checkout's package first on the path
        cwd = Path(args.before).resolve()
        env["PYTHONPATH"] = str(cwd)
    return command, env, cwd


def _load() -> float:
    return os.getloadavg()[0]


def run_all(args: argparse.Namespace) -> dict[str, list[float]]:
    rates: dict[str, list[float]] = {system: [] for system in args.systems}
    loads: list[float] = []
    for round_number in range(1, args.rounds + 1):
        for system in args.systems:
            command, env, cwd = _stage_command(args, system)
            loads.append(_load())
            done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True)
            result = [line for line in done.stdout.splitlines() if line.startswith("result ")]
            if done.returncode or not result:
                raise SystemExit(f"{system} failed ({shlex.join(command)}):\n{(done.stdout + done.stderr)[-3000:]}")
            rate = json.loads(result[-1][len("result "):])["triplets_per_second"]
            rates[system].append(rate)
            print(f"round {round_number} {system}: {rate:,.0f} triplets/s (load {loads[-1]:.1f})", flush=True)
    rates["_load"] = loads
    return rates


def table(rates: dict[str, list[float]], args: argparse.Namespace) -> str:
    reference = statistics.median(rates["st"]) if "st" in rates else None
    before = statistics.median(rates["before"]) if "before" in rates else None
    header = "| system | " + " | ".join(f"round {i + 1}" for i in range(args.rounds)) + " | median |"
    if reference:
        header += " x sentence-transformers |"
    if before:
        header += " x before |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for system in args.systems:
        median = statistics.median(rates[system])
        row = f"| {LABELS[system]} | " + " | ".join(f"{r:,.0f}" for r in rates[system]) + f" | **{median:,.0f}** |"
        if reference:
            row += f" {median / reference:.2f} |"
        if before:
            row += f" {median / before:.2f} |"
        lines.append(row)
    load = rates["_load"]
    lines.append(f"\ntriplets/s; batch {args.batch_size}, {args.steps} steps after {args.warmup} warm-up steps, "
                 f"{args.threads or 'all'} thread(s), device {args.device}; "
                 f"load (1 min) {min(load):.1f}-{max(load):.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--triplets", type=Path, required=True, help="a generate_triplets.py .pkl or a triples TSV")
    parser.add_argument("--embeddings", type=Path, help="CBOW vectors (.pt); default: random, over the triplets' words")
    parser.add_argument("--systems", nargs="+", choices=SYSTEMS, default=["trainable", "frozen", "st"])
    parser.add_argument("--before", help="another checkout of the project, for the 'before' system")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=40, help="timed steps per measurement (40)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (5)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported (3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1; 0: PyTorch's default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dim", type=int, default=300, help="dimension of the random vectors (300)")
    parser.add_argument("--json", type=Path, help="also write the rates here")
    parser.add_argument("--stage", choices=SYSTEMS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be at least 1")
    if args.stage:
        run_stage(args)
        return 0
    if "before" in args.systems and not args.before:
        parser.error("the 'before' system needs --before DIR")
    rates = run_all(args)
    print()
    print(table(rates, args))
    if args.json:
        args.json.write_text(json.dumps({"rates": rates, "settings": {k: str(v) for k, v in vars(args).items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
