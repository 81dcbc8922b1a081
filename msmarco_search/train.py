"""Stage 3's training loop: shuffled batches of token arrays, the loss, two optimisers, a log.

The embedding tables get sparse gradients and their own optimiser (``SparseAdam``) at a higher learning
rate: each step touches only the rows of the words in the batch, which is what makes a 300-d, 100k-word
tower cheap to fine-tune on a CPU. Everything else uses AdamW.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .batches import TripletArrays
from .errors import PipelineError
from .model import TwoTowerModel
from .report import info, progress


@dataclass
class TrainSettings:
    epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 1e-4
    embedding_learning_rate: float = 1e-2
    weight_decay: float = 0.0
    seed: int = 42
    num_workers: int = 0
    log_every: int = 10


@dataclass
class TrainingLog:
    settings: dict[str, Any]
    device: str
    steps: list[dict[str, float]] = field(default_factory=list)
    epochs: list[dict[str, float]] = field(default_factory=list)
    training_seconds: float = 0.0
    examples_seen: int = 0

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["examples_per_second"] = self.examples_seen / self.training_seconds if self.training_seconds else 0.0
        return data


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class _EpochBatches(torch.utils.data.Dataset):
    """Batch ``i`` of one epoch's shuffled order; a Dataset so ``--num-workers`` can collate in parallel."""

    def __init__(self, data: TripletArrays, order: np.ndarray, batch_size: int):
        self.data, self.order, self.batch_size = data, order, batch_size

    def __len__(self) -> int:
        return math.ceil(len(self.order) / self.batch_size)

    def __getitem__(self, index: int):
        return self.data.batch(self.order[index * self.batch_size:(index + 1) * self.batch_size])


def make_optimizers(model: TwoTowerModel, settings: TrainSettings) -> list[torch.optim.Optimizer]:
    sparse = model.sparse_parameters()
    sparse_ids = {id(p) for p in sparse}
    dense = [p for p in model.parameters() if p.requires_grad and id(p) not in sparse_ids]
    optimizers: list[torch.optim.Optimizer] = []
    if dense:
        optimizers.append(torch.optim.AdamW(dense, lr=settings.learning_rate, weight_decay=settings.weight_decay))
    if sparse:
        optimizers.append(torch.optim.SparseAdam(sparse, lr=settings.embedding_learning_rate))
    return optimizers


def train_two_tower(model: TwoTowerModel, data: TripletArrays, loss_fn: nn.Module, settings: TrainSettings,
                    device: torch.device,
                    after_epoch: Callable[[int, TrainingLog], None] | None = None,
                    after_step: Callable[[int, TrainingLog], None] | None = None) -> TrainingLog:
    """Train ``model`` in place for ``settings.epochs`` epochs and return the log.

    ``after_step(step, log)`` and ``after_epoch(epoch, log)`` are called with the model in train mode
    (validation and checkpointing hook in there; a hook that evaluates must restore train mode).
    """
    if len(data) == 0:
        raise PipelineError("there are no triplets to train on")
    seed_everything(settings.seed)
    model.to(device).train()
    optimizers = make_optimizers(model, settings)
    log = TrainingLog(settings=asdict(settings), device=str(device))
    generator = np.random.default_rng(settings.seed)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else _NoAutocast()
    step = 0
    started = time.perf_counter()
    for epoch in range(1, settings.epochs + 1):
        order = generator.permutation(len(data))
        loader = torch.utils.data.DataLoader(_EpochBatches(data, order, settings.batch_size), batch_size=None,
                                             shuffle=False, num_workers=settings.num_workers,
                                             pin_memory=device.type == "cuda")
        epoch_loss, epoch_examples, epoch_start = 0.0, 0, time.perf_counter()
        bar = progress(loader, desc=f"Epoch {epoch}/{settings.epochs}", unit="batch")
        for queries, positives, negatives in bar:
            queries, positives, negatives = queries.to(device), positives.to(device), negatives.to(device)
            with autocast:
                q, p, n = model(queries, positives, negatives)
                loss = loss_fn(q, p, n)
            if not torch.isfinite(loss):
                raise PipelineError(f"training diverged: the loss became {loss.item()} at step {step + 1}; "
                                    "lower --learning-rate")
            for optimizer in optimizers:
                optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for optimizer in optimizers:
                optimizer.step()
            step += 1
            value = loss.item()
            size = len(queries)
            epoch_loss += value * size
            epoch_examples += size
            log.examples_seen += size
            if step % settings.log_every == 0 or epoch_examples == len(data):
                elapsed = time.perf_counter() - epoch_start
                rate = epoch_examples / elapsed if elapsed else 0.0
                log.steps.append({"step": step, "epoch": epoch, "loss": value, "examples_per_second": rate})
                if hasattr(bar, "set_postfix"):
                    bar.set_postfix(loss=f"{value:.4f}", ex_per_s=f"{rate:,.0f}")
            if after_step is not None:
                after_step(step, log)
        elapsed = time.perf_counter() - epoch_start
        log.epochs.append({"epoch": epoch, "loss": epoch_loss / max(epoch_examples, 1), "seconds": elapsed,
                           "examples_per_second": epoch_examples / elapsed if elapsed else 0.0})
        info(f"Epoch {epoch}: loss {log.epochs[-1]['loss']:.4f}, {elapsed:.1f} s, "
             f"{log.epochs[-1]['examples_per_second']:,.0f} triplets/s")
        log.training_seconds = time.perf_counter() - started
        if after_epoch is not None:
            after_epoch(epoch, log)
    log.training_seconds = time.perf_counter() - started
    model.eval()
    return log


class _NoAutocast:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
