"""An MLP-Mixer (Tolstikhin et al., 2021) for transformers' ``trust_remote_code`` loading of a
mixer_ft model folder. Parameter names are timm's (the folder's model.safetensors as it is); the
forward pass is mixer_ft's textbook form: patch stem, pre-LayerNorm token- and channel-mixing MLPs
with residuals, final LayerNorm, mean over tokens, linear head.
"""

from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import ImageClassifierOutput

from .configuration_mixer_ft import MixerFtConfig

LAYER_NORM_EPS = 1e-6  # Flax's default, and timm's for Mixer


class Mlp(nn.Module):
    def __init__(self, dim, hidden, gelu):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh" if gelu == "tanh" else "none")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class MixerBlock(nn.Module):
    def __init__(self, config, num_tokens):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.hidden_dim, eps=LAYER_NORM_EPS)
        self.mlp_tokens = Mlp(num_tokens, config.tokens_mlp_dim, config.gelu)
        self.norm2 = nn.LayerNorm(config.hidden_dim, eps=LAYER_NORM_EPS)
        self.mlp_channels = Mlp(config.hidden_dim, config.channels_mlp_dim, config.gelu)

    def forward(self, x):  # (batch, tokens, channels)
        x = x + self.mlp_tokens(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.mlp_channels(self.norm2(x))


class PatchStem(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.proj = nn.Conv2d(config.num_channels, config.hidden_dim, config.patch_size, stride=config.patch_size)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class MixerFtForImageClassification(PreTrainedModel):
    """Normalised images (batch, channels, size, size) -> class logits."""

    config_class = MixerFtConfig
    main_input_name = "pixel_values"
    base_model_prefix = "mixer"

    def __init__(self, config):
        super().__init__(config)
        num_tokens = (config.image_size // config.patch_size) ** 2
        self.stem = PatchStem(config)
        self.blocks = nn.ModuleList(MixerBlock(config, num_tokens) for _ in range(config.num_blocks))
        self.norm = nn.LayerNorm(config.hidden_dim, eps=LAYER_NORM_EPS)
        self.head = nn.Linear(config.hidden_dim, config.num_labels)
        self.post_init()

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def forward(self, pixel_values, labels=None, **kwargs):
        x = self.stem(pixel_values)
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.norm(x).mean(dim=1))
        loss = None if labels is None else nn.functional.cross_entropy(logits, labels)
        return ImageClassifierOutput(loss=loss, logits=logits)
