"""Pretrained weights at another input size (paper, Appendix C).

The token-mixing MLP is sized for the checkpoint's token count, so the weights cannot simply take a
larger image. Two ways to change the size, both touching the token-mixing MLPs alone (stem,
norms, channel MLPs and head are the checkpoint's):

- ``tile`` (exact; an integer multiple K of the checkpoint's size): the image is cut into K x K
  tiles, and each tile's tokens are mixed by the pre-trained weights, as one sequence in the
  pre-training raster order. The new token-mixing weights are block-diagonal with K^2 copies of
  the pre-trained ones (biases tiled), their rows and columns then permuted from tile order to the
  raster order of the whole grid, so the model is a plain Mixer with K^2 times the tokens and
  K^2 times the token-MLP width. A K x K tiling of one image gives the checkpoint's logits.
- ``resample`` (approximate; any multiple of the patch size, smaller ones too): each row of W1
  and each column of W2 is a map over the patch grid, resized like ViT's position embeddings;
  W1 is scaled by old/new token count, so that where the weights are smooth over the grid a
  token-constant input gives the same hidden units. Not exact: fine-tune afterwards.

After either, the token-mixing layers are ordinary dense layers that fine-tuning updates freely.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F

from mixer_ft.errors import CheckpointError, ConfigError
from mixer_ft.model.config import RESIZE_METHODS, MixerConfig

_TOKEN_MLP = re.compile(r"blocks\.\d+\.mlp_tokens\.(fc1|fc2)\.(weight|bias)")


def tile_order(grid: int, k: int) -> torch.Tensor:
    """For each token of the (k*grid)^2 raster, its place in tile order (tile by tile, each tile raster)."""
    side = grid * k
    r, c = torch.arange(side).repeat_interleave(side), torch.arange(side).repeat(side)
    tile, inner = (r // grid) * k + c // grid, (r % grid) * grid + c % grid
    return tile * grid * grid + inner


def _tile(name: str, t: torch.Tensor, order: torch.Tensor, copies: int) -> torch.Tensor:
    layer, kind = _TOKEN_MLP.fullmatch(name).groups()  # type: ignore[union-attr]
    if kind == "bias":  # fc1: hidden units stay tile by tile; fc2: one bias per token
        return t.repeat(copies) if layer == "fc1" else t.repeat(copies)[order]
    big = torch.block_diag(*[t] * copies)
    return big[:, order] if layer == "fc1" else big[order, :]


def _resize_maps(maps: torch.Tensor, grid: int, new: int) -> torch.Tensor:
    """(n, grid*grid) maps over the patch grid to (n, new*new), as timm resamples position embeddings."""
    x = maps.float().reshape(-1, 1, grid, grid)
    x = F.interpolate(x, size=(new, new), mode="bicubic", align_corners=False, antialias=new < grid)
    return x.reshape(maps.shape[0], new * new).to(maps.dtype)


def _resample(name: str, t: torch.Tensor, grid: int, new: int) -> torch.Tensor:
    layer, kind = _TOKEN_MLP.fullmatch(name).groups()  # type: ignore[union-attr]
    if layer == "fc1":  # rows are maps over input tokens; fewer, larger tokens each weigh more
        return t if kind == "bias" else _resize_maps(t, grid, new) * (grid * grid / (new * new))
    if kind == "bias":
        return _resize_maps(t[None], grid, new)[0]
    return _resize_maps(t.T, grid, new).T.contiguous()


def _size_error(img_size: int, cfg: MixerConfig) -> ConfigError:
    tiles = ", ".join(str(cfg.img_size * k) for k in (2, 3, 4))
    return ConfigError(
        f"img_size {img_size} is not a whole multiple of these weights' {cfg.img_size}, so their token-mixing "
        f"weights cannot be tiled exactly (sizes that tile: {tiles}). To resample them to {img_size} instead "
        "(approximate: fine-tune afterwards), add --resize resample (finetune: --set resize='\"resample\"'; "
        "Python: resize=\"resample\")."
    )


def resized_config(cfg: MixerConfig, img_size: int, method: str = "tile") -> MixerConfig:
    """The architecture a checkpoint of ``cfg`` has once resized to ``img_size`` by ``method``.

    Raises:
        ConfigError: an unknown method; a size that is not a multiple of the patch size; for
            ``tile``, a size that is not a whole multiple of ``cfg.img_size``.
    """
    if method not in RESIZE_METHODS:
        raise ConfigError(f"resize must be one of {', '.join(RESIZE_METHODS)}, got {method!r}.")
    new_cfg = cfg.replace(img_size=img_size)  # checks the patch size
    if method == "resample" or img_size == cfg.img_size:
        return new_cfg
    if img_size % cfg.img_size:
        raise _size_error(img_size, cfg)
    k = img_size // cfg.img_size
    return new_cfg.replace(tokens_mlp_dim=cfg.tokens_mlp_dim * k * k)


def resize_state_dict(sd: dict[str, torch.Tensor], cfg: MixerConfig, img_size: int,
                      method: str = "tile") -> tuple[dict[str, torch.Tensor], MixerConfig]:
    """``sd`` (of a Mixer with config ``cfg``) adapted to ``img_size`` inputs, and the new config.

    Raises:
        ConfigError: an unknown method; a size that is not a multiple of the patch size; for
            ``tile``, a size that is not a whole multiple of ``cfg.img_size``.
        CheckpointError: a token-mixing tensor of another shape than ``cfg`` says.
    """
    new_cfg = resized_config(cfg, img_size, method)
    if img_size == cfg.img_size:
        return sd, cfg
    s, d = cfg.num_tokens, cfg.tokens_mlp_dim
    want = {("fc1", "weight"): (d, s), ("fc1", "bias"): (d,), ("fc2", "weight"): (s, d), ("fc2", "bias"): (s,)}
    for name, t in sd.items():  # the file is a user's: say which tensor is off rather than fail inside a reshape
        if (m := _TOKEN_MLP.fullmatch(name)) and tuple(t.shape) != want[m.groups()]:
            raise CheckpointError(f"{name} has shape {tuple(t.shape)}, but a {cfg.describe()} needs "
                                  f"{want[m.groups()]}: the weights are damaged or not one Mixer.")
    grid, new = cfg.img_size // cfg.patch_size, img_size // cfg.patch_size
    if method == "tile":
        k = img_size // cfg.img_size
        order = tile_order(grid, k)
        adapt = lambda name, t: _tile(name, t, order, k * k)  # noqa: E731
    else:
        adapt = lambda name, t: _resample(name, t, grid, new)  # noqa: E731
    return {name: adapt(name, t) if _TOKEN_MLP.fullmatch(name) else t for name, t in sd.items()}, new_cfg


__all__ = ["RESIZE_METHODS", "resize_state_dict", "resized_config", "tile_order"]
