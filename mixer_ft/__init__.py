"""mixer_ft: fine-tune pretrained MLP-Mixer checkpoints.

Importing the package loads torch only; timm, datasets and huggingface_hub are imported
where they are used, so the CLI starts fast.
"""

from mixer_ft.errors import CheckpointError, ConfigError, DataError, MixerFtError, TrainingError, WeightsUnavailable
from mixer_ft.infer import Classifier
from mixer_ft.model import VARIANTS, MixerConfig, MlpMixer, canonical_variant, num_params
from mixer_ft.weights import create_model, load_checkpoint, save_pretrained, upstream_sources

__version__ = "0.1.0"

__all__ = [
    "VARIANTS", "CheckpointError", "Classifier", "ConfigError", "DataError", "MixerConfig", "MixerFtError", "MlpMixer",
    "TrainingError", "WeightsUnavailable", "__version__", "canonical_variant", "create_model", "load_checkpoint",
    "num_params", "save_pretrained", "upstream_sources",
]
