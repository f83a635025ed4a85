"""The model folder: the one format this toolkit saves a model in, and reads back.

``model.safetensors`` (timm's state-dict names); ``config.json`` with timm's fields where timm can
build the architecture, the class names (``label_names``, as timm's configs have them) and, under
``mixer_ft``, the exact architecture, the evaluation views and how the model was made; ``README.md``,
a Hugging Face model card (:mod:`mixer_ft.weights.card`). The folder is what ``huggingface_hub.upload_folder``
pushes as it is. Importing this module loads no torch: push and preflight only look at files.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mixer_ft.atomic import atomic_write, atomic_write_text, json_text
from mixer_ft.bounded import read_text
from mixer_ft.errors import CheckpointError, ConfigError
from mixer_ft.model.config import timm_name
from mixer_ft.publish import public_source, published

if TYPE_CHECKING:
    from mixer_ft.model.config import MixerConfig
    from mixer_ft.model.mixer import MlpMixer

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.pth", "model.pt")
# A run folder's training checkpoints, checkpoints/step_<8 digits>.pt (mixer_ft.train.checkpoints writes them);
# any other file there is not one of them.
CHECKPOINT_NAME = re.compile(r"step_(\d{8})\.pt")


def model_folder(path: str | Path) -> Path:
    """A model folder (model.safetensors + config.json); a run folder gives its model/."""
    folder = Path(path).expanduser()
    if (folder / "model" / "model.safetensors").is_file():
        folder = folder / "model"
    if not (folder / "model.safetensors").is_file() or not (folder / "config.json").is_file():
        raise ConfigError(f"{path} is not a model folder (model.safetensors and config.json, as `mixer-ft finetune` "
                          "writes to runs/<name>/model) or a finished run folder.")
    return folder


def weights_in(path: Path) -> Path | None:
    """The weight file of a model folder: one of WEIGHT_FILES, or its single .npz."""
    found = next((path / f for f in WEIGHT_FILES if (path / f).is_file()), None)
    if found is None:
        npz = sorted(path.glob("*.npz"))
        found = npz[0] if len(npz) == 1 else None
    return found


def read_config(folder: Path) -> dict[str, Any]:
    """A folder's config.json ({} if it has none)."""
    cfg_file = folder / "config.json"
    if not cfg_file.is_file():
        return {}
    try:
        return json.loads(read_text(cfg_file, "model config"))
    except (OSError, UnicodeDecodeError, RecursionError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{cfg_file} is not valid JSON ({e}); repair or remove it.") from None


def public_provenance(provenance: dict[str, Any]) -> dict[str, Any]:
    """``provenance`` as a model folder publishes it (it is pushed with the folder): each source by its public name
    (:func:`mixer_ft.publish.public_source`), and every other string's URLs without their tokens."""
    return published({k: public_source(v) if k in ("upstream", "dataset", "data_source") else v
                      for k, v in provenance.items()})


def _timm_fields(cfg: MixerConfig) -> dict[str, Any]:
    """What timm's ``local-dir:`` loader reads; the variant's function fixes patch, width and depth."""
    return {
        "architecture": timm_name(cfg.variant),  # type: ignore[arg-type]
        "num_classes": cfg.num_classes,
        "num_features": cfg.hidden_dim,
        "model_args": {"img_size": cfg.img_size, "in_chans": cfg.in_chans,  # the ratios: a tiled model's token MLP
                       "mlp_ratio": [cfg.tokens_mlp_dim / cfg.hidden_dim, cfg.channels_mlp_dim / cfg.hidden_dim]},
        "pretrained_cfg": {
            "input_size": [cfg.in_chans, cfg.img_size, cfg.img_size], "mean": list(cfg.mean),
            "std": list(cfg.std), "interpolation": "bilinear", "crop_pct": 1.0,
            "crop_mode": "squash",  # the whole image resized to the input size, as ours: no short-side resize and crop
            "num_classes": cfg.num_classes,
        },
    }


def save_pretrained(model: MlpMixer, directory: str | Path, *, classes: list[str] | None = None,
                    evaluation: dict[str, Any] | None = None, provenance: dict[str, Any] | None = None) -> Path:
    """Save ``model`` as a folder that describes itself: weights, config and a model card.

    ``model.safetensors``; ``config.json`` with the architecture and preprocessing, the class
    names (``label_names``, as timm's configs have them), the evaluation views and how the model
    was made (under ``mixer_ft``); ``README.md``, a Hugging Face model card. For the paper's
    variants the config also carries timm's fields, so ``timm.create_model("local-dir:DIR",
    pretrained=True)`` reads the folder (running timm's exact GELU). The folder is what
    ``huggingface_hub.upload_folder`` pushes as it is.

    Args:
        classes: class names in head order.
        evaluation: test-time views it was scored with (``flip``, ``translate``, ``precision``).
        provenance: how it was made (upstream, data set, accuracy, steps, commit, ...).
    """
    from safetensors.torch import save_file

    from mixer_ft.weights.card import model_card

    cfg = model.config
    if classes is not None and len(classes) != cfg.num_classes:
        raise ConfigError(f"{len(classes)} class names for a head of {cfg.num_classes} classes.")
    config: dict[str, Any] = _timm_fields(cfg) if cfg.variant else dict(_REMOTE_CODE)
    if classes:
        config["label_names"] = list(classes)
    provenance = public_provenance(provenance or {})
    config["mixer_ft"] = published({"config": cfg.to_dict(), "evaluation": evaluation or {}, "provenance": provenance})
    directory = Path(directory)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(directory / "model.safetensors", lambda p: save_file(tensors, str(p)))
    atomic_write_text(directory / "config.json", json_text(config, indent=2) + "\n")
    atomic_write_text(directory / "README.md", model_card(cfg, classes, evaluation, provenance))
    if not cfg.variant:  # timm cannot build it: transformers can, with the folder's own code
        _write_remote_code(directory, cfg)
    return directory


# A custom size in config.json: transformers' AutoModelForImageClassification and pipeline load it
# with trust_remote_code=True, running the two files mixer_ft.weights.remote_code copies beside it.
_REMOTE_CODE = {
    "model_type": "mixer_ft",
    "architectures": ["MixerFtForImageClassification"],
    "auto_map": {"AutoConfig": "configuration_mixer_ft.MixerFtConfig",
                 "AutoModelForImageClassification": "modeling_mixer_ft.MixerFtForImageClassification"},
}


def model_files(directory: Path) -> list[Path]:
    """The files :func:`save_pretrained` writes that are in ``directory`` (a user's own files there are not)."""
    from mixer_ft.weights.remote_code import FILES

    names = ("model.safetensors", "config.json", "README.md", "preprocessor_config.json", *FILES)
    return [directory / n for n in names if (directory / n).is_file()]


def _write_remote_code(directory: Path, cfg: MixerConfig) -> None:
    """The model code and the image processor's settings (the whole image resized, as ours)."""
    from mixer_ft.weights.remote_code import FILES, HERE

    for name in FILES:
        atomic_write_text(directory / name, (HERE / name).read_text())
    processor = {"image_processor_type": "ViTImageProcessor", "do_resize": True, "resample": 2,  # bilinear
                 "size": {"height": cfg.img_size, "width": cfg.img_size}, "do_rescale": True,
                 "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(cfg.mean),
                 "image_std": list(cfg.std)}
    atomic_write_text(directory / "preprocessor_config.json", json_text(processor, indent=2) + "\n")


__all__ = ["CHECKPOINT_NAME", "WEIGHT_FILES", "model_files", "model_folder", "read_config", "save_pretrained", "weights_in"]
