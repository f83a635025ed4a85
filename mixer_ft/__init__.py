"""mixer_ft: fine-tune pretrained MLP-Mixer checkpoints.

Importing the package loads nothing heavy: torch and the model come with the first name that
needs them (``mixer_ft.create_model``, ``mixer_ft.Classifier``, ...), and timm, datasets and
huggingface_hub where they are used, so the command line starts fast.
"""

from importlib import import_module
from typing import Any

from mixer_ft.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    MixerFtError,
    RunStopped,
    SourceError,
    StorageError,
    TrainingError,
    Undecodable,
    WeightsUnavailable,
)
from mixer_ft.model.config import VARIANTS, MixerConfig, canonical_variant

__version__ = "0.1.0"

# Public names that need torch: the module each lives in, imported on first use (PEP 562).
_LAZY = {"Classifier": "use.infer", "MlpMixer": "model.mixer", "num_params": "model.mixer",
         "create_model": "weights.loading", "load_checkpoint": "weights.sources",
         "save_pretrained": "weights.model_folder", "upstream_sources": "weights.sources"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f"mixer_ft.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'mixer_ft' has no attribute {name!r}")


__all__ = [
    "VARIANTS", "CheckpointError", "Classifier", "ConfigError", "DataError", "MixerConfig", "MixerFtError", "MlpMixer",
    "RunStopped", "SourceError", "StorageError", "TrainingError", "Undecodable", "WeightsUnavailable", "__version__",
    "canonical_variant", "create_model",
    "load_checkpoint", "num_params", "save_pretrained", "upstream_sources",
]
