"""Decoding images to RGB uint8 arrays: the one place both the data cache and prediction read
pixels, so a model sees at prediction time exactly what it saw in training.

Photos are turned upright by their EXIF orientation first, as a viewer shows them; every PIL
mode becomes RGB (16-bit and float images scaled to 8 bits, not clipped).
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from mixer_ft.data.class_names import printable
from mixer_ft.settings import setting

# What a source hands over for one image: its name and a getter for its bytes or PIL image
# (called only when the image is decoded), or a ready uint8 array (CIFAR's pickles).
ImageItem = tuple[str, Callable[[], Any]] | np.ndarray
# PIL's decompression-bomb bound (Image.MAX_IMAGE_PIXELS, about 89 Mpx: 268 MB as RGB). PIL itself
# only warns up to twice that; an image above it is refused here, skipped and named like any unreadable one.
MAX_PIXELS = 89_478_485
# The most bytes one image file may have (an archive member or a file): larger ones are skipped unread.
MAX_FILE_BYTES = 64 << 20
T = TypeVar("T")
# torch's import is not thread-safe: threads importing it at once may each see it half-built (a crash, in CI).
# Only the first import takes this lock, so a later fork never copies it held.
_TORCH_IMPORT = threading.Lock()
_interpolate: Callable[..., Any] | None = None
_BLOCK_ROWS = 128  # rows of a wide-mode image scaled to 8 bits at a time
_WIDE_MODES = {"I;16": 1 / 257, "I;16L": 1 / 257, "I;16B": 1 / 257, "I;16N": 1 / 257, "I": 1 / 257, "F": 255.0}  # to 0..255


def decode_workers() -> int:
    """Processes that decode images into the cache: ``$MIXER_FT_WORKERS``, else one per core."""
    return setting("MIXER_FT_WORKERS") or os.cpu_count() or 1


def keep_image_memory(blocks: int) -> None:
    """Have PIL keep up to ``blocks`` freed image buffers for the next images (Pillow's ``PILLOW_BLOCKS_MAX``),
    instead of handing each back to the system: a fresh buffer is zero pages, faulted in one at a time, and that
    made decoding a 640x480 JPEG take 2.2 ms instead of 0.9. Each buffer is one image's size (16 MiB at most)."""
    from PIL import Image

    Image.core.set_blocks_max(max(blocks, Image.core.get_blocks_max()))


def to_rgb(img: Any, max_side: int | None = None) -> Any:
    """A PIL image as upright 8-bit RGB. A 16-bit, 32-bit or float image is scaled to 8 bits a block of rows at a
    time, then (``max_side``: where it is to be scaled down anyway) reduced by a whole factor that keeps its bounded
    size: a 175 KB 16-bit PNG of 81 Mpx costs its decoded pixels and a byte a pixel, not 1.5 GB of float copies."""
    from PIL import ImageOps

    img = ImageOps.exif_transpose(img)
    if img.mode in _WIDE_MODES:
        img = _to_8bit(img)
        if max_side:
            img = _reduced(img, max_side)
    return img if img.mode == "RGB" else img.convert("RGB")


def _to_8bit(img: Any) -> Any:
    """A wide-mode image (16-bit, 32-bit int, float) as 8-bit grey, 0..255, computed :data:`_BLOCK_ROWS` rows at a
    time (the same values as the whole image at once)."""
    from PIL import Image

    scale = _WIDE_MODES[img.mode]
    if img.mode == "F" and float(img.getextrema()[1]) > 1.0:
        scale = 1.0  # floats already in 0..255
    w, h = img.size
    out = np.empty((h, w), dtype=np.uint8)
    for top in range(0, h, _BLOCK_ROWS):
        block = np.asarray(img.crop((0, top, w, min(h, top + _BLOCK_ROWS))), dtype=np.float64)
        np.multiply(block, scale, out=block)
        np.clip(block, 0, 255, out=block)
        out[top:top + len(block)] = np.round(block, out=block)
    return Image.fromarray(out)


def _reduced(img: Any, max_side: int) -> Any:
    """``img`` reduced by the largest whole factor whose result, bounded by ``max_side``, is the size the image
    itself bounds to (so the compact store's index, made from the header, still holds); as it is when none."""
    target = bounded(img.size, max_side)
    for k in range(min(img.size[0] // target[0], img.size[1] // target[1]), 1, -1):
        if bounded((-(-img.size[0] // k), -(-img.size[1] // k)), max_side) == target:
            return img.reduce(k)
    return img


def bounded(size: tuple[int, int], max_side: int | None) -> tuple[int, int]:
    """(w, h) scaled down, aspect kept, so the longer side is at most ``max_side``."""
    w, h = size
    if not max_side or max(w, h) <= max_side:
        return w, h
    scale = max_side / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def or_why(data: Any, work: Callable[[Any], T]) -> T | str:
    """``work(data)``, or why the image cannot be used, in a few words: the file could not be read (``data`` is
    the OSError), is not an image, is too large, or PIL failed on it. Worker processes run this, so every
    failure comes back as text, to be skipped, counted and named by the caller."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(data, OSError):
        return f"unreadable: {data}"
    try:
        return work(data)
    except UnidentifiedImageError:
        return "not an image"
    except Image.DecompressionBombError as e:
        return f"too large: {e}"
    except (OSError, ValueError, SyntaxError) as e:
        return type(e).__name__


def to_rgb_array(item: ImageItem, size: tuple[int, int] | None = None, max_side: int | None = None,
                 resized: bool = True) -> np.ndarray:
    """Decode ``item`` to an upright RGB uint8 array (H, W, 3).

    Args:
        size: (H, W) to resize to (bilinear), whatever the aspect.
        max_side: else, scale down (bilinear, aspect kept) so the longer side is at most this. A JPEG
            is decoded at a reduced scale when that is still at least the size kept (PIL's draft
            mode): a 12-MP photo bound for 512 pixels decodes at 1/4 of the work or less.
        resized: False: the image as decoded (draft scaling included), not yet scaled to ``max_side``;
            ``bounded`` of its size is the size the scaled one would have.

    Raises:
        PIL.UnidentifiedImageError, OSError, ValueError, SyntaxError: the bytes are not an image PIL
            can decode; PIL.Image.DecompressionBombError: more than :data:`MAX_PIXELS` pixels (callers
            skip, name and count such images).
    """
    from PIL import Image

    if isinstance(item, np.ndarray):
        return resize(item, size) if size and item.shape[:2] != size else item
    _, get = item
    obj = get()
    img = obj if isinstance(obj, Image.Image) else Image.open(io.BytesIO(obj))
    if img.size[0] * img.size[1] > MAX_PIXELS:  # checked on the header, before any pixel is decoded
        raise Image.DecompressionBombError(f"{img.size[0]}x{img.size[1]} pixels, more than the {MAX_PIXELS:,} "
                                           "an image may have")
    if max_side and not size and img.format == "JPEG":
        img.draft(img.mode, bounded(img.size, max_side))  # the decoder's own 1/2, 1/4, 1/8 scaling
    img = to_rgb(img, None if size else max_side)
    target = size[::-1] if size else bounded(img.size, max_side)
    arr = np.asarray(img, dtype=np.uint8)
    return resize(arr, target[::-1]) if img.size != target and resized else arr


def torch_interpolate() -> Callable[..., Any]:
    """torch's ``F.interpolate``, imported once, by one thread at a time (see ``_TORCH_IMPORT``)."""
    global _interpolate
    if _interpolate is None:
        with _TORCH_IMPORT:
            if _interpolate is None:
                import torch.nn.functional as F

                _interpolate = F.interpolate
    return _interpolate


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An (H, W, 3) uint8 image resized to ``size`` (h, w): bilinear, antialiased when it shrinks (PIL's triangle
    filter, as torch's uint8 kernel computes it: within 2 levels of PIL's own, and several times faster; PIL's
    was most of the time a batch of photos took to decode)."""
    interpolate = torch_interpolate()
    import torch

    if not image.flags.writeable:  # PIL's arrays are read-only, which torch will not wrap
        image = image.copy()
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]  # channels-last in memory
    out = interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    return np.ascontiguousarray(out[0].permute(1, 2, 0).numpy())


__all__ = ["MAX_FILE_BYTES", "MAX_PIXELS", "ImageItem", "bounded", "decode_workers", "keep_image_memory", "or_why",
           "printable", "resize", "to_rgb", "to_rgb_array", "torch_interpolate"]
