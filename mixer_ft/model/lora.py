"""Low-rank updates of the Mixer's dense layers (LoRA: Hu et al., 2021), in both of the model's paths.

Each adapted layer ``fc`` of an :class:`~mixer_ft.model.mixer.Mlp` keeps its weight frozen and gains
``scale * B @ A`` (``scale = alpha / rank``; A random, B zero, so the model starts as the upstream one), with
dropout on the update's input as peft applies it. The textbook path adds ``scale * B(A(drop(x)))`` to the
layer's output; the fast path's token mixing, which multiplies ``W @ y`` directly on the token-major matrix
``y``, adds ``scale * B @ (A @ drop(y))``: the same numbers, never a merged copy of the weight.

peft's ``LoraModel`` wraps ``nn.Linear`` modules and so reaches only the textbook path: the fast path reads
``fc.weight`` itself, which is why the update lives here. Merging (:func:`merge`) adds the update into the
weight and removes the adapter, so a saved model is a plain Mixer that timm and transformers load.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def weight_update(lora_A: torch.Tensor, lora_B: torch.Tensor, scale: float) -> torch.Tensor:
    """What an adapter adds to its layer's weight, (out, in): ``scale * B @ A``; merging a model
    (:func:`merge`) and a state dict (:func:`merged_state`) both add this."""
    return scale * (lora_B @ lora_A)


class LoRA(nn.Module):
    """The low-rank update of one dense layer of ``in_features`` -> ``out_features``."""

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float, dropout: float) -> None:
        super().__init__()
        self.lora_A = nn.Parameter(torch.empty(rank, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # peft's and the paper's start: A random, B zero
        self.scale = alpha / rank
        self.drop = nn.Dropout(dropout) if dropout else nn.Identity()

    def delta(self) -> torch.Tensor:
        """The update of the weight, (out, in): what :func:`merge` adds to it."""
        return weight_update(self.lora_A, self.lora_B, self.scale)

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        """The update of the layer's output for ``x`` (..., in) -> (..., out): the textbook path."""
        return self.scale * F.linear(F.linear(self.drop(x), self.lora_A), self.lora_B)

    def columns(self, y: torch.Tensor) -> torch.Tensor:
        """The update for the fast path's token-major matrix ``y`` (in, n) -> (out, n)."""
        return self.scale * (self.lora_B @ (self.lora_A @ self.drop(y)))


def dense(fc: nn.Linear, adapter: LoRA | None, x: torch.Tensor) -> torch.Tensor:
    """``fc(x)``, plus ``adapter``'s update where there is one: the update and the bias are the product's added
    term, so the layer keeps one output-sized tensor for backward, as without LoRA (not a second for the sum)."""
    if adapter is None:
        return fc(x)
    rows = x.reshape(-1, x.shape[-1])
    return torch.addmm(adapter.rows(rows) + fc.bias, rows, fc.weight.t()).view(*x.shape[:-1], fc.out_features)


def dense_columns(fc: nn.Linear, adapter: LoRA | None, y: torch.Tensor) -> torch.Tensor:
    """The fast path's ``W @ y + b`` on a token-major matrix ``y`` (in, n), plus ``adapter``'s update, likewise as
    the product's added term."""
    added = fc.bias[:, None] if adapter is None else fc.bias[:, None] + adapter.columns(y)
    return torch.addmm(added, fc.weight, y)


def add_lora(mlp: nn.Module, rank: int, alpha: float, dropout: float) -> None:
    """Give both dense layers of ``mlp`` (fc1, fc2) a LoRA update; their own weights and biases are left to the
    caller to freeze. B starts at zero, so the model's outputs are unchanged."""
    for i, fc in ((1, mlp.fc1), (2, mlp.fc2)):
        adapter = LoRA(fc.in_features, fc.out_features, rank, alpha, dropout)
        setattr(mlp, f"lora{i}", adapter.to(device=fc.weight.device, dtype=fc.weight.dtype))


@torch.no_grad()
def merge(model: nn.Module) -> nn.Module:
    """Add every LoRA update into its layer's weight and remove the adapters (in place); returns ``model``."""
    for mlp in model.modules():
        for i in (1, 2):
            adapter = getattr(mlp, f"lora{i}", None)
            if adapter is not None:
                fc = getattr(mlp, f"fc{i}")
                fc.weight += adapter.delta().to(fc.weight.dtype)
                setattr(mlp, f"lora{i}", None)
    return model


def merged_state(state: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """A state dict with LoRA's tensors (``...mlp_tokens.lora1.lora_A``, ``...lora_B``) merged into their layers'
    weights as :func:`merge` merges a model's (``scale``: alpha / rank), and removed: a plain Mixer's."""
    out = {k: v for k, v in state.items() if ".lora" not in k}
    for key in state:
        if key.endswith(".lora_A"):
            adapter = key.removesuffix(".lora_A")  # blocks.0.mlp_tokens.lora1
            mlp, i = adapter.rsplit(".lora", 1)
            weight = f"{mlp}.fc{i}.weight"
            out[weight] = out[weight] + weight_update(state[key], state[f"{adapter}.lora_B"], scale).to(out[weight].dtype)
    return out


__all__ = ["LoRA", "add_lora", "dense", "dense_columns", "merge", "merged_state", "weight_update"]
