"""Momentum SGD with its buffer in bfloat16, as vit_jax's train.py runs it.

vit_jax fine-tunes with ``optax.sgd(momentum=0.9, accumulator_dtype='bfloat16')``. optax's trace is
``t = g + momentum * t_prev`` with ``t_prev`` stored in bfloat16. JAX gives the Python number
``momentum`` the array's type, bfloat16(0.9) = 0.8984375; compiled (vit_jax's update is), XLA then
computes the product and the sum in float32 with no rounding in between. The update is ``-lr * t``,
and ``t`` is stored rounded to bfloat16. So the effective momentum is 0.8984375, not 0.9: found by
matching vit_jax step by step (tests/test_fidelity.py). Recipe key ``momentum_dtype = "bfloat16"`` selects it (the published-row
recipes do); torch's own SGD keeps the buffer in float32.

The update runs as a handful of multi-tensor (``torch._foreach_*``) kernels over all parameters at
once, not a Python loop of six kernels per parameter: on a GPU an L/16 has 294 parameters, and the
loop's ~1,800 launches a step cost the host more than the whole step's other work.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


class BF16MomentumSGD(torch.optim.Optimizer):
    """Plain (not Nesterov) momentum SGD, buffer in bfloat16. Weight decay, where a group has it,
    is added to the gradient first, as torch's SGD does (the upstream protocol has none)."""

    def __init__(self, params: list[dict], lr: float, momentum: float) -> None:
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": 0.0})

    def load_state_dict(self, state_dict: dict) -> None:
        """As torch's, which casts saved buffers to their parameter's dtype (float32): back to bfloat16,
        exactly (they hold bfloat16 values), so that a resumed run rounds as the uninterrupted one."""
        super().load_state_dict(state_dict)
        for state in self.state.values():
            buf = state.get("momentum_buffer")
            if buf is not None and buf.dtype != torch.bfloat16:
                state["momentum_buffer"] = buf.to(torch.bfloat16)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> None:  # noqa: D102
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            momentum = float(torch.tensor(group["momentum"], dtype=torch.bfloat16))  # as JAX types it
            # The same element-wise arithmetic as the per-tensor form (product, then sum, in float32):
            # multi-tensor kernels change the launches, not the numbers.
            grads = [p.grad if p.grad.dtype == torch.float32 else p.grad.float() for p in params]
            if group["weight_decay"]:  # g + wd * p, the product rounded first (not a fused multiply-add)
                decay = torch._foreach_mul(params, group["weight_decay"])
                torch._foreach_add_(decay, grads)
                grads = decay
            states = [self.state[p] for p in params]
            bufs = [s.get("momentum_buffer") for s in states]
            if all(b is not None for b in bufs):  # every step after the first: five multi-tensor kernels
                trace = [torch.empty_like(g) for g in grads]
                torch._foreach_copy_(trace, bufs)  # bfloat16 -> float32, exact
                torch._foreach_mul_(trace, momentum)
                torch._foreach_add_(trace, grads)
            else:  # the first step (the trace is the gradient), or a parameter whose first gradient came late
                trace = [g if b is None else g + b.float() * momentum for g, b in zip(grads, bufs)]
            torch._foreach_add_(params, trace, alpha=-group["lr"])
            if all(b is not None for b in bufs):
                torch._foreach_copy_(bufs, trace)  # rounded to bfloat16, in place
            else:
                for s, b, t in zip(states, bufs, trace):
                    if b is None:
                        s["momentum_buffer"] = t.to(torch.bfloat16)
                    else:
                        b.copy_(t)


__all__ = ["BF16MomentumSGD"]
