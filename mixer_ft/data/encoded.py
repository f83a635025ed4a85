"""The compact store: each image kept encoded in the cache and decoded when a batch needs it.

A photo decoded into the cache takes up to 786 KB (512 x 512 x 3); the JPEG it came from is usually a
tenth of that. So for sets of encoded files (image folders, archives, shards) the cache keeps each file's
own bytes and an index built from the headers alone: its size once turned upright and bounded to the
longer side kept (the exact size :func:`~mixer_ft.data.images.to_rgb_array` will give, JPEG draft scaling
included). Building the index reads no pixel, so a run starts after one pass over the files.

A batch decodes its images with :func:`~mixer_ft.data.images.to_rgb_array`, the function the decoded
store is filled by, so both stores give the same pixels, bit for bit. A file larger than its decoded
size would be (a 12-MP phone photo: 4 MB against 590 KB) is decoded once and kept re-encoded at the
size kept (JPEG, quality :data:`REENCODE_QUALITY`). A JPEG or PNG whose file is cut short (no end
marker) is found while indexing and skipped, like any image that does not decode.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mixer_ft.data.images import MAX_PIXELS, bounded, decode_workers, keep_image_memory, or_why, to_rgb_array
from mixer_ft.errors import DataError, Undecodable
from mixer_ft.text import get_logger

if TYPE_CHECKING:
    from mixer_ft.data.preprocess import Preprocess

log = get_logger(__name__)

REENCODE_QUALITY = 95
SMALL_SIDE = 64  # a set whose images all have one size, at most this on a side (CIFAR), is stored decoded
KEPT_FORMATS = {"JPEG", "PNG", "WEBP"}
_TRANSPOSED = {5, 6, 7, 8}  # EXIF orientations that swap width and height


def _complete(data: bytes, fmt: str) -> bool:
    """Whether a JPEG or PNG file has its end marker (a file cut short has not)."""
    tail = data.rstrip(b"\0")
    if fmt == "JPEG":
        return tail.endswith(b"\xff\xd9")
    if fmt == "PNG":
        return b"IEND" in data[-16:]
    return True


def index_image(payload: tuple[Any, int]) -> tuple[int, int, bytes | None] | str:
    """(height, width, bytes to keep) of one image, from its header; or why it cannot be used.

    ``payload``: (the file's bytes, or an OSError reading them; the longer side kept). The bytes to keep
    are None for the file's own (the caller has them: a worker process need not send them back), or,
    when those are larger than the decoded image, a re-encode at the size kept.
    """
    data, max_side = payload
    return or_why(data, lambda d: _index(d, max_side))


def header_size(data: bytes, max_side: int) -> tuple[int, int] | str:
    """(height, width) an image will have once decoded by :func:`~mixer_ft.data.images.to_rgb_array` (upright,
    the longer side at most ``max_side``), from its header alone; or why it cannot be used."""
    def size(d: bytes) -> tuple[int, int] | str:
        got = _header(d, max_side)
        return got if isinstance(got, str) else got[:2]

    return or_why(data, size)


def _header(data: bytes, max_side: int) -> tuple[int, int, Any] | str:
    """(height, width, the opened image) from the header: see :func:`header_size`."""
    from PIL import Image

    img = Image.open(io.BytesIO(data))
    if img.size[0] * img.size[1] > MAX_PIXELS:
        return f"too large: {img.size[0]}x{img.size[1]} pixels"
    if not _complete(data, img.format or ""):
        return "cut short"
    if max_side and img.format == "JPEG":
        img.draft(img.mode, bounded(img.size, max_side))  # as to_rgb_array does: only the header changes
    w, h = img.size
    if img.getexif().get(0x0112, 1) in _TRANSPOSED:
        w, h = h, w
    w, h = bounded((w, h), max_side)
    return h, w, img


def index_from_header(data: Any, max_side: int) -> tuple[int, int, None] | str | None:
    """What :func:`index_image` gives for a file kept as it is, from its header alone (cheap enough to run where
    the bytes are, sending none to a worker process); None for one that must be decoded: a small image (decoded to
    be checked) or a file larger than its decoded image (re-encoded)."""
    return or_why(data, lambda d: _kept_as_is(d, max_side))


def _kept_as_is(data: bytes, max_side: int) -> tuple[int, int, None] | str | None:
    got = _header(data, max_side)
    if isinstance(got, str):
        return got
    h, w, img = got
    return (h, w, None) if max(h, w) > SMALL_SIDE and _own_bytes_kept(img, data, h, w) else None


def _own_bytes_kept(img: Any, data: bytes, h: int, w: int) -> bool:
    """Whether the store keeps the file's own bytes: a format it decodes, no larger than its decoded image."""
    return (img.format or "") in KEPT_FORMATS and len(data) <= h * w * 3


def _index(data: bytes, max_side: int) -> tuple[int, int, bytes | None] | str:
    from PIL import Image

    got = _header(data, max_side)
    if isinstance(got, str):
        return got
    h, w, img = got
    if max(h, w) <= SMALL_SIDE:  # may go to the decoded store: decoded now (cheap), so one that fails is skipped
        to_rgb_array(("", lambda: data), None, max_side)
    if _own_bytes_kept(img, data, h, w):
        return h, w, None
    arr = to_rgb_array(("", lambda: data), None, max_side)  # decoded once, kept small
    out = io.BytesIO()
    Image.fromarray(arr).save(out, "JPEG", quality=REENCODE_QUALITY)
    return arr.shape[0], arr.shape[1], out.getvalue()


def decode_padded(images: list[Any], decode: Any, pool: ThreadPoolExecutor | None, shapes: np.ndarray) -> np.ndarray:
    """``decode(x)`` (an (h, w, 3) uint8 array, ``shapes[k]`` for the k-th) of each of ``images``, padded with
    zeros (bottom and right) into one (n, H, W, 3) array. In ``pool``'s threads where there are several, each
    thread writing its image into the batch itself (a batch of photos is 150 MB: one thread copying it all
    would be a fifth of the time)."""
    h, w = shapes.max(0) if len(shapes) else (0, 0)
    out = np.empty((len(images), h, w, 3), dtype=np.uint8)

    def put(k: int) -> None:
        a = decode(images[k])
        out[k, :a.shape[0], :a.shape[1]] = a
        out[k, a.shape[0]:] = 0  # the padding
        out[k, :a.shape[0], a.shape[1]:] = 0

    if pool is not None and len(images) > 1:
        list(pool.map(put, range(len(images))))
    else:
        for k in range(len(images)):
            put(k)
    return out


def _one_torch_thread() -> None:
    import torch

    torch.get_num_threads()  # torch's per-thread setup, which would later set this thread to the process's count
    torch.set_num_threads(1)


def decoding_pool() -> ThreadPoolExecutor:
    """Threads that decode a batch's images (PIL and torch release the GIL while they decode and resize).

    Each resizes on one torch thread: with torch's own threads inside each, two decode threads on two
    cores ran no faster than one. torch keeps the thread count new threads start with for the process, so
    it is set back once every decode thread has started."""
    import threading

    import torch

    n = max(1, min(decode_workers(), os.cpu_count() or 1))
    keep_image_memory(4 * n)  # a few buffers a thread: PIL's image, the RGB copy, the next image
    keep = torch.get_num_threads()
    pool = ThreadPoolExecutor(n, thread_name_prefix="mixer-ft-decode", initializer=_one_torch_thread)
    started = threading.Barrier(n)
    list(pool.map(lambda _: started.wait(), range(n)))  # each task holds its thread until all n have started
    torch.set_num_threads(keep)
    return pool


def crop_each(pool: ThreadPoolExecutor, decode: Callable[[int], np.ndarray], shapes: np.ndarray, boxes: Any,
              flips: Any, pre: Preprocess, out: Any = None) -> tuple[Any, dict[int, tuple[int, str]]]:
    """A batch's training inputs, (n, 3, size, size): image k decoded by ``decode(k)`` (as decoded, its kept
    size ``shapes[k]``), cropped to its box (drawn on its kept size), resized, flipped where ``flips`` and
    normalised by :meth:`Preprocess.crop_one` in the ``pool`` thread that decoded it, so no image is scaled down
    whole first nor padded into a batch. Written into ``out`` where given (a batch's fresh 150 MB cost a tenth of
    the time in page faults).

    An image whose ``decode`` raises :class:`Undecodable` takes the input of the batch's nearest image that
    decodes (the same on a resume); returned with it: {k: (the image standing in, why k does not decode)}.
    """
    import torch

    shape = (len(shapes), 3, pre.size, pre.size)
    out = torch.empty(shape) if out is None or tuple(out.shape) != shape else out
    box_list, flip_list = boxes.long().tolist(), flips.tolist()

    def put(k: int) -> str | None:
        try:
            image = decode(k)
        except Undecodable as e:
            return e.why
        out[k] = pre.crop_one(image, tuple(shapes[k]), box_list[k], flip_list[k])
        return None

    failed = {k: why for k, why in enumerate(pool.map(put, range(len(shapes)))) if why}
    return out, stand_in_for(out, failed)


def stand_in_for(out: Any, failed: dict[int, str]) -> dict[int, tuple[int, str]]:
    """Each failed image's input in ``out`` replaced by that of the batch's nearest image that decodes (the same on a
    resume, wherever the batch was decoded); {k: (the image standing in, why k does not decode)}."""
    good = [k for k in range(len(out)) if k not in failed]
    if failed and not good:
        raise DataError(f"No image of a batch decodes ({next(iter(failed.values()))}); is the data readable?")
    stand_ins = {}
    for k, why in failed.items():
        stand_in = min(good, key=lambda g: (abs(g - k), g))
        out[k], stand_ins[k] = out[stand_in], (stand_in, why)
    return stand_ins


class EncodedImages:
    """Encoded images stored one after another in a flat byte file, decoded on access.

    The same interface as :class:`mixer_ft.data.cache.RaggedImages`: indexing with an array of indices
    gives the images decoded and padded (zeros, bottom and right) into one (n, H, W, 3) uint8 array; their
    own sizes are ``shapes``. Decoding runs in threads (PIL releases the GIL while it decodes and resizes).
    """

    dtype = np.dtype(np.uint8)

    def __init__(self, flat: np.ndarray, offsets: np.ndarray, shapes: np.ndarray, max_side: int, names: str,
                 files: Path | None = None) -> None:
        self.flat, self.offsets, self.shapes, self.max_side, self.names = flat, offsets, shapes, max_side, names
        self.files = files  # each image's name in the source, a JSON string a line (read only to name one)
        self.unreadable: set[int] = set()  # images found not to decode while training, each named once
        self.shape = (len(shapes), int(shapes[:, 0].max()), int(shapes[:, 1].max()), 3) if len(shapes) else (0, 0, 0, 3)
        self.nbytes = int(offsets[-1])  # on disk; the decoded images are never all held
        self._pool: ThreadPoolExecutor | None = None

    def __len__(self) -> int:
        return len(self.shapes)

    def __getstate__(self) -> dict[str, Any]:  # a thread pool does not cross processes
        return {**self.__dict__, "_pool": None}

    def image(self, i: int, resized: bool = True) -> np.ndarray:
        """Image ``i`` decoded, at its kept size (``shapes[i]``); ``resized`` False: at its decoded size (see
        :func:`~mixer_ft.data.images.to_rgb_array`), which is its kept size once bounded."""
        data = bytes(self.flat[self.offsets[i]:self.offsets[i + 1]])
        try:
            arr = to_rgb_array(("", lambda: data), None, self.max_side, resized=resized)
        except Exception as e:  # noqa: BLE001 - PIL raises many kinds; any of them is this image's damage
            # Indexing read only its header: the file's pixels are damaged (or the cache is).
            raise Undecodable(f"{self.name(i)} does not decode ({type(e).__name__}: {e}); remove or replace it in the "
                              "source (or, if the source is whole, delete the data cache, MIXER_FT_CACHE/data) and run "
                              "the same command again.", f"{type(e).__name__}: {e}") from None
        self.check_size(i, arr.shape[:2])
        return arr

    def check_size(self, i: int, decoded: Any) -> None:
        """Image ``i``'s size as decoded, (h, w), once bounded, is the one its index holds (else the cache is not this
        data's)."""
        kept = bounded((int(decoded[1]), int(decoded[0])), self.max_side)[::-1]
        if kept != tuple(self.shapes[i]):
            raise DataError(f"image {i} of the {self.names} split decodes at {kept[0]}x{kept[1]}, not the "
                            f"{self.shapes[i][0]}x{self.shapes[i][1]} its index holds; delete the data cache and run again.")

    def __getitem__(self, index: Any) -> np.ndarray:
        if np.ndim(index) == 0:
            return self.image(int(index))
        index = np.arange(len(self))[index] if isinstance(index, slice) else np.asarray(index)
        if len(index) > 1 and self._pool is None:
            self._pool = decoding_pool()
        return decode_padded([int(i) for i in index], self.image, self._pool, self.shapes[index])

    def crops(self, index: np.ndarray, boxes: Any, flips: Any, pre: Preprocess, out: Any = None) -> tuple[Any, np.ndarray]:
        """The training inputs of images ``index`` (see :func:`crop_each`) and the images they are: ``index``, but
        where one does not decode, the image that stands in for it (whose label it takes)."""
        if self._pool is None:
            self._pool = decoding_pool()
        out, stand_ins = crop_each(self._pool, lambda k: self.image(int(index[k]), resized=False), self.shapes[index],
                                   boxes, flips, pre, out)
        return out, self.stood_in(index, stand_ins)

    def stood_in(self, index: np.ndarray, stand_ins: dict[int, tuple[int, str]]) -> np.ndarray:
        """The images a batch of ``index`` holds once ``stand_ins`` (see :func:`stand_in_for`) took their places; each
        image that does not decode is named the first time."""
        used = np.array(index, dtype=np.int64)
        for k, (stand_in, why) in stand_ins.items():
            used[k] = index[stand_in]
            self._name_unreadable(int(index[k]), why, int(index[stand_in]))
        return used

    def name(self, i: int) -> str:
        """Image ``i``'s name in the source, where the cache keeps names; else its place in the split."""
        if self.files is not None and self.files.is_file():
            with open(self.files, encoding="utf-8") as f:
                for k, line in enumerate(f):
                    if k == i:
                        return str(json.loads(line))
        return f"image {i} of the {self.names} split"

    def _name_unreadable(self, i: int, why: str, stand_in: int) -> None:
        if i not in self.unreadable:
            self.unreadable.add(i)
            log.warning("%s does not decode (%s): each time a batch takes it, %s takes its place, with its label. "
                        "Remove or replace the file in the source to train on it.", self.name(i), why, self.name(stand_in))


__all__ = ["KEPT_FORMATS", "REENCODE_QUALITY", "SMALL_SIDE", "EncodedImages", "crop_each", "decode_padded",
           "decoding_pool", "header_size", "index_image", "stand_in_for"]
