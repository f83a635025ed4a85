"""Google's Mixer ``.npz`` layout: Flax parameter trees, names joined by '/', mapped to timm's names.

``stem/kernel`` (HWIO) becomes the patch convolution (OIHW), every Dense kernel is transposed, the
LayerNorms keep their ``scale``/``bias``; anything missing, unexpected or mis-shaped is listed in
one error. Files holding pickled objects are refused: unpickling can run code.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np
import torch

from mixer_ft.errors import CheckpointError
from mixer_ft.model.config import MAX_PARAMS


def unreadable(path: Path, e: BaseException) -> CheckpointError:
    """The error for a weight file that is truncated, corrupt or not the format its name says."""
    return CheckpointError(
        f"Could not read checkpoint {path}: it is truncated, corrupt or not the format its name says "
        f"({type(e).__name__}: {e}). Delete it and download or save it again."
    )


# Bytes the arrays of one .npz may declare: the largest Mixer mixer_ft builds, in float32.
MAX_NPZ_BYTES = MAX_PARAMS * 4


def declared_bytes(path: Path) -> int:
    """What the arrays of an .npz declare they hold, read from each member's .npy header (no array is read).

    Raises:
        CheckpointError: a member that declares more than MAX_NPZ_BYTES, or more than that in all.
    """
    total = 0
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                continue
            with zf.open(info) as f:
                major, _ = np.lib.format.read_magic(f)
                header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                shape, _, dtype = header(f)
            count = 1
            for n in shape:
                count *= n
            total += max(count * dtype.itemsize, info.file_size)
            if total > MAX_NPZ_BYTES:
                raise CheckpointError(f"{path} declares arrays of more than {MAX_NPZ_BYTES / 2**30:,.0f} GiB (at "
                                      f"{info.filename}: {shape} {dtype}), more than the largest Mixer mixer_ft builds "
                                      "holds; it is not a Mixer checkpoint.")
    return total


def read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        declared_bytes(path)
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
        raise unreadable(path, e) from None
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        raise unreadable(path, e) from None



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


__all__ = ["npz_to_state_dict", "read_npz", "unreadable"]
