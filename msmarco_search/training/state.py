"""A training run's settings, its log, and the resumable training state (what an interrupted run writes and a
resumed one checks before it continues)."""

from __future__ import annotations

import math
import random
import signal
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from msmarco_search.core.errors import PipelineError, short
from msmarco_search.io.safe_load import KIND_TRAINING_STATE, load_torch
from msmarco_search.training.distributed import (
    DistributedContext,
)

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
    # one process, mean towers: update the word tables' rows in place (False: through autograd, as under DDP;
    # the same maths, for tests and benchmarks)
    row_updates: bool = True


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


# ------------------------------------------------------------------------------------------ training state


def rng_state() -> dict[str, Any]:
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


def set_rng_state(state: dict[str, Any]) -> None:
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
class Position:
    epoch: int = 1
    batch: int = 0  # next global batch of ``epoch``
    step: int = 0
    epoch_loss: float = 0.0  # sum of loss x examples so far in this epoch
    epoch_examples: int = 0
    epoch_seconds: float = 0.0


class SignalCatcher:
    """Turns SIGINT/SIGTERM into a flag the loop checks after each step (handlers restored on exit)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> SignalCatcher:
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


def check_resumable(state: dict[str, Any], settings: TrainSettings, data_size: int,
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


_STEP_LIMIT = 2**63 - 1  # steps and examples are counted in int64 tensors and numpy arrays


def check_position(position: Position, settings: TrainSettings) -> None:
    """A resumed position's numbers are ones the loop can hold: whole numbers within this run's epochs and int64,
    finite sums: an edited state's ``batch`` of 1e30, or an epoch of 1.5, would fail inside the loop."""
    counts = {"epoch": (position.epoch, 1, settings.epochs), "batch": (position.batch, 0, _STEP_LIMIT),
              "step": (position.step, 0, _STEP_LIMIT), "epoch_examples": (position.epoch_examples, 0, _STEP_LIMIT)}
    for name, (value, low, high) in counts.items():
        if type(value) is not int or not low <= value <= high:
            raise ValueError(f"its position's {name} is {short(value, 24)}, not a whole number from {low} to {high}")
    for name in ("epoch_loss", "epoch_seconds"):
        value = getattr(position, name)
        if type(value) not in (int, float) or not math.isfinite(value) or value < 0:
            raise ValueError(f"its position's {name} is {short(value, 24)}, not a finite number of at least 0")
