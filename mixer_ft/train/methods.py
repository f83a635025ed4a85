"""How much of the model a run trains (recipe key ``method``); what it saves.

- ``full``: every weight (the upstream protocol, the default).
- ``lora``: the Mixer's MLP weights frozen; each MLP of ``lora_layers`` (token-mixing, channel-mixing or both)
  gets a low-rank update of rank ``lora_rank`` (:mod:`mixer_ft.model.lora`). The stem, the norms and the biases
  stay frozen, as peft's default (``bias="none"``).
- ``bitfit``: the biases and LayerNorms only (Ben Zaken et al., 2022).
- ``head``: the backbone frozen: a linear probe.

The head always trains (a new head has to). A new method is one entry in :data:`METHODS`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # torch is imported where a model is built: the command line starts without it
    import torch
    from torch import nn

LORA_LAYERS = ("both", "tokens", "channels")


class MethodSettings(Protocol):
    """What a method reads of a recipe."""

    method: str
    lora_rank: int
    lora_alpha: float
    lora_dropout: float
    lora_layers: str


def _full(model: nn.Module, recipe: MethodSettings) -> None:
    """Every weight trains."""


def _lora(model: nn.Module, recipe: MethodSettings) -> None:
    from mixer_ft.model.lora import add_lora

    _freeze_backbone(model)
    which = {"both": ("mlp_tokens", "mlp_channels"), "tokens": ("mlp_tokens",),
             "channels": ("mlp_channels",)}[recipe.lora_layers]
    for block in model.blocks:
        for name in which:
            add_lora(getattr(block, name), recipe.lora_rank, recipe.lora_alpha, recipe.lora_dropout)


def _bitfit(model: nn.Module, recipe: MethodSettings) -> None:
    from torch import nn

    _freeze_backbone(model)
    for module in model.modules():
        if isinstance(module, nn.LayerNorm):
            module.requires_grad_(True)
        elif getattr(module, "bias", None) is not None:
            module.bias.requires_grad_(True)


def _head(model: nn.Module, recipe: MethodSettings) -> None:
    _freeze_backbone(model)


def _freeze_backbone(model: nn.Module) -> None:
    """Everything frozen but the head."""
    model.requires_grad_(False)
    model.head.requires_grad_(True)


# Recipe `method` name -> what it does to a freshly built model. A new method is one entry here.
METHODS: dict[str, Callable[[nn.Module, MethodSettings], None]] = {
    "full": _full, "lora": _lora, "bitfit": _bitfit, "head": _head,
}


def apply_method(model: nn.Module, recipe: MethodSettings) -> nn.Module:
    """Freeze what ``recipe.method`` leaves alone and add what it trains (in place); returns ``model``."""
    METHODS[recipe.method](model, recipe)
    return model


def trainable(model: nn.Module) -> tuple[int, int]:
    """(parameters that train, parameters of the model as saved): LoRA's count in the first, never the second."""
    params = list(model.named_parameters())
    return (sum(p.numel() for _, p in params if p.requires_grad),
            sum(p.numel() for n, p in params if ".lora" not in n))


def trainable_said(recipe: MethodSettings, variant: str | None, architecture: dict) -> str:
    """One line for ``--dry-run``: the trainable share of the backbone, and the head's size per class."""
    import torch

    from mixer_ft.model.config import MixerConfig
    from mixer_ft.model.mixer import MlpMixer

    if variant is None:
        return "trainable parameters: known once the upstream weights are read (their architecture)"
    arch = {**architecture, "num_classes": 1}
    config = MixerConfig.from_dict(arch) if variant == "custom" else MixerConfig.from_variant(variant, **arch)
    with torch.device("meta"):
        model = apply_method(MlpMixer(config), recipe)
    train, every = trainable(model)
    head = config.hidden_dim + 1
    return (f"trainable parameters ({recipe.method}): {train - head:,} of the backbone's {every - head:,} "
            f"({(train - head) / (every - head):.2%}), and the head's {head:,} a class")


def saved_model(net: nn.Module) -> nn.Module:
    """The model as it is saved: LoRA merged into a copy (a plain Mixer), else ``net`` itself."""
    if not any(getattr(m, "lora1", None) is not None for m in net.modules()):
        return net
    from mixer_ft.model.lora import merge

    return merge(copy.deepcopy(net))


def trained(net: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors a method trains, by parameter name (the head's included)."""
    return {name: p.detach() for name, p in net.named_parameters() if p.requires_grad}


ADAPTER_NAME = "adapter.safetensors"  # in the run folder, beside model/
_ADAPTER_KEYS = ("method", "lora_rank", "lora_alpha", "lora_dropout", "lora_layers")


def save_adapter(net: nn.Module, recipe: MethodSettings, path: Path) -> Path:
    """What the method trained, alone, as safetensors (peft's ``save_pretrained`` analogue): the trained tensors,
    the method's keys in the metadata. The upstream weights plus this file are the model (:func:`load_adapter`)."""
    from safetensors.torch import save_file

    from mixer_ft.atomic import atomic_write

    tensors = {n: t.contiguous().cpu() for n, t in trained(net).items()}
    meta = {key: str(getattr(recipe, key)) for key in _ADAPTER_KEYS}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def load_adapter(model: nn.Module, path: str | Path) -> nn.Module:
    """``model`` (the upstream one, its head sized for the adapter's classes) with an adapter of
    :func:`save_adapter` applied: the method's layers added, then every tensor of the file loaded; a missing or
    misshaped one is refused, naming it.

    Raises:
        ConfigError: the file is not an adapter, or does not fit ``model``.
    """
    from types import SimpleNamespace

    from safetensors import safe_open

    from mixer_ft.errors import ConfigError

    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata() or {}, {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not a dict
    if meta.get("method") not in METHODS:
        raise ConfigError(f"{path} is not an adapter mixer_ft saved (its metadata names no method).")
    settings = SimpleNamespace(method=meta["method"], lora_rank=int(meta["lora_rank"]),
                               lora_alpha=float(meta["lora_alpha"]), lora_dropout=float(meta["lora_dropout"]),
                               lora_layers=meta["lora_layers"])
    apply_method(model, settings)
    params = dict(model.named_parameters())
    wrong = sorted(set(tensors) ^ set(trained(model)))
    wrong += [f"{k} {tuple(t.shape)} (the model's {tuple(params[k].shape)})" for k, t in tensors.items()
              if k in params and params[k].shape != t.shape]
    if wrong:
        raise ConfigError(f"{path} does not fit this model: {', '.join(wrong[:8])}{' ...' if len(wrong) > 8 else ''}.")
    import torch

    with torch.no_grad():
        for name, t in tensors.items():
            params[name].copy_(t)
    return model


__all__ = ["ADAPTER_NAME", "LORA_LAYERS", "METHODS", "apply_method", "load_adapter", "save_adapter", "saved_model",
           "trainable", "trainable_said", "trained"]
