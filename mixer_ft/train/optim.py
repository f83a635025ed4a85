"""Optimizers by name, and the upstream learning-rate schedule.

Weight decay applies to weight matrices only, never to biases or norm gains. ``fused`` runs
one kernel for the whole update instead of a handful of passes over the parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # torch is imported where optimizers are built: the command line starts without it
    import torch
    from torch import nn


class OptimizerSettings(Protocol):
    """What an optimizer builder reads of a recipe (:class:`mixer_ft.train.recipe.Recipe` has it all)."""

    lr: float
    momentum: float
    momentum_dtype: str
    weight_decay: float
    layer_decay: float


def layer_of(name: str, depth: int) -> int:
    """A parameter's layer as timm's ``param_groups_layer_decay`` numbers a Mixer's: the stem 0, block i i + 1, the
    final norm with the last block (``depth``), the head (and anything else) ``depth + 1``."""
    if name.startswith("stem."):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth if name.startswith("norm.") else depth + 1


def _groups(recipe: OptimizerSettings, params: list[tuple[str, nn.Parameter]]) -> list[dict]:
    """The trained parameters in groups: matrices (decayed) and vectors (not), and with ``layer_decay`` below 1, by
    layer, the rate of the layer k below the head ``lr * layer_decay**k`` (timm's ``param_groups_layer_decay``)."""
    params = [(n, p) for n, p in params if p.requires_grad]
    depth = 1 + max((int(n.split(".")[1]) for n, _ in params if n.startswith("blocks.")), default=-1)
    by_layer = recipe.layer_decay != 1
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in params:
        layer = layer_of(name, depth) if by_layer else 0
        group = groups.setdefault((layer, p.ndim >= 2), {"params": [], "weight_decay": recipe.weight_decay
                                                         if p.ndim >= 2 else 0.0}
                                  | ({"lr": recipe.lr * recipe.layer_decay ** (depth + 1 - layer)} if by_layer else {}))
        group["params"].append(p)
    return list(groups.values())


def _sgd(recipe: OptimizerSettings, model: nn.Module, fused: bool) -> list[torch.optim.Optimizer]:
    """The upstream protocol's: plain (not Nesterov) momentum SGD, its buffer in ``momentum_dtype``."""
    import torch

    groups = _groups(recipe, list(model.named_parameters()))
    if recipe.momentum_dtype == "bfloat16":
        from mixer_ft.train.bf16_momentum import BF16MomentumSGD

        return [BF16MomentumSGD(groups, lr=recipe.lr, momentum=recipe.momentum)]
    return [torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum, nesterov=False, fused=fused)]


def _adamw(recipe: OptimizerSettings, model: nn.Module, fused: bool) -> list[torch.optim.Optimizer]:
    import torch

    return [torch.optim.AdamW(_groups(recipe, list(model.named_parameters())), lr=recipe.lr, fused=fused)]


def _muon(recipe: OptimizerSettings, model: nn.Module, fused: bool) -> list[torch.optim.Optimizer]:
    """torch's Muon on the blocks' weight matrices, AdamW on the rest.

    Muon orthogonalises each update; its step is scaled to AdamW's size so the two share lr and
    weight decay. The patch stem and the head stay with AdamW, as Muon's authors advise, and so
    do the biases and norm gains.
    """
    import torch

    named = list(model.named_parameters())
    matrices = [p for n, p in named if n.startswith("blocks.") and p.ndim == 2 and p.requires_grad]
    taken = {id(p) for p in matrices}
    rest = [(n, p) for n, p in named if id(p) not in taken]
    return [torch.optim.Muon(matrices, lr=recipe.lr, weight_decay=recipe.weight_decay, momentum=recipe.momentum,
                             adjust_lr_fn="match_rms_adamw"),
            torch.optim.AdamW(_groups(recipe, rest), lr=recipe.lr, fused=fused)]


# Recipe `optimizer` name -> builder. A new optimizer is one entry here.
OPTIMIZERS: dict[str, Callable[[OptimizerSettings, nn.Module, bool], list[torch.optim.Optimizer]]] = {
    "sgd": _sgd, "adamw": _adamw, "muon": _muon,
}


def make_optimizers(recipe: OptimizerSettings, model: nn.Module, fused: bool = False) -> list[torch.optim.Optimizer]:
    """The recipe's optimizer(s) for ``model``; each takes its own share of the parameters."""
    return OPTIMIZERS[recipe.optimizer](recipe, model, fused)


def lr_factor(step: int, warmup: int, total: int) -> float:
    """vit_jax's ``create_learning_rate_schedule`` at ``step``: linear warm-up, then cosine to 0.

    optax counts updates from 0, so vit_jax's k-th update (1-based) uses ``lr_factor(k - 1)``: the
    first update of a warm-up has rate 0. (vit_jax *logs* ``lr_fn(k)`` at step k.)
    """
    progress = min(max((step - warmup) / max(total - warmup, 1), 0.0), 1.0)
    factor = 0.5 * (1.0 + math.cos(math.pi * progress))
    return factor * min(1.0, step / warmup) if warmup else factor


def make_schedules(optimizers: list[torch.optim.Optimizer], warmup: int,
                   total: int) -> list[torch.optim.lr_scheduler.LambdaLR]:
    """One :func:`lr_factor` schedule per optimizer."""
    import torch

    # LambdaLR gives update k (from 0) the factor at k, as optax does.
    return [torch.optim.lr_scheduler.LambdaLR(o, lambda s: lr_factor(s, warmup, total)) for o in optimizers]


__all__ = ["OPTIMIZERS", "lr_factor", "make_optimizers", "make_schedules"]
