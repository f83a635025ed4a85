"""Decoding images to RGB uint8 arrays: the one place both the data cache and prediction read
pixels, so a model sees at prediction time exactly what it saw in training."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np

# What a source hands over for one image: its name and a getter for its bytes or PIL image
# (called only when the image is decoded), or a ready uint8 array (CIFAR's pickles).
ImageItem = tuple[str, Callable[[], Any]] | np.ndarray


def to_rgb_array(item: ImageItem, size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode ``item`` to an RGB uint8 array (H, W, 3), resized (bilinear) to ``size`` = (H, W) if given.

    Raises:
        PIL.UnidentifiedImageError, OSError, ValueError, SyntaxError: the bytes are not an image PIL
            can decode (callers skip and count such images).
    """
    from PIL import Image

    if isinstance(item, np.ndarray):
        img = Image.fromarray(item) if size and item.shape[:2] != size else None
        return item if img is None else np.asarray(img.resize(size[::-1], Image.BILINEAR))
    _, get = item
    obj = get()
    img = obj if isinstance(obj, Image.Image) else Image.open(io.BytesIO(obj))
    img = img.convert("RGB")
    if size and img.size != size[::-1]:
        img = img.resize(size[::-1], Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


__all__ = ["ImageItem", "to_rgb_array"]
