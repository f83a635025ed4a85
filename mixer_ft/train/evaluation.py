"""Scoring a model on a labelled split, with test-time views: what training's minival and test use, and
``mixer-ft evaluate`` and few-shot evaluation too, so that each gives the accuracy the others give."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from mixer_ft.data.preprocess import Preprocess, index_batches
from mixer_ft.errors import ConfigError

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


def check_shift(shift: int, size: int) -> None:
    """A test-time shift is a whole number of pixels from 0 to half the input size."""
    if not 0 <= shift <= size // 2:
        raise ConfigError(f"--translate takes a shift of 0 to {size // 2} pixels (half the {size}x{size} input), "
                          f"got {shift}.")


def num_views(mirror: bool, shift: int) -> int:
    return (3 if shift else 1) * (2 if mirror else 1)


def predict(model: torch.nn.Module, images: torch.Tensor, mirror: bool = False, shift: int = 0) -> torch.Tensor:
    """Predicted classes of a preprocessed NCHW batch, from :func:`view_logits`."""
    return view_logits(model, images, mirror, shift).argmax(1)


def split_predictions(model: torch.nn.Module, pre: Preprocess, images: np.ndarray, labels: np.ndarray,
                      indices: np.ndarray, device: torch.device, *, mirror: bool = False, shift: int = 0,
                      batch: int = EVAL_BATCH, extents: np.ndarray | None = None
                      ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(predicted, true) labels on the CPU, batch by batch, over ``indices`` of a uint8 NHWC array.

    ``extents``: each image's own (h, w), where images of several sizes are padded into the array.
    The caller chooses the mode and precision (``model.eval()``, ``torch.no_grad()``, autocast).
    """
    for idx, x in eval_batches(pre, images, indices, device, batch, extents):
        yield predict(model, x, mirror=mirror, shift=shift).cpu(), torch.from_numpy(labels[idx])


def eval_batches(pre: Preprocess, images: np.ndarray, indices: np.ndarray, device: torch.device,
                 batch: int = EVAL_BATCH, extents: np.ndarray | None = None) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """(indices, preprocessed NCHW batch) over ``indices`` of a uint8 NHWC array, as for testing.

    ``extents``: each image's own (h, w), where images of several sizes are padded into the array.
    """
    for _, idx in index_batches(indices, batch):
        x = torch.from_numpy(np.ascontiguousarray(images[idx])).to(device)
        own = None if extents is None else torch.from_numpy(extents[idx]).to(device)
        yield idx, pre.eval(x, own)


def count_correct(model: torch.nn.Module, pre: Preprocess, images: np.ndarray, labels: np.ndarray,
                  indices: np.ndarray, device: torch.device, *, mirror: bool = False, shift: int = 0,
                  batch: int = EVAL_BATCH, extents: np.ndarray | None = None) -> tuple[int, int]:
    """(correct, scored) over ``indices``; see :func:`split_predictions`."""
    correct = seen = 0
    for pred, y in split_predictions(model, pre, images, labels, indices, device, mirror=mirror, shift=shift,
                                     batch=batch, extents=extents):
        correct += int((pred == y).sum())
        seen += len(y)
    return correct, seen


__all__ = ["EVAL_BATCH", "check_shift", "count_correct", "eval_batches", "num_views", "predict", "split_predictions",
           "view_logits"]
