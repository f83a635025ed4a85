"""Upstream preprocessing (vit_jax input_pipeline), batched on the training device.

Train: Inception crop (random area 5%-100%, aspect 3/4-4/3, integer pixel box, as
``tf.image.sample_distorted_bounding_box``), resize to the model's input size, random
horizontal flip. Optionally (not upstream, for short runs from scratch) the box is shifted by a
few pixels, the image's border repeated past its edge. Eval: resize the whole image. Then pixels are normalised with the model's
``mean``/``std`` (0.5/0.5 for Google's weights: [-1, 1]).

Crop, resize and flip take two source pixels per output pixel along each axis (half-pixel centres, as TF's
bilinear resize), batched on a GPU; on a CPU each box is sliced out and resized by ``F.interpolate``, the same
sampling. A flipped image's columns are reversed. The random boxes come from a CPU generator seeded per batch,
so a batch's augmentation depends only on (seed, epoch, batch index), whatever the device.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from mixer_ft.model.config import AREA_RANGE, ASPECT_RANGE, DEFAULT_MEAN, DEFAULT_STD, MixerConfig

MAX_ATTEMPTS = 100  # tf.image.sample_distorted_bounding_box's default; after that the whole image is used


def _round(x: torch.Tensor) -> torch.Tensor:
    """C's lrintf: to the nearest integer, halves to even (as torch.round)."""
    return torch.round(x).long()


def inception_boxes(n: int, height: int | torch.Tensor, width: int | torch.Tensor, generator: torch.Generator,
                    area_range: tuple[float, float] = AREA_RANGE) -> torch.Tensor:
    """Random crop boxes (n, 4) as integer (x0, y0, w, h), drawn as vit_jax draws them.

    vit_jax calls ``tf.image.sample_distorted_bounding_box`` with ``area_range`` and TF's defaults
    (aspect ratio uniform in [0.75, 1.33], 100 attempts, then the whole image). TF's algorithm, read
    from its kernel: the aspect ratio is uniform; the *height* (not the area) is uniform between the
    heights of the smallest and the largest allowed area, the width its rounded product with the
    ratio; an area pushed out of range by rounding is mended by one pixel of height, else the attempt
    fails; the offset is uniform in [0, H - h) (so a box smaller than the image never touches its far
    edge). ``height`` and ``width`` are the images' own: one size for all, or one per image ((n,)
    tensors), so each crop keeps its image's aspect ratio and stays inside it.
    """
    if isinstance(height, torch.Tensor):
        full_h, full_w = height.long(), width.long()
    else:
        full_h, full_w = torch.full((n,), height), torch.full((n,), width)
    big_h, big_w = full_h[:, None].float(), full_w[:, None].float()
    min_area, max_area = area_range[0] * big_w * big_h, area_range[1] * big_w * big_h
    ratio = torch.rand(n, MAX_ATTEMPTS, generator=generator) * (ASPECT_RANGE[1] - ASPECT_RANGE[0]) + ASPECT_RANGE[0]
    h = _round(torch.sqrt(min_area / ratio))
    max_h = _round(torch.sqrt(max_area / ratio))
    too_wide = _round(max_h * ratio) > big_w  # the largest height whose rounded width still fits
    fitted = ((big_w + 0.5 - 1e-7) / ratio).long()
    fitted = torch.where(_round(fitted * ratio) > big_w, fitted - 1, fitted)
    max_h = torch.minimum(torch.where(too_wide, fitted, max_h), full_h[:, None])
    h = torch.minimum(h, max_h)
    h = h + (torch.rand(n, MAX_ATTEMPTS, generator=generator) * (max_h - h + 1)).long()
    w = _round(h * ratio)
    small = w * h < min_area
    h, w = torch.where(small, h + 1, h), torch.where(small, _round((h + 1) * ratio), w)
    large = w * h > max_area
    h, w = torch.where(large, h - 1, h), torch.where(large, _round((h - 1) * ratio), w)
    area = w * h
    ok = (area >= min_area) & (area <= max_area) & (w <= big_w) & (h <= big_h) & (w > 0) & (h > 0)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((n,), -1))
    rows = torch.arange(n)
    w = torch.where(first >= 0, w[rows, first.clamp(min=0)], full_w)
    h = torch.where(first >= 0, h[rows, first.clamp(min=0)], full_h)
    u = torch.rand(n, 2, generator=generator)
    x0 = torch.floor(u[:, 0] * (full_w - w)).long()
    y0 = torch.floor(u[:, 1] * (full_h - h)).long()
    return torch.stack([x0, y0, w, h], 1)


# Images cropped at once on a CPU: a batch of 256 photos at 512 px took 2.3x longer in one piece (its float
# intermediates, about 1 GB, leave the caches); on a GPU the batch goes whole.
CPU_CHUNK = 8


def _taps(start: torch.Tensor, length: torch.Tensor, size: int, extent: int, flip: torch.Tensor | None,
          device: torch.device, limit: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bilinear taps taking ``extent`` pixels to ``size`` over a box: (lo, hi, frac), each (n, size); an output
    pixel is ``(1 - frac) * x[lo] + frac * x[hi]``.

    ``limit``: each image's own extent (n,), where images of several sizes share a padded array.
    """
    t = torch.arange(size, device=device, dtype=torch.float32) + 0.5
    # Source coordinate of each output pixel centre (half-pixel centres, as TF's bilinear resize).
    # Clamped first to the box, as tf.slice then tf.image.resize sees only the box's pixels, so a
    # crop never takes pixels from outside it; then to the image (a box that `translate` moved past
    # the edge repeats the border), its own edge, never the padding.
    src = start[:, None] + t * (length[:, None] / size) - 0.5
    src = torch.minimum(torch.maximum(src, start[:, None]), (start + length - 1)[:, None])
    if limit is None:
        src = src.clamp(0, extent - 1)
    else:
        src = torch.minimum(src.clamp(min=0), (limit.to(device, torch.float32) - 1)[:, None])
    if flip is not None:
        src = torch.where(flip[:, None], src.flip(1), src)
    lo = src.floor()
    frac = src - lo
    lo = lo.long()
    hi = (lo + 1).clamp(max=extent - 1) if limit is None else torch.minimum(lo + 1, (limit.to(device) - 1)[:, None])
    return lo, hi, frac


def crop_resize(images: torch.Tensor, boxes: torch.Tensor, size: int, flip: torch.Tensor | None = None,
                dtype: torch.dtype = torch.float32, extents: torch.Tensor | None = None) -> torch.Tensor:
    """Crop each NHWC image to its box (x0, y0, w, h), resize to ``size`` (bilinear), optionally flip.

    Bilinear resizing is separable and takes two source pixels per output pixel along each axis: the
    rows the output needs are gathered (two per output row) and blended, then the columns, each axis in
    one batched pass over (n, rows, width x channels). The work grows with the output, not with the
    images' size: a 512-pixel photo costs about what a 32-pixel one does.
    Returns NCHW in ``dtype``, in the input's value range.
    """
    n, height, width, c = images.shape
    dev = images.device
    if dev.type == "cpu" and _inside(boxes, height, width, extents):
        return _crop_resize_each(images, boxes, size, flip, dtype)
    if dev.type == "cpu" and n > CPU_CHUNK:  # each image alone: the same numbers, in the CPU's caches
        return torch.cat([crop_resize(images[i:i + CPU_CHUNK], boxes[i:i + CPU_CHUNK], size,
                                      None if flip is None else flip[i:i + CPU_CHUNK], dtype,
                                      None if extents is None else extents[i:i + CPU_CHUNK]) for i in range(0, n, CPU_CHUNK)])
    boxes = boxes.to(dev, torch.float32)
    limits = (None, None) if extents is None else (extents[:, 0], extents[:, 1])  # (h, w) of each padded image
    lo_r, hi_r, fr_r = _taps(boxes[:, 1], boxes[:, 3], size, height, None, dev, limits[0])
    lo_c, hi_c, fr_c = _taps(boxes[:, 0], boxes[:, 2], size, width, None if flip is None else flip.to(dev), dev,
                             limits[1])
    flat = images.reshape(n, height, width * c)
    each = torch.arange(n, device=dev)[:, None]
    y = torch.lerp(flat[each, lo_r].to(torch.float32), flat[each, hi_r].to(torch.float32), fr_r[:, :, None])
    # Columns of the flattened (width x channels) axis: column j, channel k is at j * c + k
    channel = torch.arange(c, device=dev)
    at = [(idx[:, :, None] * c + channel).reshape(n, 1, size * c).expand(n, size, size * c) for idx in (lo_c, hi_c)]
    out = torch.lerp(y.gather(2, at[0]), y.gather(2, at[1]), fr_c.repeat_interleave(c, 1)[:, None, :])
    return out.view(n, size, size, c).permute(0, 3, 1, 2).to(dtype)


def _inside(boxes: torch.Tensor, height: int, width: int, extents: torch.Tensor | None) -> bool:
    """Whether every box lies inside its image (not moved past an edge by ``translate``)."""
    b = boxes.long().cpu()
    h, w = (extents[:, 0].cpu(), extents[:, 1].cpu()) if extents is not None else (height, width)
    return bool(((b[:, 0] >= 0) & (b[:, 1] >= 0) & (b[:, 0] + b[:, 2] <= w) & (b[:, 1] + b[:, 3] <= h)
                 & (b[:, 2] > 0) & (b[:, 3] > 0)).all())


def _crop_resize_each(images: torch.Tensor, boxes: torch.Tensor, size: int, flip: torch.Tensor | None,
                      dtype: torch.dtype) -> torch.Tensor:
    """:func:`crop_resize` on a CPU, for boxes inside their images: each box sliced out (as ``tf.slice``) and
    resized by ``F.interpolate`` (bilinear, half-pixel centres, no antialiasing: TF's ``tf.image.resize``).
    The same sampling as the batched taps, counted from the box's corner rather than the image's (so a little
    closer to TF's, which sees only the slice); several times faster on a CPU, whose gathers are slow."""
    import torch.nn.functional as F

    out = torch.empty(len(images), images.shape[3], size, size, dtype=dtype)
    for i, (x0, y0, w, h) in enumerate(boxes.long().tolist()):
        crop = images[i, y0:y0 + h, x0:x0 + w].permute(2, 0, 1)[None].float()
        resized = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False)[0]
        out[i] = resized.flip(2) if flip is not None and bool(flip[i]) else resized
    return out


@dataclass(frozen=True)
class Preprocess:
    """The model's input pipeline: size and normalisation come from its config."""

    size: int
    mean: tuple[float, ...] = DEFAULT_MEAN
    std: tuple[float, ...] = DEFAULT_STD
    crop_area_min: float = AREA_RANGE[0]
    translate: int = 0

    @classmethod
    def for_model(cls, config: MixerConfig, crop_area_min: float = AREA_RANGE[0], translate: int = 0) -> Preprocess:
        """The pipeline of a model: its input size and its checkpoint's normalisation."""
        return cls(config.img_size, tuple(config.mean), tuple(config.std), crop_area_min, translate)

    def sample(self, n: int, height: int | torch.Tensor, width: int | torch.Tensor,
               generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Random crop boxes and flips for ``n`` images, drawn from ``generator`` (on the CPU).

        Drawn for a whole global batch at once, so each image's augmentation is the same
        however the batch is split over processes and micro-batches.
        """
        boxes = inception_boxes(n, height, width, generator, (self.crop_area_min, 1.0))
        flips = torch.rand(n, generator=generator) < 0.5
        if self.translate:
            # Shift the box, not the image: pixels past the edge repeat the border (crop_resize clamps).
            shift = torch.randint(-self.translate, self.translate + 1, (n, 2), generator=generator)
            boxes = torch.cat([boxes[:, :2] + shift, boxes[:, 2:]], 1)
        return boxes, flips

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Pixel values (0..255, NCHW) scaled with mean/std. Interpolation weights sum to one, so scaling
        the large output of a resize equals scaling the small source image before it (to rounding); the
        output is the smaller, so it is scaled."""
        mean = torch.tensor(self.mean, device=x.device)[:, None, None] * 255
        std = torch.tensor(self.std, device=x.device)[:, None, None] * 255
        return ((x.float() - mean) / std).contiguous()

    def train(self, images: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor,
              extents: torch.Tensor | None = None) -> torch.Tensor:
        """Crop to ``boxes``, resize, flip where ``flip``, normalise: uint8 NHWC -> float NCHW.

        ``extents``: each image's (h, w) where images of several sizes are padded into one array.
        """
        return self.normalise(crop_resize(images, boxes, self.size, flip, extents=extents))

    def crop_one(self, image: np.ndarray, kept: tuple[int, int], box: list[int], flip: bool) -> torch.Tensor:
        """One image's training input, made where it was decoded: (3, size, size) float, normalised.

        ``box`` (x0, y0, w, h) was drawn on the image's kept size ``kept`` (h, w), as a batch's boxes are;
        ``image`` is the image as decoded, at that size (then this equals :meth:`train` on it, bit for bit) or
        larger, its decoded size before scaling down to the kept one. The box is then scaled to the larger
        image, its corners rounded to whole pixels, and cropped from it, as vit_jax crops the image as
        decoded: one bilinear resize instead of two, and the first, of the whole image, was most of the work.
        """
        import torch.nn.functional as F

        x0, y0, w, h = box_as_decoded(box, kept, image.shape[:2])
        region = image[y0:y0 + h, x0:x0 + w]
        crop = torch.from_numpy(region if region.flags.writeable else region.copy()).permute(2, 0, 1)[None].float()
        out = F.interpolate(crop, size=(self.size, self.size), mode="bilinear", align_corners=False)[0]
        return self.normalise(out.flip(2) if flip else out)

    def eval(self, images: torch.Tensor, extents: torch.Tensor | None = None) -> torch.Tensor:
        """Resize each whole image (its own extent, where given), normalise."""
        n, h, w, _ = images.shape
        if extents is not None:
            boxes = torch.cat([torch.zeros(n, 2, dtype=torch.long), extents.flip(1).long().cpu()], 1)
            return self.normalise(crop_resize(images, boxes, self.size, extents=extents))
        if (h, w) == (self.size, self.size):
            return self.normalise(images.permute(0, 3, 1, 2))
        return self.normalise(crop_resize(images, torch.tensor([[0, 0, w, h]]).expand(n, 4), self.size))


def box_as_decoded(box: list[int], kept: tuple[int, int], decoded: tuple[int, int]) -> tuple[int, int, int, int]:
    """A crop box (x0, y0, w, h) drawn on an image's kept size ``kept`` (h, w), scaled to the image as decoded,
    ``decoded`` (h, w), its corners rounded to whole pixels and kept inside it (the same box where the sizes agree)."""
    x0, y0, w, h = box
    height, width = decoded
    if (height, width) != tuple(kept):
        sy, sx = height / kept[0], width / kept[1]
        x1, y1 = round((x0 + w) * sx), round((y0 + h) * sy)
        x0, y0 = min(round(x0 * sx), width - 1), min(round(y0 * sy), height - 1)
        w, h = max(1, min(x1, width) - x0), max(1, min(y1, height) - y0)
    return x0, y0, w, h


def batch_seed(seed: int, epoch: int, index: int) -> int:
    """A generator seed for one batch, independent of where a run was resumed."""
    return (seed * 1_000_003 + epoch) * 1_000_003 + index


def epoch_order(indices: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """``indices`` in the shuffled order of one epoch, fixed by (seed, epoch) alone."""
    return indices[np.random.default_rng((seed, epoch)).permutation(len(indices))]


def index_batches(indices: np.ndarray, batch_size: int, *, shuffle: bool = False, seed: int = 0, epoch: int = 0,
                  start: int = 0, num_shards: int = 1, shard: int = 0) -> Iterator[tuple[int, np.ndarray]]:
    """(batch index, sorted image indices) of each batch; see :func:`iterate_batches`."""
    order = epoch_order(indices, seed, epoch) if shuffle else indices
    for b in range(start, -(-len(order) // batch_size)):
        # Sorted reads are kinder to a memory map on disk; labels follow the same order.
        yield b, np.sort(order[b * batch_size:(b + 1) * batch_size][shard::num_shards])


def iterate_batches(
    images: np.ndarray,
    labels: np.ndarray,
    indices: np.ndarray,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    epoch: int = 0,
    start: int = 0,
    num_shards: int = 1,
    shard: int = 0,
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Yield (batch index, uint8 NHWC images, int64 labels) from a memory-mapped array.

    Only one batch is ever copied out of the memory map. ``num_shards``/``shard`` give each
    process its own slice of every global batch; ``start`` skips batches already done.
    """
    for b, idx in index_batches(indices, batch_size, shuffle=shuffle, seed=seed, epoch=epoch, start=start,
                                num_shards=num_shards, shard=shard):
        yield b, torch.from_numpy(np.ascontiguousarray(images[idx])), torch.from_numpy(labels[idx])
