"""Where a command writes its model: ``--output FILE`` exactly, or a fresh timestamped name in ``--output-dir``.

Either way the path is claimed (``outputs.claim``: a locked ``.NAME.claim`` marker, taken over when the run that
left it is gone) for as long as the run writes it, so two runs never write one file; the caller drops the claim
with ``outputs.release``. ``--output`` replaces only an earlier model, never an input of the run, and only when
asked (``--overwrite``): ``outputs.check_output``, the rule every output follows.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from msmarco_search.core.errors import PipelineError
from msmarco_search.io.atomic import ensure_writable_dir
from msmarco_search.io.outputs import OutputKind, claim_output, output_path, timestamped_path
from msmarco_search.io.safe_load import KIND_TRAINING_STATE, KIND_TWO_TOWER, recognise_json, recognise_tagged
from msmarco_search.training.plots import recognise_png

MODEL_PREFIX, MODEL_SUFFIX = "two_tower_model", ".pt"
MODEL_OUTPUT = OutputKind("two-tower model", recognise_tagged(KIND_TWO_TOWER))
TRAINING_STATE_OUTPUT = OutputKind("training state", recognise_tagged(KIND_TRAINING_STATE))
# the fields every training log holds (``cli.train.training_record``)
TRAINING_LOG_OUTPUT = OutputKind("training log", recognise_json("arguments", "model_config", "finished"))
PLOT_OUTPUT = OutputKind("training plot", recognise_png)


def beside(model_path: Path, what: str, suffix: str) -> Path:
    """A file that goes with a model: ``<stem>_<what><suffix>`` in the model's folder (training log, state)."""
    return model_path.with_name(f"{model_path.stem}_{what}{suffix}")


def companions(model_path: Path) -> dict[Path, OutputKind]:
    """The files written beside a model, each with its kind: they are replaced by the same rule as the model."""
    return {beside(model_path, "training_log", ".json"): TRAINING_LOG_OUTPUT,
            beside(model_path, "training_log", ".png"): PLOT_OUTPUT}


def claim_model_path(output: Path | None, output_dir: Path, overwrite: bool = False,
                     inputs: Iterable[Path | None] = ()) -> Path:
    """``output`` (claimed; an existing file there replaced only when it is an earlier model and ``overwrite``;
    never one of ``inputs``), or a new timestamped path in ``output_dir``. Call ``outputs.release(path)`` when
    the run has written it (or failed)."""
    if output is None:
        return timestamped_path(ensure_writable_dir(output_dir), MODEL_PREFIX, MODEL_SUFFIX)
    output = output_path(output)
    if output.is_dir():
        raise PipelineError("is a folder; --output names the model file to write (or use --output-dir)", output)
    inputs = [given for given in inputs if given is not None]
    ensure_writable_dir(output.parent)
    return claim_output(output, MODEL_OUTPUT, inputs, overwrite, flag="--output")
