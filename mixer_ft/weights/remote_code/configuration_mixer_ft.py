"""The configuration of a mixer_ft model folder, for transformers' ``trust_remote_code`` loading.

Reads the folder's config.json as mixer_ft writes it: the architecture under ``mixer_ft.model.config``,
the class names as ``label_names``.
"""

from transformers import PretrainedConfig


class MixerFtConfig(PretrainedConfig):
    """An MLP-Mixer of any size: patch size, depth, width, MLP widths, input size, GELU flavour."""

    model_type = "mixer_ft"

    def __init__(self, mixer_ft=None, label_names=None, **kwargs):
        arch = dict((mixer_ft or {}).get("config", {}))
        self.mixer_ft = mixer_ft or {}
        self.label_names = list(label_names or [])
        self.patch_size = int(arch.get("patch_size", 16))
        self.hidden_dim = int(arch.get("hidden_dim", 768))
        self.num_blocks = int(arch.get("num_blocks", 12))
        self.tokens_mlp_dim = int(arch.get("tokens_mlp_dim", 384))
        self.channels_mlp_dim = int(arch.get("channels_mlp_dim", 3072))
        self.image_size = int(arch.get("img_size", 224))
        self.num_channels = int(arch.get("in_chans", 3))
        self.gelu = arch.get("gelu", "tanh")
        if self.label_names and "id2label" not in kwargs:
            kwargs["id2label"] = dict(enumerate(self.label_names))
            kwargs["label2id"] = {name: i for i, name in enumerate(self.label_names)}
        elif "num_labels" not in kwargs and "id2label" not in kwargs and "num_classes" in arch:
            kwargs["num_labels"] = int(arch["num_classes"])
        super().__init__(**kwargs)
