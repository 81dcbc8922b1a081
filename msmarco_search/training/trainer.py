"""Stage 3's training loop: shuffled batches of token arrays, the loss, two optimisers, a log; resumable.

The embedding tables get their own optimiser (``RowAdam``, SparseAdam's lazy update) at a higher learning
rate: each step touches only the rows of the words in the batch, which is what makes a 300-d, 100k-word
tower cheap to fine-tune on a CPU. In one process those rows are gathered into dense leaves and updated in
place (``TwoTowerModel.forward_rows``); under DDP the tables keep sparse (gloo) or dense (NCCL) gradients
in autograd. Everything else uses AdamW.

Resuming: every ``checkpoint_every`` steps, at each epoch end, and when SIGINT/SIGTERM arrives, the loop
writes a training state (model, optimisers, epoch, position in the epoch, RNG states, log so far) atomically
to ``state_path``. The batch order of epoch ``e`` is the ``e``-th permutation drawn from a generator seeded
with ``seed``, so a resumed run takes exactly the batches the interrupted run had left and ends with the same
weights.

Data parallel (``torchrun``): each process takes its slice of every global batch of ``world_size x
batch_size`` triplets, passages are gathered from all processes (with gradients) for the in-batch softmax,
and DDP averages the gradients: the same update as one process with the global batch.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from msmarco_search.core.errors import PipelineError, first_line
from msmarco_search.core.report import info, progress
from msmarco_search.data.tokens import TokenBatch, TripletArrays
from msmarco_search.io.safe_load import KIND_TRAINING_STATE, save_torch
from msmarco_search.training.distributed import (
    DistributedContext,
    all_reduce_max,
    all_reduce_mean,
    gather_with_gradients,
)
from msmarco_search.training.model import GatheredRows, TwoTowerModel
from msmarco_search.training.optim import RowAdam
from msmarco_search.training.state import (
    STATE_VERSION,
    Position,
    SignalCatcher,
    TrainingDiverged,
    TrainingInterrupted,
    TrainingLog,
    TrainSettings,
    check_position,
    check_resumable,
    rng_state,
    set_rng_state,
)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def epoch_orders(size: int, seed: int, first_epoch: int = 1):
    """The shuffled triplet order of each epoch from ``first_epoch`` on: successive permutations of one
    generator seeded with ``seed`` (so a resumed run, which skips the earlier ones, gets the same orders)."""
    generator = np.random.default_rng(seed)
    for _ in range(1, first_epoch):
        generator.permutation(size)
    while True:
        yield generator.permutation(size)


def epoch_order(size: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled triplet order of ``epoch`` alone."""
    return next(epoch_orders(size, seed, epoch))


class _EpochBatches(torch.utils.data.Dataset):
    """This process's part of global batch ``first + i`` of an epoch; a Dataset so workers can collate."""

    def __init__(self, data: TripletArrays, order: np.ndarray, batch_size: int, context: DistributedContext,
                 first: int = 0):
        self.data, self.order, self.batch_size, self.context, self.first = data, order, batch_size, context, first
        global_batch = batch_size * context.world_size
        # under DDP every process needs a full slice (the passage gather needs equal shapes): drop a ragged tail
        total = len(order) // global_batch if context.enabled else math.ceil(len(order) / global_batch)
        self.global_batch, self.total = global_batch, total

    def __len__(self) -> int:
        return max(self.total - self.first, 0)

    def __getitem__(self, index: int):
        start = (self.first + index) * self.global_batch + self.context.rank * self.batch_size
        return self.data.batch(self.order[start:start + self.batch_size])


class Trainer:
    """One training run of ``model`` on ``data``: ``fit()`` trains in place and returns the log.

    The loop is ``fit`` (epochs, an end-of-epoch state) -> ``run_epoch`` (batches, logging, hooks, periodic
    states, signals) -> ``step`` (forward, loss, the finite-loss check, backward, optimiser steps). It runs the
    same in one process and under ``torchrun`` (pass ``context``: the model is wrapped in DDP, passages are
    gathered from all processes, and only the first process writes states). See ``train_two_tower`` for the
    hooks and the training state.
    """

    def __init__(self, model: TwoTowerModel, data: TripletArrays, loss_fn: nn.Module, settings: TrainSettings,
                 device: torch.device, context: DistributedContext | None = None,
                 state_path: str | Path | None = None, resume: dict[str, Any] | None = None,
                 state_extra: dict[str, Any] | None = None,
                 after_step: Callable[[int, TrainingLog], None] | None = None,
                 after_epoch: Callable[[int, TrainingLog], None] | None = None):
        if len(data) == 0:
            raise PipelineError("there are no triplets to train on")
        self.model, self.data, self.loss_fn, self.settings, self.device = model, data, loss_fn, settings, device
        self.context = context or DistributedContext()
        self.state_path = Path(state_path) if state_path is not None else None
        self.state_extra = state_extra or {}
        self.after_step, self.after_epoch = after_step, after_epoch
        seed_everything(settings.seed)
        model.to(device).train()
        self.optimizers = model.configure_optimizers(settings.learning_rate, settings.embedding_learning_rate,
                                                     settings.weight_decay)
        self.log = TrainingLog(settings=asdict(settings), device=str(device), world_size=self.context.world_size)
        self.position = Position()
        if resume is not None:
            self._resume(resume)
        self.step_count = self.position.step
        self.last_saved: Path | None = None
        self.network: nn.Module = nn.parallel.DistributedDataParallel(model) if self.context.enabled else model
        # One process: the word tables' rows are gathered into dense leaves and updated in place (no sparse
        # autograd tensors, no coalescing: the tables' update 55 -> 38 ms a step, 1.14x the triplets/s on a
        # CPU, docs/experiments.md). Under DDP the tables stay in autograd, so DDP all-reduces their gradients
        # (sparse on gloo, dense on NCCL).
        self.row_adam = next((o for o in self.optimizers if isinstance(o, RowAdam)), None)
        self.row_updates = settings.row_updates and model.row_updates_work and not self.context.enabled
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else _NoAutocast()
        # reading the loss on the host syncs CUDA: there (one process) the check waits for logging or saving
        self.check_every_step = device.type != "cuda" or self.context.enabled
        self.bad_loss = torch.zeros((), device=device, dtype=torch.bool)
        self.signals = SignalCatcher()
        self.agreed_signal: int | None = None  # under DDP: the signal any process caught, as of this step
        self.started = self.epoch_start = 0.0  # perf_counter() at the start of training / of this epoch
        self.epoch_loss = torch.zeros((), device=device, dtype=torch.float64)  # sum of loss x examples

    def _resume(self, state: dict[str, Any]) -> None:
        try:
            self._restore(state)
        except (TypeError, KeyError, ValueError, RuntimeError, AttributeError, IndexError) as error:
            # an edited state, or one of another version: its fields of the wrong type or shape were tracebacks
            raise PipelineError(f"training state is damaged or does not fit this run ({first_line(error)}); start "
                                "over without --resume", self.state_path) from error

    def _restore(self, state: dict[str, Any]) -> None:
        check_resumable(state, self.settings, len(self.data), self.context)
        self.model.load_state_dict(state["model"])
        for optimizer, saved in zip(self.optimizers, state["optimizers"], strict=True):
            optimizer.load_state_dict(saved)
        self.log = TrainingLog(**{**state["log"], "settings": asdict(self.settings), "device": str(self.device)})
        self.position = Position(**state["position"]) if "position" in state else Position(
            state["epoch"], state["batch"], state["step"])
        check_position(self.position, self.settings)
        self.log.resumed_from_step.append(self.position.step)
        set_rng_state(state["rng"])
        info(f"Resuming at epoch {self.position.epoch}, batch {self.position.batch + 1} "
             f"(step {self.position.step + 1})")

    def fit(self) -> TrainingLog:
        self.started = time.perf_counter() - self.log.training_seconds
        orders = epoch_orders(len(self.data), self.settings.seed, self.position.epoch)
        with self.signals:
            for epoch in range(self.position.epoch, self.settings.epochs + 1):
                if epoch != self.position.epoch:
                    self.position = Position(epoch=epoch, step=self.step_count)
                self.run_epoch(next(orders))
                if self._done():
                    break
                if epoch < self.settings.epochs:
                    self.save_state(Position(epoch=epoch + 1, step=self.step_count))
        self.log.training_seconds = time.perf_counter() - self.started
        self.model.eval()
        return self.log

    def run_epoch(self, order: np.ndarray) -> None:
        """The rest of epoch ``self.position.epoch`` (from ``self.position.batch`` on), in ``order``."""
        settings, position = self.settings, self.position
        batches = _EpochBatches(self.data, order, settings.batch_size, self.context, position.batch)
        loader = torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False,
                                             num_workers=settings.num_workers, pin_memory=self.device.type == "cuda")
        self.epoch_loss = torch.tensor(position.epoch_loss, device=self.device, dtype=torch.float64)
        self.epoch_start = time.perf_counter() - position.epoch_seconds
        bar = progress(loader, desc=f"Epoch {position.epoch}/{settings.epochs}", unit="batch")
        for batch in bar:
            loss = self.step(batch)
            position.batch += 1
            last_of_epoch = position.batch == batches.total
            if self.step_count % settings.log_every == 0 or last_of_epoch:
                self._log_step(loss, bar)
            if self.after_step is not None:
                self.after_step(self.step_count, self.log)
            interrupted = self.agreed_signal if self.context.enabled else self.signals.signum
            periodic = settings.checkpoint_every and self.step_count % settings.checkpoint_every == 0
            if interrupted or (periodic and not last_of_epoch):
                self._save_position()
                if interrupted:
                    raise TrainingInterrupted(interrupted, self.step_count, self.state_path)
            if self._done():
                break
        self._end_epoch()

    def step(self, batch: tuple[TokenBatch, ...]) -> torch.Tensor:
        """One optimisation step on ``batch`` (its first three parts: queries, positives, negatives); returns its
        loss."""
        loss, gathered = self.forward_loss(batch)
        self._check_finite(loss)
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for optimizer in self.optimizers:
            optimizer.step()
        for rows in gathered:
            if rows.values.grad is not None:
                self.row_adam.update_rows(rows.table, rows.rows, rows.values.detach(), rows.values.grad)
        self.step_count += 1
        size = len(batch[0]) * self.context.world_size
        self.epoch_loss += loss.detach().double() * size
        self.position.epoch_examples += size
        self.log.examples_seen += size
        return loss

    def forward_loss(self, batch: tuple[TokenBatch, ...]) -> tuple[torch.Tensor, list[GatheredRows]]:
        """The loss of ``batch`` and the word-table rows it read (``GatheredRows``, for the row updates; none
        when the tables stay in autograd). A subclass that trains with another objective overrides this alone
        (``benchmarks/levers_dl21.py`` adds a distillation term), and the loop around it stays the same."""
        queries, positives, negatives = (part.to(self.device) for part in batch[:3])
        teacher = tuple(part.to(self.device) for part in batch[3]) if len(batch) > 3 else None
        gathered: list[GatheredRows] = []
        with self.autocast:
            if self.row_updates:
                q, p, n, gathered = self.model.forward_rows(queries, positives, negatives)
            else:
                q, p, n = self.network(queries, positives, negatives)
            offset = 0
            if self.context.enabled:
                offset = self.context.rank * len(q)
                p, n = gather_with_gradients(p), None if n is None else gather_with_gradients(n)
                if teacher is not None:  # the teacher's candidates, gathered like the student's
                    teacher = (teacher[0], gather_with_gradients(teacher[1]), gather_with_gradients(teacher[2]))
            # the data carries a teacher's vectors only when its loss distils them (train_two_tower_from_triplets)
            extra = {} if teacher is None else {"teacher": teacher}
            loss = self.loss_fn(q, p, n, label_offset=offset, **extra)
        return loss, gathered

    def _check_finite(self, loss: torch.Tensor) -> None:
        """The one finite-loss check: note a NaN/inf loss, and stop now unless on one CUDA device.

        Under DDP one small collective per step carries this flag and the signal flag: all processes stop
        (or diverge) at the same step.
        """
        if self.context.enabled:
            flags = all_reduce_max(torch.tensor([float(self.signals.signum or 0), float(not torch.isfinite(loss))],
                                                device=self.device))
            self.agreed_signal = int(flags[0]) or None
            self.bad_loss |= bool(flags[1] > 0)
        else:
            self.bad_loss |= ~torch.isfinite(loss.detach())
        if self.check_every_step:
            self.raise_if_diverged(self.step_count + 1)

    def raise_if_diverged(self, step: int) -> None:
        if bool(self.bad_loss):
            kept = (f"the last good training state is {self.last_saved} (resume with --resume and a lower "
                    "--learning-rate)" if self.last_saved else "no training state was saved yet")
            raise TrainingDiverged(f"training stopped: the loss became NaN or infinite at or before step {step}; "
                                   f"{kept}; lower --learning-rate")

    def _log_step(self, loss: torch.Tensor, bar: Any) -> None:
        self.raise_if_diverged(self.step_count)
        value = float(all_reduce_mean(loss) if self.context.enabled else loss.detach())
        elapsed = time.perf_counter() - self.epoch_start
        rate = self.position.epoch_examples / elapsed if elapsed else 0.0
        self.log.steps.append({"step": self.step_count, "epoch": self.position.epoch, "loss": value,
                               "examples_per_second": rate})
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{value:.4f}", ex_per_s=f"{rate:,.0f}")

    def _save_position(self) -> None:
        """A state that resumes at the next batch of this epoch."""
        self.raise_if_diverged(self.step_count)
        self.position.step = self.step_count
        self.position.epoch_loss = float(self.epoch_loss)
        self.position.epoch_seconds = time.perf_counter() - self.epoch_start
        self.log.training_seconds = time.perf_counter() - self.started
        self.save_state(self.position)

    def _end_epoch(self) -> None:
        self.raise_if_diverged(self.step_count)
        elapsed = time.perf_counter() - self.epoch_start
        examples = self.position.epoch_examples
        total_loss = float(all_reduce_mean(self.epoch_loss) if self.context.enabled else self.epoch_loss)
        epoch = {"epoch": self.position.epoch, "loss": total_loss / max(examples, 1), "seconds": elapsed,
                 "examples_per_second": examples / elapsed if elapsed else 0.0}
        self.log.epochs.append(epoch)
        info(f"Epoch {epoch['epoch']}: loss {epoch['loss']:.4f}, {elapsed:.1f} s, "
             f"{epoch['examples_per_second']:,.0f} triplets/s")
        self.log.training_seconds = time.perf_counter() - self.started
        if self.after_epoch is not None:
            self.after_epoch(self.position.epoch, self.log)

    def _done(self) -> bool:
        return bool(self.settings.max_steps) and self.step_count >= self.settings.max_steps

    def save_state(self, position: Position) -> None:
        """Write a training state that resumes at ``position`` (the first process writes; all wait for it)."""
        if self.state_path is None:
            return
        if self.context.is_main:
            state = {"model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                     "optimizers": [o.state_dict() for o in self.optimizers], "epoch": position.epoch,
                     "batch": position.batch, "step": position.step, "position": asdict(position),
                     "rng": rng_state(), "log": asdict(self.log), "settings": asdict(self.settings),
                     "data_size": len(self.data), "world_size": self.context.world_size,
                     "state_version": STATE_VERSION, **self.state_extra}
            save_torch(state, self.state_path, KIND_TRAINING_STATE)
        self.last_saved = self.state_path
        self.context.barrier()


def train_two_tower(model: TwoTowerModel, data: TripletArrays, loss_fn: nn.Module, settings: TrainSettings,
                    device: torch.device,
                    after_epoch: Callable[[int, TrainingLog], None] | None = None,
                    after_step: Callable[[int, TrainingLog], None] | None = None,
                    state_path: str | Path | None = None, resume: dict[str, Any] | None = None,
                    state_extra: dict[str, Any] | None = None,
                    context: DistributedContext | None = None) -> TrainingLog:
    """Train ``model`` in place for ``settings.epochs`` epochs and return the log (``Trainer(...).fit()``).

    ``after_step(step, log)`` and ``after_epoch(epoch, log)`` are called with the model in train mode
    (validation and checkpointing hook in there; a hook that evaluates must restore train mode).
    ``state_path``: where resumable training states go (none saved without it); ``resume``: a state from
    ``load_training_state`` to continue from; ``state_extra``: more entries stored in each state (the script
    keeps its arguments and model config there). Raises ``TrainingInterrupted`` after SIGINT/SIGTERM (state
    saved) and ``TrainingDiverged`` on a NaN/inf loss (the last good state kept).
    """
    return Trainer(model, data, loss_fn, settings, device, context=context, state_path=state_path, resume=resume,
                   state_extra=state_extra, after_step=after_step, after_epoch=after_epoch).fit()


class _NoAutocast:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
