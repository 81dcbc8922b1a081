"""``RowAdam``: the lazy Adam of ``torch.optim.SparseAdam``, computed on the rows a batch touched.

Same update as SparseAdam (only the rows present in a gradient move, and only their moments decay), but
SparseAdam builds three sparse tensors and calls ``sparse_mask`` per step, which on a CPU costs ~10x the
arithmetic itself. Here a step is: gather the moment rows of the touched rows (both moments live in one
``[2, rows, dim]`` buffer, so that is one gather and one scatter), run torch's fused Adam kernel
(``torch._fused_adam_``, one pass over the rows) and scatter parameter and moments back.

Two ways in:

- ``step()``: the usual optimiser API, from ``param.grad`` (sparse, as from ``nn.Embedding(sparse=True)``, or
  dense, as under DDP on CUDA and on MPS: every row with a non-zero gradient is touched).
- ``update_rows(param, rows, current, grad)``: the training loop already holds the touched rows (``rows``,
  distinct), their current values and their gradient as dense ``[len(rows), dim]`` tensors
  (``model.GatheredRows``): no sparse tensor, no coalescing, and the parameter rows need no second gather.

The eps of the fused kernel is passed as ``eps / sqrt(1 - beta2^t)``: the kernel computes Adam's
``m / (sqrt(v) / sqrt(bc2) + eps)`` and SparseAdam ``m sqrt(bc2) / (sqrt(v) + eps)``; with that eps the two
are the same expression (``test_row_adam_is_sparse_adam`` holds it to SparseAdam).
Measured: ``benchmarks/train_throughput.py``; the figures in ``docs/results.md`` ("Training throughput") and
``docs/experiments.md`` ("Training speed").
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

FUSED_DEVICES = ("cpu", "cuda")  # where torch._fused_adam_ has kernels; elsewhere (MPS) the same maths in ops


class RowAdam(torch.optim.Optimizer):
    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        if not lr > 0 or not eps > 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"invalid RowAdam settings: lr={lr}, betas={betas}, eps={eps}")
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - torch.optim API
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                if grad.is_sparse:
                    grad = grad.coalesce()
                    rows, values = grad.indices()[0], grad.values()
                else:  # dense gradients (e.g. under DDP on CUDA): every row with a non-zero gradient
                    rows = grad.abs().sum(dim=tuple(range(1, grad.ndim))).nonzero().squeeze(-1)
                    values = grad.index_select(0, rows)
                self.update_rows(param, rows, param.index_select(0, rows), values)
        return loss

    @torch.no_grad()
    def update_rows(self, param: torch.nn.Parameter, rows: torch.Tensor, current: torch.Tensor,
                    grad: torch.Tensor) -> None:
        """One lazy Adam step of ``param``'s ``rows`` (distinct), whose values are ``current`` (overwritten on the way)
        and whose gradient is ``grad``; the other rows and their moments stay as they are."""
        if rows.numel() == 0:
            return
        group = next(g for g in self.param_groups if any(p is param for p in g["params"]))
        beta1, beta2 = group["betas"]
        state = self.state[param]
        moments = _moments(state, param)
        state["step"] += 1
        step = float(state["step"])
        gathered = moments.index_select(1, rows)  # [2, rows, dim]: exp_avg, exp_avg_sq
        grad = grad.to(param.dtype).contiguous()
        current = current.contiguous()
        correction2 = 1 - beta2 ** step
        if param.device.type in FUSED_DEVICES:
            steps = state["step"] if param.device.type == "cpu" else state["step"].to(param.device)
            torch._fused_adam_([current], [grad], [gathered[0]], [gathered[1]], [], [steps],
                               lr=group["lr"], beta1=beta1, beta2=beta2, weight_decay=0.0,
                               eps=group["eps"] / math.sqrt(correction2), amsgrad=False, maximize=False)
        else:
            exp_avg, exp_avg_sq = gathered[0], gathered[1]
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            step_size = group["lr"] * math.sqrt(correction2) / (1 - beta1 ** step)
            current.addcdiv_(exp_avg, exp_avg_sq.sqrt().add_(group["eps"]), value=-step_size)
        moments.index_copy_(1, rows, gathered)
        param.index_copy_(0, rows, current)


def _moments(state: dict[str, Any], param: torch.Tensor) -> torch.Tensor:
    """The ``[2, *param.shape]`` moment buffer (exp_avg, exp_avg_sq), made at the first step. A state saved
    before the buffer existed (two tensors ``exp_avg``, ``exp_avg_sq``) is stacked into it."""
    if "moments" not in state:
        if "exp_avg" in state:
            state["moments"] = torch.stack([state.pop("exp_avg"), state.pop("exp_avg_sq")]).to(param)
            state["step"] = torch.as_tensor(float(state["step"]))  # SparseAdam counts in a Python int
        else:
            state["step"] = torch.tensor(0.0)
            state["moments"] = param.new_zeros((2, *param.shape))
    return state["moments"]
