"""Pick the compute device: CUDA, then Apple MPS, then CPU, unless the user names one."""

from __future__ import annotations

from typing import TYPE_CHECKING

from msmarco_search.core.errors import PipelineError

if TYPE_CHECKING:  # torch is imported when a device is picked: the commands' --help imports this module
    import torch


def pick_device(requested: str | None = None) -> torch.device:
    """Return ``requested`` if it exists on this machine, else the best available device."""
    import torch

    if requested in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(requested)
    except (RuntimeError, ValueError) as error:
        raise PipelineError(f"unknown device {requested!r} (use auto, cpu, cuda, cuda:N or mps)") from error
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise PipelineError(f"device {requested!r} asked for, but CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise PipelineError(f"device {requested!r} asked for, but only {torch.cuda.device_count()} GPU(s) exist")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise PipelineError(f"device {requested!r} asked for, but MPS is not available on this machine")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise PipelineError(f"unsupported device {requested!r} (use auto, cpu, cuda, cuda:N or mps)")
    return device
