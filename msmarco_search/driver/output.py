"""Where a command writes its model: ``--output FILE`` exactly, or a fresh timestamped name in ``--output-dir``.

Either way the path is claimed with an exclusive-create marker (``.NAME.claim``, the one
``fileio.timestamped_path`` makes) for as long as the run writes it, so two runs never write one file; the
caller drops the claim with ``fileio.release``. An existing file is replaced only when asked (``--overwrite``).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import PipelineError
from ..fileio import claim, ensure_writable_dir, release, timestamped_path

MODEL_PREFIX, MODEL_SUFFIX = "two_tower_model", ".pt"


def beside(model_path: Path, what: str, suffix: str) -> Path:
    """A file that goes with a model: ``<stem>_<what><suffix>`` in the model's folder (training log, state)."""
    return model_path.with_name(f"{model_path.stem}_{what}{suffix}")


def claim_model_path(output: Path | None, output_dir: Path, overwrite: bool = False) -> Path:
    """``output`` (claimed; refused if it exists, unless ``overwrite``), or a new timestamped path in
    ``output_dir``. Call ``fileio.release(path)`` when the run has written it (or failed)."""
    if output is None:
        return timestamped_path(ensure_writable_dir(output_dir), MODEL_PREFIX, MODEL_SUFFIX)
    output = Path(output)
    if output.is_dir():
        raise PipelineError("is a folder; --output names the model file to write (or use --output-dir)", output)
    ensure_writable_dir(output.parent)
    if not claim(output):
        raise PipelineError(f"another run is writing this file (if none is, delete .{output.name}.claim beside "
                            "it)", output)
    if output.exists() and not overwrite:
        release(output)
        raise PipelineError("already exists; pass --overwrite to replace it, or choose another --output", output)
    return output
