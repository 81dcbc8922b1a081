"""A PNG of a training log: the loss per step (and per epoch), and validation MRR@10 (of judged or pseudo-queries)
as training goes."""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .fileio import atomic_write


def plot_training_log(record: Mapping[str, Any], path: str | Path) -> Path:
    """Draw ``record`` (the training log JSON's content) into ``path``; headless (the Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    steps = record.get("steps", [])
    epochs = record.get("epochs", [])
    validation = (record.get("validation") or {}).get("entries", [])
    figure = Figure(figsize=(11, 4), dpi=100)
    loss_axes, valid_axes = figure.subplots(1, 2)
    if steps:
        loss_axes.plot([s["step"] for s in steps], [s["loss"] for s in steps], lw=1, label="loss (logged steps)")
    last_step = {}
    for entry in steps:
        last_step[entry["epoch"]] = entry["step"]
    points = [(last_step[e["epoch"]], e["loss"]) for e in epochs if e["epoch"] in last_step]
    if points:
        loss_axes.plot(*zip(*points, strict=True), "o-", label="epoch mean loss")
    loss_axes.set(xlabel="step", ylabel="training loss", title="Training loss")
    loss_axes.grid(alpha=0.3)
    if steps or points:  # a run shorter than --log-every logged nothing: no legend to draw
        loss_axes.legend()
    if validation:
        metric = record["validation"].get("metric", "MRR@10")
        inner = [v for v in validation if not v["end_of_epoch"]]
        ends = [v for v in validation if v["end_of_epoch"]]
        if inner:
            valid_axes.plot([v["step"] for v in validation], [v[metric] for v in validation], lw=1,
                            label="every N steps")
        valid_axes.plot([v["step"] for v in ends], [v[metric] for v in ends], "o-", label="end of epoch")
        best = record["validation"].get("best")
        if best:
            valid_axes.plot([best["step"]], [best[metric]], "*", ms=14, label=f"best ({best[metric]:.3f})")
        # the label says what was measured: "pseudo-query MRR@10" when the held-out queries are inverse-cloze ones
        label = record["validation"].get("label", metric)
        kind = record["validation"].get("queries_kind", "queries")
        valid_axes.set(xlabel="step", ylabel=label,
                       title=f"Validation {label}\n({record['validation'].get('queries', '?')} held-out {kind})")
        valid_axes.legend()
    else:
        valid_axes.text(0.5, 0.5, "no validation set", ha="center", va="center", transform=valid_axes.transAxes)
        valid_axes.set(title="Validation")
    valid_axes.grid(alpha=0.3)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return atomic_write(path, lambda tmp: tmp.write_bytes(buffer.getvalue()))


def recognise_png(path: Path) -> str | None:
    """``fileio.OutputKind`` recogniser of a plot: a PNG file (None), or why not."""
    with open(path, "rb") as handle:
        return None if handle.read(8) == b"\x89PNG\r\n\x1a\n" else "it is not a PNG image"
