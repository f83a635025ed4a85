"""Each step's data from a streamed set (:mod:`mixer_ft.data.stream`): this process's next samples, decoded.

A stream has no index to shuffle: each process takes the next ``batch / processes`` samples of its own
shards (:class:`~mixer_ft.data.stream.ShardCursor`), reads their sizes from their headers, draws their crop
boxes and flips from a generator seeded by (seed, process, step), so a resumed run crops as the uninterrupted
one, then decodes and crops each in a decode thread, as the compact store's batches are
(:func:`~mixer_ft.data.encoded.crop_each`). An image whose header cannot be used is named and replaced by the
stream's next sample; one whose pixels then do not decode, by the batch's nearest image. The cursor before
each step is kept, so a checkpoint after step ``s`` records where step ``s + 1`` starts, whatever the feed has
read ahead.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mixer_ft.data.encoded import crop_each, decode_padded, decoding_pool, header_size
from mixer_ft.data.images import or_why, printable, to_rgb_array
from mixer_ft.data.preprocess import batch_seed
from mixer_ft.data.stream import Sample, ShardCursor, StreamedSet, split_samples
from mixer_ft.errors import Undecodable
from mixer_ft.model.config import MAX_SIDE
from mixer_ft.text import get_logger
from mixer_ft.train.feed import Feed, StepData

if TYPE_CHECKING:
    from mixer_ft.data.preprocess import Preprocess
    from mixer_ft.data.shards import Shard

log = get_logger(__name__)
NAMED = 5  # images that do not decode named one by one; the rest counted
UNDECODED = "image(s) that do not decode"
STREAM_EPOCH = 1 << 20  # batch_seed's epoch slot for a stream: (this, process) keeps clear of a cache run's epochs


def decode(sample: Sample) -> np.ndarray | str:
    """A sample's image as the stores decode it (upright, RGB, longer side at most MAX_SIDE), or why not."""
    data = sample[2]
    return or_why(data, lambda d: to_rgb_array(("", lambda: d), None, MAX_SIDE))


def not_used(failed: Counter[str], name: str, why: str, instead: str) -> None:
    """Count an image that cannot be used in ``failed`` (a :class:`~mixer_ft.data.loss.DataLoss`'s ``skipped``) by
    why; the first :data:`NAMED` are named in a warning that says what happens ``instead``."""
    failed[f"{UNDECODED} ({why})"] += 1
    if sum(n for kind, n in failed.items() if kind.startswith(UNDECODED)) <= NAMED:
        log.warning("%s does not decode (%s): %s", printable(name), why, instead)


def usable(pool: ThreadPoolExecutor, samples: list[Sample], work: Callable[[Sample], Any], failed: Counter[str],
           instead: str) -> list[tuple[Sample, Any]]:
    """Each sample with ``work(sample)``, run in ``pool``'s threads; a sample whose work says why it cannot be used
    (a string) is left out and counted (:func:`not_used`)."""
    kept = []
    for sample, got in zip(samples, pool.map(work, samples), strict=True):
        if isinstance(got, str):
            not_used(failed, sample[0], got, instead)
            continue
        kept.append((sample, got))
    return kept


def decoded(pool: ThreadPoolExecutor, samples: list[Sample], failed: Counter[str],
            instead: str) -> list[tuple[Sample, np.ndarray]]:
    """Each sample with its image, decoded (:func:`decode`); one that does not decode is left out and counted."""
    return usable(pool, samples, decode, failed, instead)


def sized(pool: ThreadPoolExecutor, samples: list[Sample], failed: Counter[str],
          instead: str) -> list[tuple[Sample, tuple[int, int]]]:
    """Each sample with its kept size (h, w), from its header alone; one that cannot be used is left out and
    counted."""
    return usable(pool, samples, lambda sample: header_size(sample[2], MAX_SIDE), failed, instead)


def as_decoded(sample: Sample) -> np.ndarray:
    """A sample's image as decoded (not yet scaled to its kept size), for :func:`crop_each`."""
    try:
        return to_rgb_array(("", lambda: sample[2]), None, MAX_SIDE, resized=False)
    except Exception as e:  # noqa: BLE001 - PIL raises many kinds; any of them is this image's damage
        raise Undecodable(f"{printable(sample[0])} does not decode", f"{type(e).__name__}: {e}") from None


def padded(images: list[np.ndarray], pool: ThreadPoolExecutor) -> tuple[np.ndarray, np.ndarray]:
    """Decoded images of several sizes as one zero-padded (n, H, W, 3) batch, and each one's (h, w)."""
    shapes = np.array([a.shape[:2] for a in images], dtype=np.int64).reshape(-1, 2)
    return decode_padded(images, lambda a: a, pool, shapes), shapes


class StreamFeed(Feed):
    """Each step's share of this process from a stream; prepared ahead in a background thread.

    Args:
        data, shards: the streamed set and its train shards (minival taken out).
        pre: the model's preprocessing, which draws the crop boxes and flips.
        seed, local_batch, total: the run's seed, this process's images a step, the steps.
        device: where the step runs; ``process``: (this process's index, the number of processes).
    """

    def __init__(self, data: StreamedSet, shards: list[Shard], pre: Preprocess, *, seed: int, local_batch: int,
                 total: int, device: torch.device, process: tuple[int, int] = (0, 1), max_loss: float = 1.0) -> None:
        super().__init__(device, total, prefetch=True)  # the decode threads work while the step runs
        self.data, self.pre, self.seed, self.local_batch, self.rank = data, pre, seed, local_batch, process[0]
        self.cursor = ShardCursor(data, shards, seed, process, max_loss)
        self.cursors: dict[int, list[int]] = {}  # step -> where the stream stood before it
        self.decoder = decoding_pool()
        self.failed = data.loss.skipped  # images that do not decode are lost samples

    def state(self, step: int) -> list[int]:
        """Where this process's stream stands before step ``step`` (which must have been prepared or be next)."""
        return list(self.cursors.get(step) or self.cursor.state())

    def load(self, state: list[int]) -> None:
        """Go on from a checkpoint's :meth:`state`."""
        self.cursor.load(state)

    def _prepare(self, step: int) -> StepData:
        """The next samples, sized from their headers; their boxes drawn; each decoded and cropped in a decode
        thread (:func:`~mixer_ft.data.encoded.crop_each`), as the compact store's batches are."""
        self.cursors[step] = self.cursor.state()
        kept: list[tuple[Sample, tuple[int, int]]] = []
        while len(kept) < self.local_batch:
            kept += sized(self.decoder, self.cursor.take(self.local_batch - len(kept)), self.failed,
                          "the stream's next image takes its place")
        self.cursors[step + 1] = self.cursor.state()
        for old in [s for s in self.cursors if s < step - 2]:
            del self.cursors[old]
        own = torch.tensor([size for _, size in kept], dtype=torch.long)
        gen = torch.Generator().manual_seed(batch_seed(self.seed, STREAM_EPOCH + self.rank, step))
        boxes, flips = self.pre.sample(len(kept), own[:, 0], own[:, 1], gen)
        images, stand_ins = crop_each(self.decoder, lambda k: as_decoded(kept[k][0]), own.numpy(), boxes, flips,
                                      self.pre, self.buffer(step))
        labels = [kept[stand_ins[k][0] if k in stand_ins else k][0][1] for k in range(len(kept))]
        for k, (_, why) in stand_ins.items():
            not_used(self.failed, kept[k][0][0], why, "the batch's nearest image takes its place")
        return self._cropped(step, images, torch.tensor(labels, dtype=torch.long), boxes, flips, own)

    def close(self) -> None:
        super().close()
        self.cursor.close()
        self.decoder.shutdown(wait=False, cancel_futures=True)
        self.data.loss.report(self.data.location)


def stream_chunks(data: StreamedSet, shards: list[Shard], process: tuple[int, int],
                  size: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """This process's share of ``shards`` (see :func:`~mixer_ft.data.stream.split_samples`) in chunks of ``size``,
    read as they are scored: (images decoded and padded, labels, each image's (h, w)). An image that does not
    decode is named and left out."""
    pool, failed = decoding_pool(), data.loss.skipped
    samples = split_samples(data, shards, process)
    try:
        while chunk := list(itertools.islice(samples, size)):
            kept = decoded(pool, chunk, failed, "not scored")
            if kept:
                images, shapes = padded([image for _, image in kept], pool)
                yield images, np.array([sample[1] for sample, _ in kept], dtype=np.int64), shapes
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


__all__ = ["STREAM_EPOCH", "StreamFeed", "decode", "decoded", "not_used", "padded", "sized", "stream_chunks", "usable"]
