"""Weights other than the last step's that a run may evaluate and save: an exponential moving average of them
(recipe key ``ema_decay``) and the best on minival so far (``early_stop``).

EMA is timm's ``ModelEmaV3`` without warm-up: ``ema = decay * ema + (1 - decay) * w`` after every update,
starting from the fine-tune's first weights, over the parameters the run trains (the frozen ones are their own
average). Both are held as tensors by parameter name and swapped into the model where it is scored
(:func:`swapped`), never copied over its training weights, and both are in every checkpoint, so a resumed run
averages and stops exactly as the uninterrupted one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn


@contextlib.contextmanager
def swapped(net: nn.Module, tensors: dict[str, torch.Tensor] | None) -> Iterator[None]:
    """``net`` with the parameters named in ``tensors`` set to them while inside (none: as it is)."""
    if not tensors:
        yield
        return
    params = dict(net.named_parameters())
    kept = {}
    try:
        for name, value in tensors.items():
            kept[name] = params[name].data
            params[name].data = value.to(kept[name].device, kept[name].dtype)
        yield
    finally:
        for name, value in kept.items():
            params[name].data = value


class EMA:
    """The moving average of the trained parameters of ``net``."""

    def __init__(self, net: nn.Module, decay: float) -> None:
        self.decay = decay
        self.names = [n for n, p in net.named_parameters() if p.requires_grad]
        self.params = [p for p in net.parameters() if p.requires_grad]
        self.average = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        """After an update: move the average a share ``1 - decay`` of the way to the weights."""
        torch._foreach_lerp_(self.average, [p.detach() for p in self.params], 1.0 - self.decay)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The average by parameter name (what :func:`swapped` takes)."""
        return dict(zip(self.names, self.average, strict=True))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: a.detach().cpu() for n, a in self.tensors().items()}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name, average in self.tensors().items():
            average.copy_(state[name])


class Best:
    """The best minival accuracy so far, its step and weights, and whether ``patience`` evaluations in a row
    have not beaten it (strictly: a tie is no better, as transformers' EarlyStoppingCallback counts)."""

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.accuracy, self.step, self.behind, self.stopped_at = -1.0, 0, 0, 0
        self.weights: dict[str, torch.Tensor] | None = None

    def update(self, step: int, accuracy: float, weights: dict[str, torch.Tensor]) -> bool:
        """Note the evaluation of ``weights`` (the ones scored) at ``step``; True when the run should stop (and, once
        stopped, ever after: a later evaluation changes nothing)."""
        if self.stopped_at:
            return True
        if accuracy > self.accuracy:
            self.accuracy, self.step, self.behind = accuracy, step, 0
            self.weights = {n: w.detach().to("cpu", copy=True) for n, w in weights.items()}
        else:
            self.behind += 1
        if self.patience and self.behind >= self.patience:
            self.stopped_at = step
        return bool(self.stopped_at)

    def said(self) -> dict[str, Any]:
        """What the run record says of it."""
        return {"patience": self.patience, "best_step": self.step, "best_minival": round(self.accuracy, 5),
                "stopped_at": self.stopped_at or None}

    def state_dict(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy, "step": self.step, "behind": self.behind, "stopped_at": self.stopped_at,
                "weights": self.weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.accuracy, self.step, self.behind = state["accuracy"], state["step"], state["behind"]
        self.stopped_at, self.weights = state["stopped_at"], state["weights"]


__all__ = ["EMA", "Best", "swapped"]
