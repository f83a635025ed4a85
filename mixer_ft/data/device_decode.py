"""Decoding a batch's JPEGs on the training device (nvJPEG on a GPU): the recipe's ``decode = "device"``.

By default the compact store's images are decoded by PIL in host threads, each cropped where it was decoded
(:meth:`~mixer_ft.data.encoded.EncodedImages.crops`). With ``decode = "device"`` a batch's JPEG files go to the
device still encoded, are decoded there in one call, and are turned upright (EXIF), scaled as PIL's draft mode
would have decoded them (1/2, 1/4, 1/8: here an area average), cropped, resized, flipped and normalised there,
so the host only reads bytes. The boxes are the host path's, mapped the same way (:func:`box_as_decoded`); on a
CPU the inputs equal the host path's bit for bit where no draft scaling applies (one libjpeg-turbo decodes both).

Files the device decoder does not take (PNG, WEBP, CMYK JPEGs) are decoded on the host, in the same batch; a
JPEG the device cannot decode is tried on the host, where one that does not decode at all is stood in for as on
the host path. A new decoder is one class with ``available`` and ``decode`` and one entry in
:data:`JPEG_DECODERS`.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from mixer_ft.data.encoded import EncodedImages, stand_in_for
from mixer_ft.data.images import bounded
from mixer_ft.data.preprocess import box_as_decoded
from mixer_ft.errors import ConfigError, Undecodable
from mixer_ft.text import get_logger

if TYPE_CHECKING:
    from mixer_ft.data.preprocess import Preprocess

log = get_logger(__name__)
_told_host = [False]  # whether a JPEG the device did not decode was named (once a process)
_DEVICE_MODES = {"RGB", "L"}  # PIL's modes of the JPEGs a device decoder gives as PIL does (CMYK, YCCK: the host)


class JpegDecoder:
    """Decodes a list of JPEG files (1-D uint8 CPU tensors) into RGB (3, H, W) uint8 tensors on a device.

    Whether it turns each image as its EXIF orientation says differs between libraries (TorchCodec does on a CPU,
    torchvision never does), and may between devices and versions: :meth:`turns_upright` asks the decoder itself,
    once, and :func:`device_crops` turns the images it does not."""

    name = ""

    def __init__(self) -> None:
        self._turns: dict[str, bool] = {}

    @staticmethod
    def available() -> bool:
        raise NotImplementedError

    def decode(self, files: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
        raise NotImplementedError

    def turns_upright(self, device: torch.device) -> bool:
        """Whether this decoder applies EXIF orientation on ``device``: a 16x8 JPEG whose EXIF says to turn it a
        quarter decoded once, and its shape looked at."""
        if str(device) not in self._turns:
            from PIL import Image

            buf, exif = io.BytesIO(), Image.Exif()
            exif[0x0112] = 6
            Image.new("RGB", (16, 8), (200, 40, 40)).save(buf, "JPEG", exif=exif)
            probe = self.decode([torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)], device)[0]
            self._turns[str(device)] = tuple(probe.shape[-2:]) == (16, 8)
        return self._turns[str(device)]


class TorchCodecJpeg(JpegDecoder):
    """TorchCodec's ``decode_jpeg`` (0.16+): libjpeg-turbo on a CPU, nvJPEG on a GPU, a batch in one call."""

    name = "torchcodec"

    @staticmethod
    def available() -> bool:
        try:
            from torchcodec.decoders import decode_jpeg  # noqa: F401
        except Exception:  # noqa: BLE001 - absent, or its native library does not load with this torch
            return False
        return True

    def decode(self, files: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
        from torchcodec.decoders import decode_jpeg

        return list(decode_jpeg(files, mode="RGB", device=device))


class TorchVisionJpeg(JpegDecoder):
    """torchvision's ``decode_jpeg``: installed with timm everywhere; deprecated since torchvision 0.29 in favour of
    TorchCodec (the same decoders), so it comes second."""

    name = "torchvision"

    @staticmethod
    def available() -> bool:
        try:
            from torchvision.io import decode_jpeg  # noqa: F401
        except Exception:  # noqa: BLE001 - absent or without its image library
            return False
        return True

    def decode(self, files: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
        with warnings.catch_warnings():  # its deprecation, said at each call: JPEG_DECODERS prefers TorchCodec
            warnings.simplefilter("ignore", DeprecationWarning)
            from torchvision.io import ImageReadMode, decode_jpeg

            return list(decode_jpeg(files, mode=ImageReadMode.RGB, device=device))


# The first available is used.
JPEG_DECODERS: dict[str, type[JpegDecoder]] = {"torchcodec": TorchCodecJpeg, "torchvision": TorchVisionJpeg}


def jpeg_decoder(device: torch.device | None = None) -> JpegDecoder:
    """The first decoder of :data:`JPEG_DECODERS` that is installed and, where ``device`` is given, decodes a JPEG
    there (a TorchCodec built without CUDA, say, gives way to torchvision's nvJPEG)."""
    failed = []
    for name, kind in JPEG_DECODERS.items():
        if not kind.available():
            failed.append(f"{name}: not installed")
            continue
        decoder = kind()
        if device is None:
            return decoder
        try:
            decoder.turns_upright(device)  # decodes a small JPEG on the device
        except Exception as e:  # noqa: BLE001 - whatever the library raises, it cannot decode there
            failed.append(f"{name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            continue
        return decoder
    where = f" on {device}" if device is not None else ""
    raise ConfigError(f"decode = \"device\" needs a JPEG decoder that works{where} ({'; '.join(failed)}): pip install "
                      "torchcodec, or set decode = \"host\".")


@dataclass(frozen=True)
class JpegHeader:
    """What the device path needs of a JPEG from its header: its EXIF orientation and PIL's draft scale."""

    orientation: int
    scale: int  # 1, 2, 4 or 8: the host decodes at 1/scale (PIL's draft); the device averages scale x scale pixels


def jpeg_header(data: bytes, max_side: int) -> JpegHeader | None:
    """The header of a JPEG the device decodes as PIL does; None for any other file (decoded on the host)."""
    from PIL import Image

    try:
        img = Image.open(io.BytesIO(data))
        if img.format != "JPEG" or img.mode not in _DEVICE_MODES:
            return None
        orientation = int(img.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - the host path decodes it, or names why it does not decode
        return None
    return JpegHeader(orientation if 1 <= orientation <= 8 else 1, draft_scale(img, max_side))


def draft_scale(img: Any, max_side: int) -> int:
    """The scale PIL's ``draft`` decodes a JPEG at when :func:`~mixer_ft.data.images.to_rgb_array` asks for the longer
    side ``max_side``: the largest of 8, 4, 2, 1 that the whole-number ratio of sizes allows (PIL's own rule)."""
    if not max_side or len(img.tile) != 1:  # PIL drafts only one-tile images
        return 1
    want = bounded(img.size, max_side)
    ratio = min(img.size[0] // want[0], img.size[1] // want[1])
    return next(s for s in (8, 4, 2, 1) if ratio >= s)


def upright(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """A (C, H, W) image turned as EXIF ``orientation`` says, as PIL's ``ImageOps.exif_transpose`` turns it."""
    if orientation == 2:
        return image.flip(-1)
    if orientation == 3:
        return image.flip(-1, -2)
    if orientation == 4:
        return image.flip(-2)
    if orientation == 5:
        return image.transpose(-1, -2)
    if orientation == 6:
        return image.rot90(-1, (-2, -1))
    if orientation == 7:
        return image.transpose(-1, -2).flip(-1, -2)
    if orientation == 8:
        return image.rot90(1, (-2, -1))
    return image


def _as_drafted(image: torch.Tensor, scale: int) -> torch.Tensor:
    """A (3, H, W) image at the size PIL's draft decodes it at, ceil(H / scale) x ceil(W / scale), float."""
    x = image.float()
    if scale == 1:
        return x
    h, w = image.shape[-2:]
    return F.adaptive_avg_pool2d(x[None], (-(-h // scale), -(-w // scale)))[0]


def device_crops(images: EncodedImages, index: np.ndarray, boxes: torch.Tensor, flips: torch.Tensor, pre: Preprocess,
                 device: torch.device, decoder: JpegDecoder) -> tuple[torch.Tensor, np.ndarray]:
    """The training inputs (n, 3, size, size) of images ``index`` on ``device``, JPEGs decoded there (see the module's
    docstring), and the images they are: ``index``, but where one does not decode, the image standing in for it."""
    n = len(index)
    files = [bytes(images.flat[images.offsets[i]:images.offsets[i + 1]]) for i in index.tolist()]
    headers = [jpeg_header(f, images.max_side) for f in files]
    on_device = [k for k in range(n) if headers[k] is not None]
    decoded = _decode_all(decoder, [files[k] for k in on_device], device)
    turned = decoder.turns_upright(device)
    out = torch.empty((n, 3, pre.size, pre.size), device=device)
    box_list, flip_list = boxes.long().tolist(), flips.tolist()
    failed: dict[int, str] = {}
    pixels = dict(zip(on_device, decoded))
    for k in range(n):
        kept = tuple(int(v) for v in images.shapes[index[k]])
        header = headers[k]
        image = pixels.get(k)
        if image is None or header is None:  # not for the device, or not decoded there: the host's decode
            try:
                host = torch.from_numpy(images.image(int(index[k]), resized=False).copy()).permute(2, 0, 1)
            except Undecodable as e:
                failed[k] = e.why
                continue
            image = host.to(device).float()
        else:
            image = _as_drafted(image if turned else upright(image, header.orientation), header.scale)
        images.check_size(int(index[k]), image.shape[-2:])
        x0, y0, w, h = box_as_decoded(box_list[k], kept, tuple(image.shape[-2:]))
        crop = F.interpolate(image[None, :, y0:y0 + h, x0:x0 + w], size=(pre.size, pre.size), mode="bilinear",
                             align_corners=False)[0]
        out[k] = crop.flip(2) if flip_list[k] else crop
    out = pre.normalise(out)
    return out, images.stood_in(index, stand_in_for(out, failed))


def _decode_all(decoder: JpegDecoder, files: list[bytes], device: torch.device) -> list[torch.Tensor | None]:
    """``files`` decoded on ``device`` in one call; where that fails (a decoder gives no partial result), each alone,
    None for one the device does not decode (the host tries it)."""
    if not files:
        return []
    tensors = [torch.frombuffer(bytearray(f), dtype=torch.uint8) for f in files]
    try:
        return list(decoder.decode(tensors, device))
    except Exception:  # noqa: BLE001 - one bad file fails the batch: find it
        pass
    each: list[torch.Tensor | None] = []
    for t in tensors:
        try:
            each.append(decoder.decode([t], device)[0])
        except Exception as e:  # noqa: BLE001 - the host decodes it, or names why it does not decode
            each.append(None)
            if not _told_host[0]:  # said once: a set of such files is decoded on the host, at the host's speed
                _told_host[0] = True
                log.warning("a JPEG did not decode on %s (%s: %s); each such file is decoded on the host instead",
                            device, type(e).__name__, str(e).splitlines()[0] if str(e) else "")
    return each


__all__ = ["JPEG_DECODERS", "JpegDecoder", "JpegHeader", "TorchCodecJpeg", "TorchVisionJpeg",
           "device_crops", "draft_scale", "jpeg_decoder", "jpeg_header", "upright"]
