"""The training data of each step, ready on the device before the step needs it.

One optimizer step takes one global batch: its images, crop boxes and flips are fixed by (seed,
step) alone (:func:`batch_share`), so work for a later step can be done early without changing
what any step trains on. On a GPU the host must stay ahead of the device, or the device waits:

- Train images that fit (CIFAR-10's 50,000 are 150 MB of uint8) are copied to the device once,
  and each batch is gathered there by an index tensor: no per-step host copy at all.
- Otherwise the next step's images are gathered into pinned host memory and copied on a side
  stream by a background thread while the current step computes.
- Either way the crop boxes of the next step are drawn in that thread.

On the CPU there is nothing to overlap: each step's data is read when the step starts.
"""

from __future__ import annotations

import concurrent.futures
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from mixer_ft.data.device_decode import JpegDecoder, device_crops
from mixer_ft.data.encoded import EncodedImages
from mixer_ft.data.preprocess import batch_seed, epoch_order

if TYPE_CHECKING:
    from mixer_ft.data.cache import ImageData
    from mixer_ft.data.preprocess import Preprocess

# Train images go to the device when they take at most this share of its free memory (before the
# model's activations are sized): the rest stays for the micro-batch that "auto" finds.
DEVICE_DATA_SHARE = 0.25


@dataclass
class StepData:
    """One step's share of this process: images (uint8 NHWC, on the device), labels, boxes, flips, extents."""

    images: torch.Tensor
    labels: torch.Tensor
    boxes: torch.Tensor
    flips: torch.Tensor
    extents: torch.Tensor | None
    ready: torch.cuda.Event | None = None  # the side stream's copy; the step's stream waits on it
    cropped: bool = False  # images are already model inputs (cropped where decoded: EncodedImages.crops)

    def inputs(self, pre: Preprocess, part: slice) -> torch.Tensor:
        """Micro-batch ``part``'s model inputs: cropped, resized, flipped and normalised (here, or already)."""
        if self.cropped:
            return self.images[part]
        own = None if self.extents is None else self.extents[part]
        return pre.train(self.images[part], self.boxes[part], self.flips[part], own)


def fits_on_device(images: np.ndarray, device: torch.device) -> bool:
    """Whether the train images are worth keeping on ``device``: one array of one size (images of several
    sizes, or kept encoded, are gathered and decoded on the host), and a GPU with room for them."""
    if device.type != "cuda" or not isinstance(images, np.ndarray):  # RaggedImages, EncodedImages are not arrays
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return images.nbytes <= DEVICE_DATA_SHARE * free


def device_images(data: ImageData, device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The train images and labels copied to ``device`` once, where they fit (see :func:`fits_on_device`)."""
    images = data.images["train"]
    if not fits_on_device(images, device):
        return None
    return copy_rows(images, device), copy_rows(np.asarray(data.labels["train"]), device)


def copy_rows(array: np.ndarray, device: torch.device, chunk_bytes: int = 1 << 28) -> torch.Tensor:
    """``array`` copied to ``device`` in chunks of rows.

    A resumed run's cache is a read-only memory map: torch cannot share it (and warns), and one host
    copy of the whole array could be as large as the GPU's data share. Each chunk is copied on the host
    (writable) and sent, so the host holds one chunk at a time.
    """
    out = torch.empty(array.shape, dtype=torch.from_numpy(np.empty(0, array.dtype)).dtype, device=device)
    rows = max(1, chunk_bytes // max(1, array[:1].nbytes))
    for start in range(0, len(array), rows):
        out[start:start + rows].copy_(torch.from_numpy(np.array(array[start:start + rows])))
    return out


class Feed:
    """Steps' data prepared one step ahead in a background thread: subclasses say how one step's is made
    (:meth:`_prepare`), this class runs them ahead and hands them over on the device's stream."""

    on_device = False  # the train images already on the device (TrainFeed, where they fit)

    def __init__(self, device: torch.device, total: int, prefetch: bool) -> None:
        self.device, self.total, self.prefetch = device, total, prefetch
        self.side = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="mixer-ft-feed") if prefetch else None
        self.pending: tuple[int, concurrent.futures.Future[StepData]] | None = None
        # Inputs cropped on the host are written into buffers used in turn: step s's is written again for step
        # s + 3, when s has ended (the feed prepares one step ahead) and its copy to a GPU was made long before.
        self.buffers: list[torch.Tensor | None] = [None] * 3

    def _prepare(self, step: int) -> StepData:
        raise NotImplementedError

    def buffer(self, step: int) -> torch.Tensor | None:
        """The buffer step ``step``'s cropped inputs may be written into (None until one was made)."""
        return self.buffers[step % len(self.buffers)]

    def _cropped(self, step: int, images: torch.Tensor, labels: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor,
                 own: torch.Tensor | None) -> StepData:
        """Step ``step``'s data whose images are model inputs already (cropped where decoded, into
        :meth:`buffer`): only they and the labels go to the device."""
        self.buffers[step % len(self.buffers)] = images
        if self.side is None:
            return StepData(images, labels, boxes, flips, own, cropped=True)
        (images, labels), ready = self._send([images, labels])
        return StepData(images, labels, boxes, flips, own, ready, cropped=True)

    def _send(self, tensors: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.cuda.Event]:
        """Host tensors copied to the GPU from pinned memory on the side stream, so no copy waits for the step
        that is computing now; the event the step's stream waits on."""
        assert self.side is not None, "only on a GPU"
        with torch.cuda.stream(self.side):
            moved = [t.pin_memory().to(self.device, non_blocking=True) for t in tensors]
            ready = torch.cuda.Event()
            ready.record(self.side)
        return moved, ready

    def take(self, step: int) -> StepData:
        """Step ``step``'s data, on the device and safe to use on the current stream; the next
        step's preparation starts in the background."""
        if self.pending is not None and self.pending[0] == step:
            data = self.pending[1].result()
        else:
            if self.pending is not None:  # another step's, no longer wanted: ended first (it may share a buffer)
                concurrent.futures.wait([self.pending[1]])
            data = self._prepare(step)
        if self.pool is not None and step + 1 < self.total:
            self.pending = (step + 1, self.pool.submit(self._prepare, step + 1))
        else:
            self.pending = None
        if data.ready is not None:
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(data.ready)
            for t in (data.images, data.labels, data.boxes, data.flips, data.extents):
                if t is not None and t.is_cuda:  # made on the side stream, used on this one: keep its memory until then
                    t.record_stream(stream)
        return data

    def close(self) -> None:
        """Stop the background thread (a prepared step that is not taken is dropped)."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None
        self.pending = None


class TrainFeed(Feed):
    """Each step's data for :func:`mixer_ft.train.loop.micro_batches`, prepared one step ahead on a GPU.

    Args:
        data, indices: the images and which of the "train" array's rows train (the split's indices).
        pre: the model's preprocessing, which draws the crop boxes and flips.
        seed, global_batch, steps_per_epoch, total: the run's; with them a step's batch is fixed.
        device: where the step runs; ``process``: (this process's index, the number of processes).
        on_device: the train images and labels already on the device (:func:`device_images`, called
            before the micro-batch probe so that the probe counts them), else None.
        prefetch: prepare the next step in a background thread (default: on a GPU).
        decoder: decode the compact store's JPEGs on ``device`` with it (the recipe's ``decode = "device"``), else
            in host threads.
    """

    def __init__(self, data: ImageData, indices: np.ndarray, pre: Preprocess, *, seed: int, global_batch: int,
                 steps_per_epoch: int, total: int, device: torch.device, process: tuple[int, int] = (0, 1),
                 on_device: tuple[torch.Tensor, torch.Tensor] | None = None, prefetch: bool | None = None,
                 decoder: JpegDecoder | None = None) -> None:
        self.data, self.indices, self.pre = data, indices, pre
        self.seed, self.global_batch, self.steps_per_epoch = seed, global_batch, steps_per_epoch
        self.process = process
        # Ahead on a GPU; on any device when each batch is decoded from the encoded store (its threads
        # decode while the step runs)
        gathered = not isinstance(data.images["train"], np.ndarray)  # a batch is assembled (and decoded) per read
        super().__init__(device, total, (device.type == "cuda" or gathered) if prefetch is None else prefetch)
        # What a step reads: the images on the device (see device_images), or the memory map, per batch.
        self.on_device = on_device is not None
        self.images, self.labels = on_device if on_device is not None else (data.images["train"], data.labels["train"])
        self.extents = data.extents.get("train")
        self.order: tuple[int, np.ndarray | None] = (-1, None)  # (epoch, its shuffled train indices)
        # Encoded images are cropped in the threads that decode them (boxes inside the images: no translate).
        self.host_crops = isinstance(self.images, EncodedImages) and not pre.translate
        self.decoder = decoder if self.host_crops else None  # the same crops, decoded on the device

    def batch_share(self, step: int) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
        """This process's share of step ``step``'s global batch: train image indices, crop boxes, flips.

        Boxes and flips are drawn for the whole global batch, so each image's augmentation is the
        same whatever the number of processes.
        """
        epoch, b = divmod(step, self.steps_per_epoch)
        order = self.order  # one tuple, read and replaced whole: safe beside the feed's thread
        if order[0] != epoch:
            order = self.order = (epoch, epoch_order(self.indices, self.seed, epoch))
        batch = order[1][b * self.global_batch:(b + 1) * self.global_batch]  # type: ignore[index]
        gen = torch.Generator().manual_seed(batch_seed(self.seed, epoch, b))
        if self.extents is None:  # one size for all
            boxes, flips = self.pre.sample(len(batch), *self.data.image_size, gen)
        else:  # each crop inside its own image, with its own aspect ratio
            own = torch.from_numpy(self.extents[batch])
            boxes, flips = self.pre.sample(len(batch), own[:, 0], own[:, 1], gen)
        share = slice(self.process[0], None, self.process[1])
        return batch[share], boxes[share], flips[share]

    def _prepare(self, step: int) -> StepData:
        """Step ``step``'s data, its copies issued (on the side stream where there is one)."""
        batch, boxes, flips = self.batch_share(step)
        own = None if self.extents is None else torch.from_numpy(self.extents[batch])
        if self.decoder is not None:  # the model's inputs, made on the device from the files' bytes
            return self._decoded_on_device(batch, boxes, flips, own)
        if self.host_crops:  # the model's inputs, made here
            # An image that does not decode is stood in for by the batch's nearest that does, with its label
            images, used = self.images.crops(batch, boxes, flips, self.pre, self.buffer(step))
            return self._cropped(step, images, torch.from_numpy(self.labels[used]), boxes, flips, own)
        if self.side is None:  # the CPU: the step reads its data where it is
            images = self.images[torch.from_numpy(batch)] if self.on_device else \
                torch.from_numpy(np.ascontiguousarray(self.images[batch]))
            labels = self.labels[torch.from_numpy(batch)] if self.on_device else torch.from_numpy(self.labels[batch])
            return StepData(images, labels, boxes, flips, own)
        # A GPU: everything the step needs goes over on the side stream (see Feed._send).
        small = [torch.from_numpy(np.ascontiguousarray(batch)), boxes, flips] + ([] if own is None else [own])
        if not self.on_device:
            small += [torch.from_numpy(np.ascontiguousarray(self.images[batch])), torch.from_numpy(self.labels[batch])]
        moved, ready = self._send(small)
        index, boxes, flips = moved[:3]
        own = None if own is None else moved[3]
        if self.on_device:
            with torch.cuda.stream(self.side):  # the gather too: on the side stream, before the event
                images, labels = self.images[index], self.labels[index]
                ready.record(self.side)
        else:
            images, labels = moved[-2:]
        return StepData(images, labels, boxes, flips, own, ready)

    def _decoded_on_device(self, batch: np.ndarray, boxes: torch.Tensor, flips: torch.Tensor,
                           own: torch.Tensor | None) -> StepData:
        """The step's inputs decoded and cropped on the device (on the side stream, where there is one)."""
        assert self.decoder is not None
        if self.side is None:
            images, used = device_crops(self.images, batch, boxes, flips, self.pre, self.device, self.decoder)
            return StepData(images, torch.from_numpy(self.labels[used]), boxes, flips, own, cropped=True)
        with torch.cuda.stream(self.side):
            images, used = device_crops(self.images, batch, boxes, flips, self.pre, self.device, self.decoder)
            labels = torch.from_numpy(self.labels[used]).pin_memory().to(self.device, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record(self.side)
        return StepData(images, labels, boxes, flips, own, ready, cropped=True)


__all__ = ["DEVICE_DATA_SHARE", "Feed", "StepData", "TrainFeed", "device_images", "fits_on_device"]
