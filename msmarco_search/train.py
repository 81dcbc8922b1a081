"""Stage 3's training loop: shuffled batches of token arrays, the loss, two optimisers, a log; resumable.

The embedding tables get sparse gradients and their own optimiser (``RowAdam``, SparseAdam's lazy update)
at a higher learning rate: each step touches only the rows of the words in the batch, which is what makes a
300-d, 100k-word tower cheap to fine-tune on a CPU. Everything else uses AdamW.

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
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .batches import TripletArrays
from .distributed import DistributedContext, all_reduce_max, all_reduce_mean, gather_with_gradients
from .errors import PipelineError
from .fileio import KIND_TRAINING_STATE, load_torch, save_torch
from .model import TwoTowerModel
from .optim import RowAdam
from .report import info, progress

STATE_VERSION = 1
# settings a resumed run must share with the interrupted one (the others may change, e.g. --epochs)
RESUME_MUST_MATCH = ("batch_size", "seed", "learning_rate", "embedding_learning_rate", "weight_decay")


@dataclass
class TrainSettings:
    epochs: int = 1
    batch_size: int = 32  # per process; the global batch is world_size x batch_size
    learning_rate: float = 1e-4
    embedding_learning_rate: float = 1e-2
    weight_decay: float = 0.0
    seed: int = 42
    num_workers: int = 0
    log_every: int = 10
    checkpoint_every: int = 0  # steps between training states (0: only at epoch ends and on a signal)
    max_steps: int = 0  # stop after this many steps in all (0: no limit); for benchmarks and smoke runs


@dataclass
class TrainingLog:
    settings: dict[str, Any]
    device: str
    steps: list[dict[str, float]] = field(default_factory=list)
    epochs: list[dict[str, float]] = field(default_factory=list)
    training_seconds: float = 0.0
    examples_seen: int = 0
    world_size: int = 1
    resumed_from_step: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["examples_per_second"] = self.examples_seen / self.training_seconds if self.training_seconds else 0.0
        return data


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM stopped training; a resumable state was saved to ``state_path`` (when there is one)."""

    def __init__(self, signum: int, step: int, state_path: Path | None):
        self.signum, self.step, self.state_path = signum, step, state_path
        super().__init__(f"training interrupted by {signal.Signals(signum).name} after step {step}")


class TrainingDiverged(PipelineError):
    """The loss became NaN or infinite; the last good training state (if any) is kept."""


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


def make_optimizers(model: TwoTowerModel, settings: TrainSettings) -> list[torch.optim.Optimizer]:
    """AdamW for the dense layers; RowAdam at the embedding learning rate for the word-vector tables.

    The tables go to RowAdam whether their gradients are sparse or dense (MPS, DDP on CUDA), so a run
    learns the same way on every device.
    """
    tables: list[nn.Parameter] = []
    for module in model.modules():
        if isinstance(module, (nn.Embedding, nn.EmbeddingBag)) and module.weight.requires_grad:
            if all(module.weight is not p for p in tables):
                tables.append(module.weight)
    table_ids = {id(p) for p in tables}
    dense = [p for p in model.parameters() if p.requires_grad and id(p) not in table_ids]
    optimizers: list[torch.optim.Optimizer] = []
    if dense:
        optimizers.append(torch.optim.AdamW(dense, lr=settings.learning_rate, weight_decay=settings.weight_decay))
    if tables:
        optimizers.append(RowAdam(tables, lr=settings.embedding_learning_rate))
    return optimizers


# ------------------------------------------------------------------------------------------ training state


def _rng_state() -> dict[str, Any]:
    """Every RNG's state as tensors and plain lists, so the file loads with ``weights_only=True``."""
    name, keys, position, has_gauss, cached = np.random.get_state()
    version, python_state, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": name, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(position),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": [version, list(python_state), gauss_next],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["name"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    version, python_state, gauss_next = state["python"]
    random.setstate((version, tuple(python_state), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_training_state(path: str | Path) -> dict[str, Any]:
    """A training state written by ``train_two_tower`` (``weights_only=True``), checked for completeness."""
    state = load_torch(path, KIND_TRAINING_STATE)
    missing = [key for key in ("model", "optimizers", "epoch", "batch", "step", "rng", "log", "settings",
                               "data_size") if key not in state]
    if missing:
        raise PipelineError(f"training state is incomplete (missing {', '.join(missing)})", path)
    return state


@dataclass
class _Position:
    epoch: int = 1
    batch: int = 0  # next global batch of ``epoch``
    step: int = 0
    epoch_loss: float = 0.0  # sum of loss x examples so far in this epoch
    epoch_examples: int = 0
    epoch_seconds: float = 0.0


class _SignalCatcher:
    """Turns SIGINT/SIGTERM into a flag the loop checks after each step (handlers restored on exit)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _SignalCatcher:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._catch)
        return self

    def _catch(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without saving
        self.signum = signum

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def train_two_tower(model: TwoTowerModel, data: TripletArrays, loss_fn: nn.Module, settings: TrainSettings,
                    device: torch.device,
                    after_epoch: Callable[[int, TrainingLog], None] | None = None,
                    after_step: Callable[[int, TrainingLog], None] | None = None,
                    state_path: str | Path | None = None, resume: dict[str, Any] | None = None,
                    state_extra: dict[str, Any] | None = None,
                    context: DistributedContext | None = None) -> TrainingLog:
    """Train ``model`` in place for ``settings.epochs`` epochs and return the log.

    ``after_step(step, log)`` and ``after_epoch(epoch, log)`` are called with the model in train mode
    (validation and checkpointing hook in there; a hook that evaluates must restore train mode).
    ``state_path``: where resumable training states go (none saved without it); ``resume``: a state from
    ``load_training_state`` to continue from; ``state_extra``: more entries stored in each state (the script
    keeps its arguments and model config there). Raises ``TrainingInterrupted`` after SIGINT/SIGTERM (state
    saved) and ``TrainingDiverged`` on a NaN/inf loss (the last good state kept).
    """
    if len(data) == 0:
        raise PipelineError("there are no triplets to train on")
    context = context or DistributedContext()
    state_path = Path(state_path) if state_path is not None else None
    seed_everything(settings.seed)
    model.to(device).train()
    optimizers = make_optimizers(model, settings)
    log = TrainingLog(settings=asdict(settings), device=str(device), world_size=context.world_size)
    position = _Position()
    if resume is not None:
        _check_resumable(resume, settings, len(data), context)
        model.load_state_dict(resume["model"])
        for optimizer, saved in zip(optimizers, resume["optimizers"], strict=True):
            optimizer.load_state_dict(saved)
        log = TrainingLog(**{**resume["log"], "settings": asdict(settings), "device": str(device)})
        position = _Position(**resume["position"]) if "position" in resume else _Position(
            resume["epoch"], resume["batch"], resume["step"])
        log.resumed_from_step.append(position.step)
        _set_rng_state(resume["rng"])
        info(f"Resuming at epoch {position.epoch}, batch {position.batch + 1} (step {position.step + 1})")
    network: nn.Module = model
    if context.enabled:
        network = nn.parallel.DistributedDataParallel(model)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else _NoAutocast()
    check_every_step = device.type != "cuda"  # reading the loss on the host syncs CUDA: there, check when logging
    last_saved: list[Path | None] = [None]

    def save_state(next_position: _Position) -> None:
        if state_path is None:
            return
        if context.is_main:
            state = {"model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                     "optimizers": [o.state_dict() for o in optimizers], "epoch": next_position.epoch,
                     "batch": next_position.batch, "step": next_position.step, "position": asdict(next_position),
                     "rng": _rng_state(), "log": asdict(log), "settings": asdict(settings),
                     "data_size": len(data), "world_size": context.world_size,
                     "state_version": STATE_VERSION, **(state_extra or {})}
            save_torch(state, state_path, KIND_TRAINING_STATE)
        last_saved[0] = state_path
        context.barrier()

    def diverged(step: int) -> TrainingDiverged:
        kept = (f"the last good training state is {last_saved[0]} (resume with --resume and a lower "
                "--learning-rate)" if last_saved[0] else "no training state was saved yet")
        return TrainingDiverged(f"training stopped: the loss became NaN or infinite at or before step {step}; "
                                f"{kept}; lower --learning-rate")

    started = time.perf_counter() - log.training_seconds
    step = position.step
    orders = epoch_orders(len(data), settings.seed, position.epoch)
    with _SignalCatcher() as signals:
        for epoch in range(position.epoch, settings.epochs + 1):
            order = next(orders)
            first = position.batch if epoch == position.epoch else 0
            if epoch != position.epoch:
                position = _Position(epoch=epoch, step=step)
            batches = _EpochBatches(data, order, settings.batch_size, context, first)
            loader = torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False,
                                                 num_workers=settings.num_workers,
                                                 pin_memory=device.type == "cuda")
            epoch_loss = torch.tensor(position.epoch_loss, device=device, dtype=torch.float64)
            bad_loss = torch.zeros((), device=device, dtype=torch.bool)
            epoch_start = time.perf_counter() - position.epoch_seconds
            bar = progress(loader, desc=f"Epoch {epoch}/{settings.epochs}", unit="batch")
            batch_index = first
            for queries, positives, negatives in bar:
                queries, positives, negatives = queries.to(device), positives.to(device), negatives.to(device)
                with autocast:
                    q, p, n = network(queries, positives, negatives)
                    offset = 0
                    if context.enabled:
                        offset = context.rank * len(q)
                        p, n = gather_with_gradients(p), None if n is None else gather_with_gradients(n)
                    loss = loss_fn(q, p, n, label_offset=offset)
                size = len(queries) * context.world_size
                stop_flags = None
                if context.enabled:
                    # one small collective per step: all processes stop (or diverge) at the same step
                    stop_flags = all_reduce_max(torch.tensor(
                        [float(signals.signum or 0), float(not torch.isfinite(loss))]))
                    if stop_flags[1] > 0:
                        raise diverged(step + 1)
                elif check_every_step:
                    if not torch.isfinite(loss):
                        raise diverged(step + 1)
                else:
                    bad_loss |= ~torch.isfinite(loss.detach())
                for optimizer in optimizers:
                    optimizer.zero_grad(set_to_none=True)
                loss.backward()
                for optimizer in optimizers:
                    optimizer.step()
                step += 1
                batch_index += 1
                epoch_loss += loss.detach().double() * size
                position.epoch_examples += size
                log.examples_seen += size
                last_of_epoch = batch_index == batches.total
                if step % settings.log_every == 0 or last_of_epoch:
                    if bool(bad_loss):
                        raise diverged(step)
                    value = float(all_reduce_mean(loss) if context.enabled else loss.detach())
                    elapsed = time.perf_counter() - epoch_start
                    rate = position.epoch_examples / elapsed if elapsed else 0.0
                    log.steps.append({"step": step, "epoch": epoch, "loss": value, "examples_per_second": rate})
                    if hasattr(bar, "set_postfix"):
                        bar.set_postfix(loss=f"{value:.4f}", ex_per_s=f"{rate:,.0f}")
                if after_step is not None:
                    after_step(step, log)
                interrupted = signals.signum if stop_flags is None else int(stop_flags[0]) or None
                periodic = settings.checkpoint_every and step % settings.checkpoint_every == 0
                if interrupted or (periodic and not last_of_epoch):
                    if bool(bad_loss):
                        raise diverged(step)
                    position.batch, position.step = batch_index, step
                    position.epoch_loss = float(epoch_loss)
                    position.epoch_seconds = time.perf_counter() - epoch_start
                    log.training_seconds = time.perf_counter() - started
                    save_state(position)
                    if interrupted:
                        raise TrainingInterrupted(interrupted, step, state_path)
                if settings.max_steps and step >= settings.max_steps:
                    break
            if bool(bad_loss):
                raise diverged(step)
            elapsed = time.perf_counter() - epoch_start
            examples = position.epoch_examples
            total_loss = float(all_reduce_mean(epoch_loss) if context.enabled else epoch_loss)
            log.epochs.append({"epoch": epoch, "loss": total_loss / max(examples, 1), "seconds": elapsed,
                               "examples_per_second": examples / elapsed if elapsed else 0.0})
            info(f"Epoch {epoch}: loss {log.epochs[-1]['loss']:.4f}, {elapsed:.1f} s, "
                 f"{log.epochs[-1]['examples_per_second']:,.0f} triplets/s")
            log.training_seconds = time.perf_counter() - started
            if after_epoch is not None:
                after_epoch(epoch, log)
            if settings.max_steps and step >= settings.max_steps:
                break
            if epoch < settings.epochs:
                save_state(_Position(epoch=epoch + 1, step=step))
    log.training_seconds = time.perf_counter() - started
    model.eval()
    return log


def _check_resumable(state: dict[str, Any], settings: TrainSettings, data_size: int,
                     context: DistributedContext) -> None:
    saved = state["settings"]
    different = [f"{name} {saved.get(name)} -> {getattr(settings, name)}" for name in RESUME_MUST_MATCH
                 if saved.get(name) != getattr(settings, name)]
    if state["data_size"] != data_size:
        different.append(f"{state['data_size']} -> {data_size} triplets")
    if state.get("world_size", 1) != context.world_size:
        different.append(f"{state.get('world_size', 1)} -> {context.world_size} processes")
    if different:
        raise PipelineError("cannot resume: this run differs from the interrupted one (" + "; ".join(different)
                            + "); run the same command with --resume")
    if state["epoch"] > settings.epochs:
        raise PipelineError(f"cannot resume: the training state is at epoch {state['epoch']}, past --epochs "
                            f"{settings.epochs}")


class _NoAutocast:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
