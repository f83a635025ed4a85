"""The MLP-Mixer (Tolstikhin et al., 2021) in plain PyTorch.

Parameter names equal timm's ``MlpMixer`` so a timm state dict loads with no renaming, and
the forward pass follows the upstream Flax model (``vit_jax/models_mixer.py``): patch stem,
pre-LayerNorm token- and channel-mixing MLPs with residuals, final LayerNorm, mean over
tokens, linear head.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from mixer_ft.model.config import (  # noqa: F401 - the model's facts, importable from here too
    DEFAULT_MEAN,
    DEFAULT_STD,
    GELU_FLAVOURS,
    VARIANTS,
    MixerConfig,
    canonical_variant,
    timm_name,
)
from mixer_ft.model.lora import LoRA, dense, dense_columns

LAYER_NORM_EPS = 1e-6  # Flax's default, and timm's for Mixer.


class Mlp(nn.Module):
    """Two dense layers with a GELU between them (timm's ``Mlp`` names: fc1, fc2)."""

    def __init__(self, dim: int, hidden: int, gelu: str) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh" if gelu == "tanh" else "none")
        self.fc2 = nn.Linear(hidden, dim)
        self.lora1: LoRA | None = None  # low-rank updates of fc1 and fc2 (recipe method "lora"; mixer_ft.model.lora)
        self.lora2: LoRA | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dense(self.fc2, self.lora2, self.act(dense(self.fc1, self.lora1, x)))


class MixerBlock(nn.Module):
    def __init__(self, cfg: MixerConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.hidden_dim, eps=LAYER_NORM_EPS)
        self.mlp_tokens = Mlp(cfg.num_tokens, cfg.tokens_mlp_dim, cfg.gelu)
        self.norm2 = nn.LayerNorm(cfg.hidden_dim, eps=LAYER_NORM_EPS)
        self.mlp_channels = Mlp(cfg.hidden_dim, cfg.channels_mlp_dim, cfg.gelu)
        self.fast = True

    def mix_tokens(self, y: torch.Tensor) -> torch.Tensor:
        """The token-mixing MLP, in the block's layout (see ``forward``)."""
        mlp = self.mlp_tokens
        if not self.fast:  # the textbook form: transpose, dense along tokens, transpose back
            return mlp(y.transpose(1, 2)).transpose(1, 2)
        # Token-major y (S, B, C) is a matrix (S, B*C): the dense layer along tokens is one
        # product W (D_S, S) @ y with the bias fused, for the whole batch at once. No transposed
        # copies, and the weight gradient is one product too instead of a sum of per-image ones.
        # LoRA's update, where there is one, in the same layout: (D_S, r) @ (r, S) @ y.
        s, b, c = y.shape
        h = mlp.act(dense_columns(mlp.fc1, mlp.lora1, y.reshape(s, b * c)))
        return dense_columns(mlp.fc2, mlp.lora2, h).view(s, b, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, tokens, channels); token-major (tokens, batch, channels) on the fast path."""
        x = x + self.mix_tokens(self.norm1(x))
        return x + self.mlp_channels(self.norm2(x))


class PatchStem(nn.Module):
    """Non-overlapping patches, linearly embedded (a strided conv; timm's ``stem.proj``)."""

    def __init__(self, cfg: MixerConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(cfg.in_chans, cfg.hidden_dim, cfg.patch_size, stride=cfg.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, tokens, channels), patches in raster order (Flax's 'n h w c -> n (h w) c')."""
        return self.proj(x).flatten(2).transpose(1, 2)

    def forward_token_major(self, x: torch.Tensor) -> torch.Tensor:
        """(tokens, batch, channels) straight from one matrix product over the cut-up image.

        Non-overlapping patches make the strided conv a dense layer on each patch's pixels: one
        copy of the (small) input instead of a transposed copy of the (large) output, and a
        plain product in place of the convolution and its slower backward pass.
        """
        n, c, h, w = x.shape
        p = self.proj.kernel_size[0]
        if h % p or w % p:  # the conv drops the ragged edge; keep its exact behaviour
            return self.forward(x).transpose(0, 1).contiguous()
        patches = x.reshape(n, c, h // p, p, w // p, p).permute(2, 4, 0, 1, 3, 5)
        patches = patches.reshape(h // p * (w // p), n, c * p * p)
        return F.linear(patches, self.proj.weight.reshape(self.proj.out_channels, -1), self.proj.bias)


class MlpMixer(nn.Module):
    """MLP-Mixer classifier. Input: normalised images (batch, in_chans, img_size, img_size)."""

    def __init__(self, config: MixerConfig) -> None:
        super().__init__()
        self.config = config
        self.stem = PatchStem(config)
        self.blocks = nn.ModuleList(MixerBlock(config) for _ in range(config.num_blocks))
        self.norm = nn.LayerNorm(config.hidden_dim, eps=LAYER_NORM_EPS)
        self.head = nn.Linear(config.hidden_dim, config.num_classes)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Initialise as the upstream Flax model: LeCun-normal kernels, zero biases, zero head."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                if module.weight.is_meta:
                    continue
                fan_in = module.weight[0].numel()
                # Flax's lecun_normal is a normal truncated at 2 std, rescaled to keep variance 1/fan_in.
                std = math.sqrt(1.0 / fan_in) / 0.87962566103423978
                nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
                nn.init.zeros_(module.bias)
        if not self.head.weight.is_meta:
            self.reset_head()

    @torch.no_grad()
    def reset_head(self) -> None:
        """Zero the classifier, as upstream does for a new head before fine-tuning."""
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def set_fast_path(self, enabled: bool = True) -> MlpMixer:
        """Token-major activations, so token mixing is one matrix product per layer with no
        transposed copies (on by default; the same numbers within float tolerance). Off gives the
        textbook (batch, tokens, channels) form with transposes, e.g. to compare against."""
        for block in self.blocks:
            block.fast = enabled
        return self

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features (batch, hidden_dim), before the head."""
        fast = len(self.blocks) > 0 and self.blocks[0].fast  # not bool(ModuleList): torch 2.11's dynamo breaks there
        x = self.stem.forward_token_major(x) if fast else self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.norm(x).mean(dim=0 if fast else 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


def num_params(model: nn.Module) -> int:
    """Number of parameters (works on meta-device models too)."""
    return sum(p.numel() for p in model.parameters())
