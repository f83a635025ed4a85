"""A checkpoint in memory: a state dict in timm's names, read from one file, with its architecture.

Files: Google's ``.npz`` (:mod:`mixer_ft.weights.google_npz`), ``.safetensors``, and PyTorch pickles
(``.pth``/``.pt``/``.bin``, read with ``weights_only=True``: plain tensors only, never code). The
architecture is read off the tensor shapes (:func:`infer_config`).
"""

from __future__ import annotations

import math
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mixer_ft.errors import CheckpointError
from mixer_ft.gate import check_path
from mixer_ft.model.config import TORCH_PICKLE_SUFFIXES
from mixer_ft.model.mixer import DEFAULT_MEAN, DEFAULT_STD, MixerConfig
from mixer_ft.weights.google_npz import npz_to_state_dict, read_npz, unreadable


@dataclass
class Checkpoint:
    """A state dict in timm's names with what was learnt about it on the way."""

    state_dict: dict[str, torch.Tensor]
    source: str
    path: str | None = None
    gelu: str = "exact"
    mean: tuple[float, ...] = DEFAULT_MEAN
    std: tuple[float, ...] = DEFAULT_STD
    classes: list[str] | None = None  # class names in head order, where the source names them
    evaluation: dict[str, Any] = field(default_factory=dict)  # test-time views it was scored with
    provenance: dict[str, Any] = field(default_factory=dict)  # how it was made (a mixer_ft model folder)

    def config(self) -> MixerConfig:
        """The architecture read off the tensor shapes, with this checkpoint's preprocessing."""
        return infer_config(self.state_dict, gelu=self.gelu, mean=self.mean, std=self.std, source=self.source)


def apply_metadata(ckpt: Checkpoint, meta: dict[str, Any], tag: str) -> None:
    """Preprocessing, GELU flavour and class names from a config.json (ours or timm's) and the weight tag.

    Raises:
        CheckpointError: the config is not an object, or a field has the wrong type or count.
    """
    try:
        _apply(ckpt, meta, tag)
    except (AttributeError, KeyError, TypeError, ValueError, RecursionError) as e:
        raise CheckpointError(f"The config.json of {ckpt.source} is malformed ({type(e).__name__}: {str(e)[:200]}); "
                              "save the model again or remove config.json.") from None
    head = ckpt.state_dict.get("head.weight")
    if ckpt.classes is not None and head is not None and len(ckpt.classes) != head.shape[0]:
        raise CheckpointError(f"The config.json of {ckpt.source} names {len(ckpt.classes)} classes, but the weights' "
                              f"head has {head.shape[0]}; save the model again or fix label_names.")


def _apply(ckpt: Checkpoint, meta: dict[str, Any], tag: str) -> None:
    if not isinstance(meta, dict):
        raise TypeError(f"a {type(meta).__name__}, not an object")
    names = meta.get("label_names") or (meta.get("pretrained_cfg") or {}).get("label_names")
    if names is not None and not (isinstance(names, list) and all(isinstance(n, (str, int)) for n in names)):
        raise TypeError("label_names must be a list of names")
    if names:
        ckpt.classes = [str(n) for n in names]
    ours = meta.get("mixer_ft")
    if ours:
        cfg = ours.get("config", ours)  # before model cards, the config stood alone
        ckpt.gelu, ckpt.mean, ckpt.std = cfg["gelu"], _floats(cfg["mean"]), _floats(cfg["std"])
        ckpt.evaluation, ckpt.provenance = dict(ours.get("evaluation", {})), dict(ours.get("provenance", {}))
        if ckpt.gelu not in ("tanh", "exact"):
            raise ValueError(f"gelu is {ckpt.gelu!r}")
        return
    pcfg = meta.get("pretrained_cfg", meta)
    if "mean" in pcfg and "std" in pcfg:
        ckpt.mean, ckpt.std = _floats(pcfg["mean"]), _floats(pcfg["std"])
    # Google's weights were trained in Flax with tanh GELU; everything else in timm's exact one.
    ckpt.gelu = "tanh" if ".goog" in tag or tag.startswith("goog") else "exact"


def _floats(values: Any) -> tuple[float, ...]:
    if not isinstance(values, (list, tuple)) or not all(isinstance(v, (int, float)) for v in values):
        raise TypeError(f"mean and std must be lists of numbers, got {str(values)[:60]}")
    return tuple(float(v) for v in values)


def load_file(path: Path, source: str) -> Checkpoint:
    """Read one weight file, by its suffix; ``source`` is how the user named it (for messages)."""
    check_path(path, "weight file")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return Checkpoint(npz_to_state_dict(read_npz(path), str(path)), source, str(path), gelu="tanh")
    if suffix == ".safetensors":
        return Checkpoint(read_safetensors(path), source, str(path))
    if suffix not in TORCH_PICKLE_SUFFIXES:
        raise CheckpointError(
            f"Don't know how to read {path}: expected .npz (Google), .safetensors, or .pth/.pt/.bin (PyTorch)."
        )
    sd, wrapper = _read_torch(path)
    recipe = wrapper.get("recipe") if isinstance(wrapper.get("recipe"), dict) else {}
    if recipe.get("method") == "lora":  # a LoRA run's checkpoint: its updates merged, as the run saves its model
        from mixer_ft.model.lora import merged_state

        sd = merged_state(sd, float(recipe["lora_alpha"]) / int(recipe["lora_rank"]))
    ckpt = Checkpoint(sd, source, str(path))
    if isinstance(wrapper.get("model_config"), dict):  # a mixer_ft training checkpoint describes its model
        apply_metadata(ckpt, {"label_names": wrapper.get("classes"),
                              "mixer_ft": {"config": wrapper["model_config"],
                                           "evaluation": wrapper.get("evaluation", {})}}, tag="")
    return ckpt


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors, on the CPU."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file as read

    try:
        return read(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise unreadable(path, e) from None


def _read_torch(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict, the dict that wrapped it or {}): training checkpoints wrap the weights."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise CheckpointError(
                f"Refusing {path}: its pickle asks for Python objects beyond plain tensors, and loading "
                f"those could run code. Save the weights alone (model.state_dict()), ideally as safetensors. "
                f"Detail: {str(e).splitlines()[0]}"
            ) from None
        raise unreadable(path, e) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as e:
        raise unreadable(path, e) from None
    # Training checkpoints often wrap the weights; unwrap one level, as timm does.
    wrapper: dict[str, Any] = {}
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj.get(key), dict):
                wrapper, obj = obj, obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a state dict (a mapping of names to tensors).")
    # Weights saved from a DistributedDataParallel wrapper carry a "module." prefix.
    return {str(k).removeprefix("module."): v for k, v in obj.items()}, wrapper



def _ranges(numbers: list[int]) -> str:
    """[1, 2, 3, 7] -> "1-3, 7", at most a few runs shown."""
    runs: list[list[int]] = []
    for n in numbers:
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    shown = [f"{a}" if a == b else f"{a}-{b}" for a, b in runs[:5]]
    return ", ".join(shown) + (f", ... ({len(runs) - 5} more ranges)" if len(runs) > 5 else "")


def infer_config(
    sd: dict[str, torch.Tensor],
    *,
    gelu: str = "exact",
    mean: tuple[float, ...] = DEFAULT_MEAN,
    std: tuple[float, ...] = DEFAULT_STD,
    num_classes: int | None = None,
    source: str = "checkpoint",
) -> MixerConfig:
    """Read the architecture off a timm-named state dict's shapes.

    The image size follows from the token-mixing MLP: it is sized for (img/patch)^2 tokens.
    """
    need = ("stem.proj.weight", "blocks.0.mlp_tokens.fc1.weight", "blocks.0.mlp_channels.fc1.weight")
    if any(k not in sd for k in need):
        raise CheckpointError(
            f"{source} is not an MLP-Mixer state dict: it lacks {', '.join(k for k in need if k not in sd)} "
            f"(it has {', '.join(list(sd)[:4])}, ...)."
        )
    hidden, in_chans, patch, _ = sd["stem.proj.weight"].shape
    tokens_mlp, tokens = sd["blocks.0.mlp_tokens.fc1.weight"].shape
    channels_mlp = sd["blocks.0.mlp_channels.fc1.weight"].shape[0]
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise CheckpointError(f"{source}: token-mixing MLP is sized for {tokens} tokens, not a square grid.")
    indices = {int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))}
    blocks = 1 + max(indices)
    if len(indices) != blocks:  # checked before a model of that depth is built
        gaps = sorted(set(range(blocks)) - indices)
        raise CheckpointError(f"{source} names blocks up to {blocks - 1} but holds weights for {len(indices)} of them "
                              f"(missing: {_ranges(gaps)}): the file is damaged or not a plain Mixer.")
    if "head.weight" in sd:
        num_classes = sd["head.weight"].shape[0]
    elif num_classes is None:
        raise CheckpointError(f"{source} has no classifier head; pass num_classes to add a new one.")
    return MixerConfig(
        patch_size=patch, hidden_dim=hidden, num_blocks=blocks, tokens_mlp_dim=tokens_mlp,
        channels_mlp_dim=channels_mlp, img_size=side * patch, num_classes=num_classes,
        in_chans=in_chans, gelu=gelu, mean=mean[:in_chans], std=std[:in_chans],
    )


__all__ = ["Checkpoint", "apply_metadata", "infer_config", "load_file", "read_safetensors"]
