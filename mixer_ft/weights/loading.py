"""Models from pretrained weights, loaded strictly: only the head may differ, and only when asked.

Where weights come from is :mod:`mixer_ft.weights.sources`; reading a file is :mod:`mixer_ft.weights.weight_file`
(Google's ``.npz`` layout: :mod:`mixer_ft.weights.google_npz`); the saved model folder is
:mod:`mixer_ft.weights.model_folder`; downloads and the cache are :mod:`mixer_ft.weights.downloads`. This module
builds the model a checkpoint describes on the meta device (no memory for a random init) and loads
every tensor strictly, with a full report of what is missing, unexpected or mis-shaped.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from mixer_ft.errors import CheckpointError, ConfigError, MixerFtError
from mixer_ft.model.mixer import VARIANTS, MixerConfig, MlpMixer, canonical_variant
from mixer_ft.weights.downloads import download
from mixer_ft.weights.google_npz import npz_to_state_dict
from mixer_ft.weights.model_folder import save_pretrained
from mixer_ft.weights.sources import load_checkpoint, upstream_sources
from mixer_ft.weights.weight_file import Checkpoint, infer_config


def _mismatch_report(model: torch.nn.Module, sd: dict[str, torch.Tensor]) -> tuple[list, list, list]:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    misshaped = [f"{k} {tuple(sd[k].shape)} vs model {expected[k]}"
                 for k in expected if k in sd and tuple(sd[k].shape) != expected[k]]
    return missing, unexpected, misshaped


def _listed(names: list[str], most: int = 20) -> str:
    """Names for a message: all of a few, the first ``most`` of many."""
    if not names:
        return "none"
    return ", ".join(names[:most]) + (f", ... and {len(names) - most:,} more" if len(names) > most else "")


def check_numbers(sd: dict[str, torch.Tensor], source: str) -> None:
    """Every weight a floating-point tensor of finite numbers: a NaN or infinity would make every prediction
    NaN, and an integer or bool tensor is not a trained weight.

    Raises:
        CheckpointError: naming the first tensor that is not, and what it holds.
    """
    for name, value in sd.items():
        if not value.is_floating_point():
            raise CheckpointError(f"Weights from {source}: {name} is a {str(value.dtype).removeprefix('torch.')} tensor, "
                                  "not floating point; the file is damaged or not a trained model.")
        if value.numel() and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise CheckpointError(f"Weights from {source}: {name} holds {bad:,} value(s) that are not finite (NaN or "
                                  "infinity); the model diverged or the file is damaged. Use an earlier checkpoint.")


def load_strict(model: MlpMixer, ckpt: Checkpoint, *, new_head: bool = False) -> MlpMixer:
    """Load ``ckpt`` into ``model`` (which may live on the meta device), all keys strict.

    Args:
        new_head: the caller asked for another class count, so the checkpoint's head (and only
            it) is dropped and a zero head is used, as upstream initialises one for fine-tuning.

    Raises:
        CheckpointError: listing the missing, unexpected and mis-shaped keys.
    """
    sd = dict(ckpt.state_dict)
    if new_head:
        sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
        c, k = model.config.hidden_dim, model.config.num_classes
        sd["head.weight"], sd["head.bias"] = torch.zeros(k, c), torch.zeros(k)
    missing, unexpected, misshaped = _mismatch_report(model, sd)
    if missing or unexpected or misshaped:
        hint = ""
        if any(".mlp_tokens." in m for m in misshaped):
            hint = (" The token-mixing MLPs are sized for the checkpoint's token count, so the input size "
                    "cannot simply change.")
        requested = model.config.describe()
        try:
            found = ckpt.config().describe()
        except MixerFtError:
            found = "no recognisable Mixer"
        head = (f"Weights from {ckpt.source} do not fit the {requested} their own shapes describe: the file is "
                "damaged or not a plain Mixer." if found == requested else
                f"Weights from {ckpt.source} do not fit the requested {requested}: the file holds "
                f"{'a ' if found[0] != 'n' else ''}{found}.")
        raise CheckpointError(
            f"{head}{hint}\n  missing: {_listed(missing)}\n  unexpected: {_listed(unexpected)}\n  mis-shaped: "
            f"{_listed(misshaped)}"
        )
    check_numbers(sd, ckpt.source)
    sd = {k: v.to(torch.float32).contiguous() for k, v in sd.items()}
    model.load_state_dict(sd, strict=True, assign=True)
    return model


def create_model(
    name: str | None = None,
    *,
    pretrained: str | None = None,
    num_classes: int | None = None,
    resize: str = "tile",
    **overrides: Any,
) -> MlpMixer:
    """Build a Mixer, optionally with pretrained weights.

    Args:
        name: a variant ("B/16", "B_16", "mixer_b16_224"); with ``pretrained`` it may be None,
            and the architecture then comes from the checkpoint.
        pretrained: any weight source (see :mod:`mixer_ft.weights.loading`).
        num_classes: a new class count; the checkpoint's head is then replaced by a zero one.
        resize: with ``pretrained`` and an ``img_size`` other than the checkpoint's: ``"tile"``
            (exact, whole multiples of its size) or ``"resample"`` (approximate, any size); see
            :mod:`mixer_ft.model.resolution`.
        **overrides: other :class:`~mixer_ft.model.mixer.MixerConfig` fields, e.g. ``img_size=448``.

    Returns:
        The model; its configuration is ``model.config``.
    """
    if pretrained is None:
        if name is None:
            raise ConfigError("create_model needs a variant name, pretrained weights, or both.")
        changes = overrides | ({} if num_classes is None else {"num_classes": num_classes})
        return MlpMixer(MixerConfig.from_variant(name, **changes))
    return model_from_checkpoint(load_checkpoint(pretrained, variant=name), name, num_classes, resize=resize,
                                 **overrides)


_KEPT = ("img_size", "num_classes", "in_chans", "gelu", "mean", "std")  # from the checkpoint, whatever the variant


def model_from_checkpoint(ckpt: Checkpoint, name: str | None = None, num_classes: int | None = None,
                          resize: str = "tile", new_head: bool | None = None, **overrides: Any) -> MlpMixer:
    """The model ``ckpt`` holds (strictly loaded), as :func:`create_model` describes its arguments.

    ``new_head``: True drops the checkpoint's head for a zero one, False keeps it (its class count must
    be ``num_classes``); None replaces it only when ``num_classes`` differs from the checkpoint's.
    """
    from mixer_ft.model.resolution import resize_state_dict

    found = ckpt.config() if "head.weight" in ckpt.state_dict else None
    base = found or infer_config(ckpt.state_dict, num_classes=num_classes or 1000, source=ckpt.source)
    if overrides.get("img_size", base.img_size) != base.img_size:
        sd, base = resize_state_dict(ckpt.state_dict, base, overrides["img_size"], resize)
        ckpt = dataclasses.replace(ckpt, state_dict=sd)
    base = base.replace(gelu=ckpt.gelu)
    if name is not None and base.variant != canonical_variant(name):  # load_strict reports what differs
        base = MixerConfig.from_variant(name, **{k: getattr(base, k) for k in _KEPT})
    if new_head is None:
        new_head = num_classes is not None and (found is None or num_classes != found.num_classes)
    elif not new_head and (found is None or num_classes not in (None, found.num_classes)):
        has = f"{found.num_classes} classes" if found else "no head"
        raise ConfigError(f"new_head = false keeps the checkpoint's head, but {ckpt.source} has {has} and the data "
                          f"set {num_classes}; leave new_head unset or true.")
    cfg = base.replace(**overrides, **({"num_classes": num_classes} if num_classes is not None else {}))
    with torch.device("meta"):  # weights come from the checkpoint: skip the random init
        model = MlpMixer(cfg)
    return load_strict(model, ckpt, new_head=new_head)


def describe(source: str, variant: str | None = None, img_size: int | None = None,
             resize: str = "tile") -> tuple[dict[str, Any], MixerConfig, str]:
    """What ``mixer-ft inspect`` shows of a variant or weight source: (info, config, where it was read).

    The model is built on the meta device (no memory) and, for weights, every tensor strictly loaded
    into the architecture the file's own shapes name, so a damaged file is found here too.
    """
    from mixer_ft.model.mixer import num_params

    ckpt, size = None, {"img_size": img_size} if img_size else {}
    try:
        canonical_variant(source)
    except MixerFtError:
        ckpt = load_checkpoint(source, variant=variant)
        cfg, path = ckpt.config(), ckpt.path
        where = path or source
    else:
        cfg, path = MixerConfig.from_variant(source, **size), None
        where = "variant definition (no weights)"
    if ckpt is not None and img_size:  # the weights resized, then strictly loaded
        net = model_from_checkpoint(ckpt, variant, resize=resize, img_size=img_size)
    else:
        with torch.device("meta"):  # counting parameters needs no memory
            net = MlpMixer(cfg)
        if ckpt is not None:  # every tensor must fit the architecture the file's shapes name
            load_strict(net, ckpt)
    cfg = net.config
    info = {"source": source, "path": path, "variant": cfg.variant, **cfg.to_dict(),
            "num_tokens": cfg.num_tokens, "num_params": num_params(net)}
    return info, cfg, where


__all__ = [
    "VARIANTS", "Checkpoint", "create_model", "download", "infer_config", "load_checkpoint",
    "describe", "load_strict", "model_from_checkpoint", "npz_to_state_dict", "save_pretrained",
    "upstream_sources",
]
