"""Using a model: test-time views, scoring a labelled split, loading a classifier for inference.

Training scores its minival and test splits through :func:`count_correct`, so a model loaded
here and scored the same way gives the numbers its run record holds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mixer_ft.images import to_rgb_array
from mixer_ft.model import MlpMixer
from mixer_ft.preprocess import Preprocess, iterate_batches

EVAL_BATCH = 256


def view_logits(model: torch.nn.Module, images: torch.Tensor, mirror: bool = False, shift: int = 0) -> torch.Tensor:
    """Summed float32 logits of a preprocessed NCHW batch over its test-time views.

    The views: the image; with ``shift``, two copies moved ``shift`` pixels diagonally (towards
    the top left and the bottom right, the border repeated as ``translate`` does in training);
    with ``mirror``, the left-right mirror of each of these.
    """
    views = [images]
    if shift:
        h, w = images.shape[-2:]
        padded = F.pad(images, (shift, shift, shift, shift), mode="replicate")
        views += [padded[..., 2 * shift:2 * shift + h, 2 * shift:2 * shift + w], padded[..., :h, :w]]
    if mirror:
        views += [v.flip(3) for v in views]
    logits = model(views[0]).float()
    for view in views[1:]:  # one view at a time: evaluation memory stays that of one batch
        logits = logits + model(view).float()
    return logits


def predict(model: torch.nn.Module, images: torch.Tensor, mirror: bool = False, shift: int = 0) -> torch.Tensor:
    """Predicted classes of a preprocessed NCHW batch, from :func:`view_logits`."""
    return view_logits(model, images, mirror, shift).argmax(1)


def count_correct(model: torch.nn.Module, pre: Preprocess, images: np.ndarray, labels: np.ndarray,
                  indices: np.ndarray, device: torch.device, *, mirror: bool = False, shift: int = 0,
                  batch: int = EVAL_BATCH) -> tuple[int, int]:
    """(correct, scored) over ``indices`` of a uint8 NHWC image array, in batches of ``batch``.

    The caller chooses the mode and precision (``model.eval()``, ``torch.no_grad()``, autocast).
    """
    correct = seen = 0
    for _, x, y in iterate_batches(images, labels, indices, batch, shuffle=False):
        pred = predict(model, pre.eval(x.to(device)), mirror=mirror, shift=shift)
        correct += int((pred.cpu() == y).sum())
        seen += len(y)
    return correct, seen


def load_classifier(source: str, *, variant: str | None = None,
                    device: str | torch.device = "cpu") -> tuple[MlpMixer, Preprocess]:
    """A model from any weight source, in eval mode on ``device``, with its own preprocessing."""
    from mixer_ft.weights import create_model

    model = create_model(variant, pretrained=source).to(device).eval()
    return model, Preprocess.for_model(model.config)


def images_to_batch(images: list[str | Path | np.ndarray], size: tuple[int, int] | None = None) -> torch.Tensor:
    """uint8 NHWC batch of image files or decoded arrays, decoded as the data cache decodes them.

    ``size`` = (H, W) resizes each to it (needed when they differ).
    """
    arrays = [to_rgb_array(p if isinstance(p, np.ndarray) else (str(p), Path(p).read_bytes), size) for p in images]
    return torch.from_numpy(np.stack(arrays))


__all__ = ["EVAL_BATCH", "count_correct", "images_to_batch", "load_classifier", "predict", "view_logits"]
