"""Momentum SGD with its buffer in bfloat16, as vit_jax's train.py runs it.

vit_jax fine-tunes with ``optax.sgd(momentum=0.9, accumulator_dtype='bfloat16')``. optax's trace is
``t = g + momentum * t_prev`` with ``t_prev`` stored in bfloat16. JAX gives the Python number
``momentum`` the array's type, bfloat16(0.9) = 0.8984375; compiled (vit_jax's update is), XLA then
computes the product and the sum in float32 with no rounding in between. The update is ``-lr * t``,
and ``t`` is stored rounded to bfloat16. So the effective momentum is 0.8984375, not 0.9: found by
matching vit_jax step by step (tests/test_fidelity.py). Recipe key ``momentum_dtype = "bfloat16"`` selects it (the published-row
recipes do); torch's own SGD keeps the buffer in float32.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


class BF16MomentumSGD(torch.optim.Optimizer):
    """Plain (not Nesterov) momentum SGD, buffer in bfloat16. Weight decay, where a group has it,
    is added to the gradient first, as torch's SGD does (the upstream protocol has none)."""

    def __init__(self, params: list[dict], lr: float, momentum: float) -> None:
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": 0.0})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> None:  # noqa: D102
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad.float()
                if group["weight_decay"]:
                    g = g + group["weight_decay"] * p
                state = self.state[p]
                buf = state.get("momentum_buffer")
                momentum = float(torch.tensor(group["momentum"], dtype=torch.bfloat16))  # as JAX types it
                trace = g if buf is None else g + buf.float() * momentum
                p.add_(trace, alpha=-group["lr"])
                state["momentum_buffer"] = trace.to(torch.bfloat16)


__all__ = ["BF16MomentumSGD"]
