"""Pretrained Mixer weights from every place they are published, loaded strictly.

A *source* is one of:

- ``in1k`` / ``in21k``: Google's upstream weights for a variant; resolved to an ordered list
  of places (the Hub copy, then Google's .npz), see :func:`upstream_sources`;
- ``hf-hub:owner/name[@revision]``: a ``model.safetensors`` on the Hugging Face Hub;
- ``timm:model.tag``: ``timm.create_model(model.tag, pretrained=True)``;
- an ``http(s)://`` URL of a Google ``.npz`` (or a ``.safetensors``), downloaded into the cache;
- a local ``.npz``, ``.safetensors``, ``.pth``/``.pt``/``.bin`` file, or a folder holding one
  with its ``config.json`` (what :func:`save_pretrained` writes).

Every source becomes a state dict in timm's names; the architecture is read off its tensor
shapes. Nothing here runs code from a file: pickles are refused, downloads are checked and
written atomically.

GELU flavour: Google's weights were trained in Flax, whose ``gelu`` is the tanh approximation,
so they get ``gelu="tanh"`` (also through timm or the Hub, tags ``goog_*``). Weights trained in
PyTorch (timm's ``miil_*``, a bare state dict) get ``"exact"``, timm's GELU. A folder written by
this toolkit carries its own.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import math
import os
import pickle
import re
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mixer_ft.atomic import atomic_write, atomic_write_text
from mixer_ft.errors import CheckpointError, ConfigError, MixerFtError, WeightsUnavailable
from mixer_ft.model import DEFAULT_MEAN, DEFAULT_STD, VARIANTS, MixerConfig, MlpMixer, canonical_variant, timm_name

UPSTREAMS = ("in1k", "in21k")
# Google's folder and timm's tag for each upstream. timm's "goog_in21k_ft_in1k" tag holds
# Google's ImageNet-1k-only weights (timm PR #651, confirmed by a Mixer author), so it is the
# Hub copy of "in1k", not a 21k model fine-tuned on 1k.
_UPSTREAM_PLACES = {"in1k": ("imagenet1k", "goog_in21k_ft_in1k"), "in21k": ("imagenet21k", "goog_in21k")}
_UPSTREAM_VARIANTS = ("B/16", "L/16")  # the only variants Google published in these folders
GOOGLE_BASE_URL = "https://storage.googleapis.com/mixer_models"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.pth", "model.pt")


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


# --------------------------------------------------------------------------- sources


def upstream_sources(upstream: str, variant: str) -> list[str]:
    """Ordered places holding Google's ``upstream`` weights for ``variant``: the Hub, then GCS.

    Raises:
        ConfigError: unknown upstream, or a variant Google did not publish for it.
    """
    if upstream not in UPSTREAMS:
        raise ConfigError(f"Unknown upstream {upstream!r}; choose one of {', '.join(UPSTREAMS)}.")
    v = canonical_variant(variant)
    if v not in _UPSTREAM_VARIANTS:
        raise ConfigError(
            f"Google published {upstream} Mixer weights for {' and '.join(_UPSTREAM_VARIANTS)} only, "
            f"not {v}. Pick one of those, or train {v} from scratch (no pretrained weights)."
        )
    folder, tag = _UPSTREAM_PLACES[upstream]
    base = os.environ.get("MIXER_FT_GOOGLE_BASE_URL", GOOGLE_BASE_URL).rstrip("/")
    return [f"hf-hub:timm/{timm_name(v)}.{tag}", f"{base}/{folder}/Mixer-{v.replace('/', '_')}.npz"]


def load_checkpoint(source: str, *, variant: str | None = None) -> Checkpoint:
    """Read any weight source (see the module docstring) into a :class:`Checkpoint`.

    Args:
        source: where the weights are.
        variant: the Mixer variant, needed when ``source`` is ``in1k``/``in21k``.

    Raises:
        CheckpointError: unreadable, unsafe or non-Mixer weights.
        WeightsUnavailable: not cached and cannot be downloaded.
    """
    if source in UPSTREAMS:
        if variant is None:
            raise ConfigError(f"Upstream {source!r} needs a model variant too, e.g. --model B/16.")
        return _load_first(source, upstream_sources(source, variant))
    if source.startswith("hf-hub:"):
        return _load_hub(source)
    if source.startswith("timm:"):
        return _load_timm(source)
    if re.match(r"https?://", source):
        return _load_file(download(source), source)
    path = Path(source).expanduser()
    if path.is_dir():
        return _load_folder(path, source)
    if path.is_file():
        return _load_file(path, source)
    raise WeightsUnavailable(
        f"{source!r} is neither a Mixer variant ({', '.join(VARIANTS)}) nor a weight source: there is no "
        f"such file or folder, and it is not a URL, an 'hf-hub:'/'timm:' id or an upstream name "
        f"({', '.join(UPSTREAMS)})."
    )


def _load_first(upstream: str, sources: list[str]) -> Checkpoint:
    """Try each place in order; only unavailability moves on, a bad file stops."""
    failures: dict[str, str] = {}
    for src in sources:
        try:
            return _load_hub(src) if src.startswith("hf-hub:") else _load_file(download(src), src)
        except WeightsUnavailable as e:
            failures[src] = str(e)
    raise WeightsUnavailable(
        f"The {upstream} weights could not be found in any of their places:\n"
        + "\n".join(f"- {src}: {why}" for src, why in failures.items())
    )


def offline() -> bool:
    """True when downloads are forbidden (``HF_HUB_OFFLINE`` or ``MIXER_FT_OFFLINE`` set)."""
    truthy = {"1", "true", "yes", "on"}
    return any(os.environ.get(k, "").lower() in truthy for k in ("HF_HUB_OFFLINE", "MIXER_FT_OFFLINE"))


def _load_hub(source: str) -> Checkpoint:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError

    spec = source.removeprefix("hf-hub:")
    repo_id, _, revision = spec.partition("@")
    try:
        path = hf_hub_download(repo_id, "model.safetensors", revision=revision or None)
    except (RepositoryNotFoundError, EntryNotFoundError) as e:
        if isinstance(e, FileNotFoundError):  # LocalEntryNotFoundError: not cached, can't download
            from huggingface_hub import constants

            why = "HF_HUB_OFFLINE=1 forbids downloading" if offline() else "the Hub could not be reached"
            raise WeightsUnavailable(
                f"{repo_id}/model.safetensors is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) "
                f"and {why}. On a machine with internet run `hf download {repo_id} model.safetensors "
                f"config.json` and copy its cache folder models--{repo_id.replace('/', '--')} into "
                f"{constants.HF_HUB_CACHE}."
            ) from None
        raise CheckpointError(f"The Hub has no {repo_id} with a model.safetensors: {e}") from None
    except (HfHubHTTPError, OSError) as e:
        raise WeightsUnavailable(f"Downloading {repo_id}/model.safetensors failed: {e}") from None
    meta: dict[str, Any] = {}
    try:
        meta = json.loads(Path(hf_hub_download(repo_id, "config.json", revision=revision or None)).read_text())
    except Exception:  # noqa: BLE001 - the config only adds preprocessing; the weights suffice
        pass
    ckpt = Checkpoint(_read_safetensors(Path(path)), source, str(path))
    _apply_metadata(ckpt, meta, tag=repo_id)
    return ckpt


def _load_timm(source: str) -> Checkpoint:
    import timm
    from timm.models.mlp_mixer import MixerBlock as TimmMixerBlock
    from timm.models.mlp_mixer import MlpMixer as TimmMlpMixer

    name = source.removeprefix("timm:")
    try:
        model = timm.create_model(name, pretrained=True)
    except RuntimeError as e:
        if "Unknown model" in str(e) or "Invalid pretrained tag" in str(e):
            mixers = [m for m in timm.list_pretrained("mixer_*")]
            raise ConfigError(f"timm has no pretrained model {name!r}. Mixer ones: {', '.join(mixers)}.") from None
        raise CheckpointError(f"timm could not load {name!r}: {e}") from None
    except (OSError, ValueError) as e:  # LocalEntryNotFoundError is an OSError
        raise WeightsUnavailable(
            f"timm could not fetch the weights of {name!r} ({type(e).__name__}: {e}). They come from the Hub "
            f"repo in timm's pretrained config; see `mixer-ft inspect hf-hub:timm/{name}` for where to put them."
        ) from None
    if not isinstance(model, TimmMlpMixer) or not all(isinstance(b, TimmMixerBlock) for b in model.blocks):
        raise CheckpointError(f"timm's {name!r} is not an MLP-Mixer (gMLP, ResMLP and gMixer are other models).")
    ckpt = Checkpoint({k: v.detach() for k, v in model.state_dict().items()}, source)
    _apply_metadata(ckpt, {"pretrained_cfg": dict(model.pretrained_cfg)}, tag=name)
    return ckpt


def _load_folder(path: Path, source: str) -> Checkpoint:
    """A model folder; or a run folder: its model/, else its newest training checkpoint."""
    weights = next((path / f for f in WEIGHT_FILES if (path / f).is_file()), None)
    if weights is None:
        npz = sorted(path.glob("*.npz"))
        weights = npz[0] if len(npz) == 1 else None
    if weights is None and (path / "model").is_dir():
        return _load_folder(path / "model", source)
    if weights is None and (steps := sorted((path / "checkpoints").glob("step_*.pt"))):
        return _load_file(steps[-1], source)
    if weights is None:
        raise CheckpointError(
            f"Folder {path} holds no weights: expected one of {', '.join(WEIGHT_FILES)}, a single .npz, or a "
            "run folder (model/ or checkpoints/)."
        )
    ckpt = _load_file(weights, source)
    cfg_file = path / "config.json"
    if cfg_file.is_file():
        try:
            meta = json.loads(cfg_file.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{cfg_file} is not valid JSON ({e}); repair or remove it.") from None
        _apply_metadata(ckpt, meta, tag="")
    return ckpt


def _apply_metadata(ckpt: Checkpoint, meta: dict[str, Any], tag: str) -> None:
    """Preprocessing, GELU flavour and class names from a config.json (ours or timm's) and the weight tag."""
    names = meta.get("label_names") or meta.get("pretrained_cfg", {}).get("label_names")
    if isinstance(names, list) and names:
        ckpt.classes = [str(n) for n in names]
    ours = meta.get("mixer_ft")
    if ours:
        try:
            cfg = ours.get("config", ours)  # before model cards, the config stood alone
            ckpt.gelu, ckpt.mean, ckpt.std = cfg["gelu"], tuple(cfg["mean"]), tuple(cfg["std"])
            ckpt.evaluation, ckpt.provenance = dict(ours.get("evaluation", {})), dict(ours.get("provenance", {}))
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"The mixer_ft section of {ckpt.source}'s config.json is malformed ({e!r}); "
                                  "save the model again or remove config.json.") from None
        return
    pcfg = meta.get("pretrained_cfg", meta)
    if "mean" in pcfg and "std" in pcfg:
        ckpt.mean, ckpt.std = tuple(pcfg["mean"]), tuple(pcfg["std"])
    # Google's weights were trained in Flax with tanh GELU; everything else in timm's exact one.
    ckpt.gelu = "tanh" if ".goog" in tag or tag.startswith("goog") else "exact"


# --------------------------------------------------------------------------- files


def _load_file(path: Path, source: str) -> Checkpoint:
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return Checkpoint(npz_to_state_dict(_read_npz(path), str(path)), source, str(path), gelu="tanh")
    if suffix == ".safetensors":
        return Checkpoint(_read_safetensors(path), source, str(path))
    if suffix not in (".pth", ".pt", ".bin"):
        raise CheckpointError(
            f"Don't know how to read {path}: expected .npz (Google), .safetensors, or .pth/.pt/.bin (PyTorch)."
        )
    sd, wrapper = _read_torch(path)
    ckpt = Checkpoint(sd, source, str(path))
    if isinstance(wrapper.get("model_config"), dict):  # a mixer_ft training checkpoint describes its model
        _apply_metadata(ckpt, {"label_names": wrapper.get("classes"),
                               "mixer_ft": {"config": wrapper["model_config"],
                                            "evaluation": wrapper.get("evaluation", {})}}, tag="")
    return ckpt


def _unreadable(path: Path, e: BaseException) -> CheckpointError:
    return CheckpointError(
        f"Could not read checkpoint {path}: it is truncated, corrupt or not the format its name says "
        f"({type(e).__name__}: {e}). Delete it and download or save it again."
    )


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise CheckpointError(f"{path} is a single .npy array, not an .npz of named parameters.")
            return {k: z[k] for k in z.files}
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise CheckpointError(
                f"Refusing {path}: it holds pickled Python objects, and unpickling can run code. "
                "Google's weights are plain arrays; re-export the file with numpy arrays only."
            ) from None
        raise _unreadable(path, e) from None
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        raise _unreadable(path, e) from None


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise _unreadable(path, e) from None


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
        raise _unreadable(path, e) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as e:
        raise _unreadable(path, e) from None
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


# --------------------------------------------------------------------------- Google .npz layout


# Each layer: Google's name, timm's name, kind. A block's layers, then the kinds' parameters
# with the number of dimensions each must have.
_NPZ_BLOCK = (("LayerNorm_0", "norm1", "norm"), ("token_mixing/Dense_0", "mlp_tokens.fc1", "dense"),
              ("token_mixing/Dense_1", "mlp_tokens.fc2", "dense"), ("LayerNorm_1", "norm2", "norm"),
              ("channel_mixing/Dense_0", "mlp_channels.fc1", "dense"),
              ("channel_mixing/Dense_1", "mlp_channels.fc2", "dense"))
_NPZ_PARAMS = {"conv": (("kernel", 4), ("bias", 1)), "dense": (("kernel", 2), ("bias", 1)),
               "norm": (("scale", 1), ("bias", 1))}


def _npz_layers(arrays: dict[str, np.ndarray]) -> list[tuple[str, str, str]]:
    """Every layer the file should hold, in order; the head only where the file has one."""
    n_blocks = 1 + max(int(m.group(1)) for k in arrays if (m := re.match(r"MixerBlock_(\d+)/", k)))
    layers = [("stem", "stem.proj", "conv")]
    layers += [(f"MixerBlock_{i}/{src}", f"blocks.{i}.{dst}", kind) for i in range(n_blocks) for src, dst, kind in _NPZ_BLOCK]
    layers.append(("pre_head_layer_norm", "norm", "norm"))
    if any(k.startswith("head/") for k in arrays):  # a pre-logits export has no head; the caller then asks for one
        layers.append(("head", "head", "dense"))
    return layers


def _npz_layer(kind: str, dst: str, p: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str | None]:
    """One layer in timm's layout, or why its two arrays do not make one.

    Flax Dense kernels are (in, out), torch Linear weights (out, in); the stem's conv kernel
    is HWIO, torch's OIHW.
    """
    first, bias = p["scale"] if kind == "norm" else p["kernel"], p["bias"]
    if kind == "norm":
        ok, weight = first.shape == bias.shape, first
    elif kind == "dense":
        ok, weight = first.shape[1] == bias.shape[0], first.T.contiguous()
    else:
        ok, weight = first.shape[0] == first.shape[1] and first.shape[3] == bias.shape[0], first.permute(3, 2, 0, 1)
    if not ok:
        return {}, f"{dst}: {tuple(first.shape)} and bias {tuple(bias.shape)} do not fit together"
    return {f"{dst}.weight": weight.contiguous(), f"{dst}.bias": bias}, None


def npz_to_state_dict(arrays: dict[str, np.ndarray], where: str = "npz") -> dict[str, torch.Tensor]:
    """Map a Google Mixer parameter tree (Flax names joined by '/') to timm's names.

    Raises:
        CheckpointError: not Google's Mixer layout, or arrays missing, unexpected or malformed,
            all of them listed.
    """
    if "stem/kernel" not in arrays or not any(k.startswith("MixerBlock_0/") for k in arrays):
        sample = ", ".join(sorted(arrays)[:5])
        raise CheckpointError(
            f"{where} is not a Mixer in Google's layout: no 'stem/kernel' and 'MixerBlock_0/...' arrays "
            f"(it has {sample}{', ...' if len(arrays) > 5 else ''}). ViT .npz files are a different model."
        )
    left, sd, missing, bad = dict(arrays), {}, [], []
    for src, dst, kind in _npz_layers(arrays):
        params = {}
        for name, ndim in _NPZ_PARAMS[kind]:
            a = left.pop(f"{src}/{name}", None)
            if a is None:
                missing.append(f"{src}/{name}")
            elif a.ndim != ndim or a.dtype.kind not in "fiu":
                bad.append(f"{src}/{name} is {a.dtype} {a.shape}, expected a {ndim}-d float array")
            else:
                params[name] = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
        if len(params) == 2:
            layer, why = _npz_layer(kind, dst, params)
            sd |= layer
            bad += [why] if why else []
    if missing or left or bad:
        raise CheckpointError(
            f"{where} is an incomplete or unfamiliar Mixer .npz. Missing: {', '.join(missing) or 'none'}. "
            f"Unexpected: {', '.join(sorted(left)) or 'none'}. Malformed: {'; '.join(bad) or 'none'}."
        )
    return sd


# --------------------------------------------------------------------------- architecture & loading


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
    blocks = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k)))
    if "head.weight" in sd:
        num_classes = sd["head.weight"].shape[0]
    elif num_classes is None:
        raise CheckpointError(f"{source} has no classifier head; pass num_classes to add a new one.")
    return MixerConfig(
        patch_size=patch, hidden_dim=hidden, num_blocks=blocks, tokens_mlp_dim=tokens_mlp,
        channels_mlp_dim=channels_mlp, img_size=side * patch, num_classes=num_classes,
        in_chans=in_chans, gelu=gelu, mean=mean[:in_chans], std=std[:in_chans],
    )


def _mismatch_report(model: torch.nn.Module, sd: dict[str, torch.Tensor]) -> tuple[list, list, list]:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    misshaped = [f"{k} {tuple(sd[k].shape)} vs model {expected[k]}"
                 for k in expected if k in sd and tuple(sd[k].shape) != expected[k]]
    return missing, unexpected, misshaped


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
            f"{head}{hint}\n  missing: {', '.join(missing) or 'none'}\n  unexpected: "
            f"{', '.join(unexpected) or 'none'}\n  mis-shaped: {', '.join(misshaped) or 'none'}"
        )
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
        pretrained: any weight source (see :mod:`mixer_ft.weights`).
        num_classes: a new class count; the checkpoint's head is then replaced by a zero one.
        resize: with ``pretrained`` and an ``img_size`` other than the checkpoint's: ``"tile"``
            (exact, whole multiples of its size) or ``"resample"`` (approximate, any size); see
            :mod:`mixer_ft.resolution`.
        **overrides: other :class:`~mixer_ft.model.MixerConfig` fields, e.g. ``img_size=448``.

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
                          resize: str = "tile", **overrides: Any) -> MlpMixer:
    """The model ``ckpt`` holds (strictly loaded), as :func:`create_model` describes its arguments."""
    from mixer_ft.resolution import resize_state_dict

    found = ckpt.config() if "head.weight" in ckpt.state_dict else None
    base = found or infer_config(ckpt.state_dict, num_classes=num_classes or 1000, source=ckpt.source)
    if overrides.get("img_size", base.img_size) != base.img_size:
        sd, base = resize_state_dict(ckpt.state_dict, base, overrides["img_size"], resize)
        ckpt = dataclasses.replace(ckpt, state_dict=sd)
    base = base.replace(gelu=ckpt.gelu)
    if name is not None and base.variant != canonical_variant(name):  # load_strict reports what differs
        base = MixerConfig.from_variant(name, **{k: getattr(base, k) for k in _KEPT})
    new_head = num_classes is not None and (found is None or num_classes != found.num_classes)
    cfg = base.replace(**overrides, **({"num_classes": num_classes} if num_classes is not None else {}))
    with torch.device("meta"):  # weights come from the checkpoint: skip the random init
        model = MlpMixer(cfg)
    return load_strict(model, ckpt, new_head=new_head)


# --------------------------------------------------------------------------- downloads & saving


def cache_dir() -> Path:
    """Where downloaded .npz files live: ``$MIXER_FT_CACHE`` or ``~/.cache/mixer_ft``."""
    return Path(os.environ.get("MIXER_FT_CACHE", Path.home() / ".cache" / "mixer_ft")).expanduser()


def cached_path(url: str) -> Path:
    """The cache path of ``url``: host, then the URL's own path."""
    parts = urllib.parse.urlsplit(url)
    return cache_dir() / parts.netloc.replace(":", "_") / parts.path.lstrip("/")


def download(url: str, *, timeout: float = 60.0) -> Path:
    """Return the cached copy of ``url``, downloading it first if needed.

    The body goes to a temporary file beside the target, is checked against the
    Content-Length and, where the server publishes one (Google Cloud Storage's
    ``x-goog-hash``), the MD5, and only then renamed into place: an interrupted or corrupt
    download is never taken for a whole file.
    """
    dest = cached_path(url)
    if dest.is_file():
        return dest
    if offline():
        raise WeightsUnavailable(
            f"not cached, and downloads are off (HF_HUB_OFFLINE / MIXER_FT_OFFLINE). "
            f"Fetch {url} on a machine with internet and put it at {dest}."
        )
    def fetch(tmp: Path) -> None:  # raising here leaves nothing behind: atomic_write renames only on success
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(tmp, "wb") as out:
            expected_size = resp.headers.get("Content-Length")
            goog_hash = dict(p.strip().split("=", 1) for p in resp.headers.get_all("x-goog-hash") or []
                             for p in p.split(",") if "=" in p)
            md5, size = hashlib.md5(), 0
            while chunk := resp.read(1 << 20):
                out.write(chunk)
                md5.update(chunk)
                size += len(chunk)
        if expected_size is not None and size != int(expected_size):
            raise WeightsUnavailable(f"Download of {url} stopped after {size} of {expected_size} bytes; try again.")
        if "md5" in goog_hash and base64.b64encode(md5.digest()).decode() != goog_hash["md5"]:
            raise CheckpointError(f"Download of {url} does not match the MD5 the server published; try again.")

    try:
        atomic_write(dest, fetch)
    except (urllib.error.URLError, OSError) as e:
        raise WeightsUnavailable(
            f"Could not download {url} ({e}). Fetch it on a machine with internet and put it at {dest}."
        ) from None
    return dest


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
            "std": list(cfg.std), "interpolation": "bilinear", "crop_pct": 1.0, "num_classes": cfg.num_classes,
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

    from mixer_ft.card import model_card

    cfg = model.config
    if classes is not None and len(classes) != cfg.num_classes:
        raise ConfigError(f"{len(classes)} class names for a head of {cfg.num_classes} classes.")
    config: dict[str, Any] = _timm_fields(cfg) if cfg.variant else {}
    if classes:
        config["label_names"] = list(classes)
    config["mixer_ft"] = {"config": cfg.to_dict(), "evaluation": evaluation or {}, "provenance": provenance or {}}
    directory = Path(directory)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(directory / "model.safetensors", lambda p: save_file(tensors, str(p)))
    atomic_write_text(directory / "config.json", json.dumps(config, indent=2) + "\n")
    atomic_write_text(directory / "README.md", model_card(cfg, classes, evaluation, provenance))
    return directory


__all__ = [
    "VARIANTS", "Checkpoint", "create_model", "download", "infer_config", "load_checkpoint",
    "load_strict", "model_from_checkpoint", "npz_to_state_dict", "save_pretrained", "upstream_sources",
]
