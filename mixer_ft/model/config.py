"""What fixes a Mixer without building one: the paper's variants, their names, ``MixerConfig``, and
the upstream input pipeline's constants. No torch here, so the command line starts fast.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any

from mixer_ft.errors import ConfigError

GELU_FLAVOURS = ("tanh", "exact")
# Pretrained weights at another input size (mixer_ft.model.resolution): exact tiling, or approximate resampling.
RESIZE_METHODS = ("tile", "resample")
# Google's weights see pixels in [-1, 1]: (x - 0.5) / 0.5 for x in [0, 1]. The default of every
# config, checkpoint and preprocessing that does not say otherwise.
DEFAULT_MEAN = (0.5, 0.5, 0.5)
DEFAULT_STD = (0.5, 0.5, 0.5)

# Paper Table 1. Each entry: patch, hidden C, blocks, token MLP D_S, channel MLP D_C.
VARIANTS: dict[str, tuple[int, int, int, int, int]] = {
    "S/32": (32, 512, 8, 256, 2048),
    "S/16": (16, 512, 8, 256, 2048),
    "B/32": (32, 768, 12, 384, 3072),
    "B/16": (16, 768, 12, 384, 3072),
    "L/32": (32, 1024, 24, 512, 4096),
    "L/16": (16, 1024, 24, 512, 4096),
    "H/14": (14, 1280, 32, 640, 5120),
}

# "B/16", "B_16", "b16", "Mixer-B/16", "Mixer-B_16", "mixer_b16_224" all name one variant.
_VARIANT_RE = re.compile(r"(?:mixer[-_]?)?([a-z])[/_-]?(\d+)(?:_224)?", re.IGNORECASE)


def canonical_variant(name: str) -> str:
    """Return the canonical variant name ("B/16") for any accepted spelling.

    Raises:
        ConfigError: ``name`` is not one of the seven variants.
    """
    m = _VARIANT_RE.fullmatch(name.strip())
    key = f"{m.group(1).upper()}/{m.group(2)}" if m else None
    if key not in VARIANTS:
        raise ConfigError(
            f"Unknown Mixer variant {name!r}. Valid variants: {', '.join(VARIANTS)} "
            "(also spelled like 'B_16', 'Mixer-B/16' or timm's 'mixer_b16_224')."
        )
    return key


def timm_name(variant: str) -> str:
    """timm's model name for a variant: "B/16" -> "mixer_b16_224" (timm registers 224 only)."""
    return f"mixer_{canonical_variant(variant).replace('/', '').lower()}_224"


@dataclass(frozen=True)
class MixerConfig:
    """Everything that fixes a Mixer's architecture and its input preprocessing.

    ``mean``/``std`` belong to the checkpoint (as in timm): pixels in [0, 1] are normalised
    with them before the stem. Google's weights use 0.5/0.5, i.e. pixels in [-1, 1].
    """

    patch_size: int
    hidden_dim: int
    num_blocks: int
    tokens_mlp_dim: int
    channels_mlp_dim: int
    img_size: int = 224
    num_classes: int = 1000
    in_chans: int = 3
    gelu: str = "tanh"
    mean: tuple[float, ...] = field(default=DEFAULT_MEAN)
    std: tuple[float, ...] = field(default=DEFAULT_STD)

    def __post_init__(self) -> None:
        # Tuples survive a JSON round trip as lists; keep the frozen dataclass hashable.
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        for name in ("patch_size", "hidden_dim", "num_blocks", "tokens_mlp_dim",
                     "channels_mlp_dim", "img_size", "num_classes", "in_chans"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"Mixer config field {name} must be a positive integer, got {value!r}.")
        if self.gelu not in GELU_FLAVOURS:
            raise ConfigError(f"gelu must be one of {GELU_FLAVOURS}, got {self.gelu!r}.")
        if self.img_size % self.patch_size:
            lower = self.img_size // self.patch_size * self.patch_size
            near = [n for n in (lower, lower + self.patch_size) if n > 0]
            raise ConfigError(
                f"img_size {self.img_size} is not a multiple of the patch size {self.patch_size}; "
                f"sizes near it that work: {', '.join(map(str, near))}."
            )
        if len(self.mean) != self.in_chans or len(self.std) != self.in_chans:
            raise ConfigError(f"mean and std need {self.in_chans} values each (one per input channel).")
        if not all(math.isfinite(v) for v in self.mean + self.std) or 0.0 in self.std:
            raise ConfigError(f"mean and std must be finite numbers and std non-zero (every pixel is divided by it); "
                              f"got mean {list(self.mean)}, std {list(self.std)}.")
        # Checked before anything is allocated: an absurd size is one message, not minutes of swapping.
        if self.num_tokens > MAX_TOKENS:
            raise ConfigError(f"{self.img_size}x{self.img_size} input with patch {self.patch_size} is {self.num_tokens:,} "
                              f"tokens, more than the {MAX_TOKENS:,} mixer_ft builds ({int(MAX_TOKENS ** 0.5) * self.patch_size}"
                              f" px at this patch); choose a smaller img_size.")
        if self.param_count > MAX_PARAMS:
            raise ConfigError(f"This Mixer would have {self.param_count:,} parameters, more than the {MAX_PARAMS:,} "
                              "mixer_ft builds (H/14 has 432,350,952); check num_blocks and the widths.")

    @property
    def num_tokens(self) -> int:
        return (self.img_size // self.patch_size) ** 2

    @property
    def param_count(self) -> int:
        """Parameters of the model this config builds, counted from the config alone."""
        c, s, ds, dc = self.hidden_dim, self.num_tokens, self.tokens_mlp_dim, self.channels_mlp_dim
        block = 4 * c + (2 * s * ds + ds + s) + (2 * c * dc + dc + c)
        return self.patch_size ** 2 * self.in_chans * c + c + self.num_blocks * block + 2 * c + (c + 1) * self.num_classes

    @property
    def variant(self) -> str | None:
        """The paper's name for this architecture ("B/16"), or None for a custom one.

        K^2 times the token-MLP width, on a token grid K tiles wide, is the same variant: it is what
        tiling pre-trained weights gives (:mod:`mixer_ft.model.resolution`).
        """
        grid = self.img_size // self.patch_size
        for name, (p, c, n, ds, dc) in VARIANTS.items():
            k = math.isqrt(self.tokens_mlp_dim // ds)
            if (p, c, n, dc) == (self.patch_size, self.hidden_dim, self.num_blocks, self.channels_mlp_dim) \
                    and self.tokens_mlp_dim == ds * k * k and grid % k == 0:
                return name
        return None

    def describe(self) -> str:
        """One line naming the architecture, e.g. for messages."""
        name = f"Mixer-{self.variant}" if self.variant else "custom Mixer"
        return (f"{name} (patch {self.patch_size}, hidden {self.hidden_dim}, {self.num_blocks} blocks, "
                f"token MLP {self.tokens_mlp_dim}, channel MLP {self.channels_mlp_dim}, "
                f"{self.img_size}x{self.img_size} input, {self.num_classes} classes)")

    def replace(self, **changes: Any) -> MixerConfig:
        """A copy with ``changes`` applied; unknown field names are an error."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ConfigError(
                f"Unknown Mixer config field(s): {', '.join(sorted(unknown))}. "
                f"Valid fields: {', '.join(f.name for f in dataclasses.fields(self))}."
            )
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MixerConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - fields
        if unknown:
            raise ConfigError(f"Unknown Mixer config field(s): {', '.join(sorted(unknown))}.")
        try:
            return cls(**d)
        except TypeError as e:  # a required field is missing
            raise ConfigError(f"Incomplete Mixer config: {e}.") from None

    @classmethod
    def from_variant(cls, name: str, **changes: Any) -> MixerConfig:
        p, c, n, ds, dc = VARIANTS[canonical_variant(name)]
        base = cls(patch_size=p, hidden_dim=c, num_blocks=n, tokens_mlp_dim=ds, channels_mlp_dim=dc)
        return base.replace(**changes) if changes else base


# The largest Mixer mixer_ft builds: checked on the config, before any memory is taken. H/14 has
# 432M parameters and 256 tokens at 224 px; these leave room for 448-px and wider models.
MAX_PARAMS = 4_000_000_000
MAX_TOKENS = 16_384  # a 2048x2048 image at patch 16: 64 times the paper's 196 tokens

# The upstream Inception crop (vit_jax input_pipeline, TF's sample_distorted_bounding_box).
AREA_RANGE = (0.05, 1.0)  # share of the image a crop keeps
ASPECT_RANGE = (0.75, 1.33)  # tf.image.sample_distorted_bounding_box's default, which vit_jax keeps
# The data cache keeps each image at its own size, scaled down (aspect kept) so that its longer side
# is at most this: no image takes more than 3 x 512 x 512 bytes, whatever the photo's resolution.
MAX_SIDE = 512
FEWSHOT_SHOTS = (1, 5, 10, 25)  # training images per class that `mixer-ft fewshot` scores by default (the paper's)
TEST_FRACTION = 0.2  # share of each class held out as the test split of a folder that has no split folders
# Weight files by suffix: Google's .npz, safetensors, PyTorch pickles (mixer_ft.weights.weight_file reads them).
TORCH_PICKLE_SUFFIXES = (".pth", ".pt", ".bin")
WEIGHT_SUFFIXES = (".npz", ".safetensors", *TORCH_PICKLE_SUFFIXES)


__all__ = ["AREA_RANGE", "ASPECT_RANGE", "DEFAULT_MEAN", "DEFAULT_STD", "FEWSHOT_SHOTS", "GELU_FLAVOURS", "MAX_PARAMS",
           "MAX_SIDE", "MAX_TOKENS", "RESIZE_METHODS",
           "TEST_FRACTION",
           "VARIANTS", "MixerConfig", "canonical_variant", "timm_name"]
