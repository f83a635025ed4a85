"""A run's data: its splits and length, the feed that serves its steps, and the counts it is scored by.

A run reads either the cache (:mod:`mixer_ft.data.cache`: an image folder, archive, shards or Hub set indexed
once) or a stream (:mod:`mixer_ft.data.stream`: shards read as the run trains, with no cache and no length known
before). The loop sees neither: it asks this module for the data, the feed and a split's counts.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from mixer_ft.data.cache import ImageData, load_data
from mixer_ft.data.device_decode import jpeg_decoder
from mixer_ft.data.encoded import EncodedImages
from mixer_ft.data.loss import DataLoss
from mixer_ft.data.sources import open_stream
from mixer_ft.data.stream import StreamedSet, is_streamed
from mixer_ft.errors import ConfigError
from mixer_ft.text import get_logger
from mixer_ft.train.evaluation import count_correct
from mixer_ft.train.feed import Feed, TrainFeed
from mixer_ft.train.recipe import Recipe
from mixer_ft.train.run import Run
from mixer_ft.train.stream_feed import StreamFeed, stream_chunks

log = get_logger(__name__)


def schedule_length(recipe: Recipe, n_train: int) -> tuple[int, int]:
    """(steps per epoch, total steps): ``epochs`` passes over train, or ``steps``."""
    steps_per_epoch = n_train // recipe.global_batch
    if steps_per_epoch == 0:  # the command line fits the batch to the set (train/resolve.fit_batch); a recipe
        # run from Python may not have
        batch = 1 << (n_train.bit_length() - 1) if n_train else 0
        raise ConfigError(f"global batch {recipe.global_batch} is larger than the {n_train} training images; "
                          + (f"use {batch} (--batch {batch}), the largest power of two not above them." if batch else
                             "the train split is empty."))
    return steps_per_epoch, math.ceil(recipe.epochs * steps_per_epoch) if recipe.epochs else recipe.steps


def open_run_data(recipe: Recipe, state: Any) -> tuple[ImageData | StreamedSet, dict[str, Any], int, int]:
    """The run's data, its splits and its length (steps per epoch, total steps): from the cache, or a stream."""
    if is_streamed(recipe.dataset, recipe.streaming):  # read shard by shard as it trains (data/stream.py)
        data = open_stream(recipe.dataset, recipe.image_column, recipe.label_column)
        if recipe.epochs:
            raise ConfigError(f"{recipe.dataset} is streamed: its size is not known before it is read, so a run is measured "
                              "in steps. Give --steps instead of epochs.")
        train_shards, minival_shards = data.cut(recipe.val_fraction)
        share = len(minival_shards) / len(data.train)
        if state.is_main_process and share > max(2 * recipe.val_fraction, 0.05):
            log.warning("the minival is %d whole train shard(s) of %d: %.0f%% of the train shards held out for "
                        "val_fraction %g (a stream holds out whole shards). --set val_fraction=0 trains on all of them; "
                        "more, smaller shards hold out less.", len(minival_shards), len(data.train), 100 * share,
                        recipe.val_fraction)
        # No epochs: one nominal "epoch" of the run's steps
        return data, {"train": train_shards, "minival": minival_shards, "test": data.test}, recipe.steps, recipe.steps
    with state.main_process_first():  # one process decodes into the cache, the others read it
        cached = load_data(recipe.dataset, image_column=recipe.image_column, label_column=recipe.label_column,
                           test_fraction=recipe.test_fraction)
    cached.loss.check(recipe.max_data_loss, cached.location)  # every process stops alike: one line, exit 2
    splits = cached.splits(recipe.val_fraction, recipe.seed)
    if state.is_main_process:
        for warning in cached.small_splits(splits):
            log.warning(warning)
    return cached, splits, *schedule_length(recipe, len(splits["train"][1]))


def make_feed(run: Run, per_process: int, on_device: tuple[torch.Tensor, torch.Tensor] | None) -> Feed:
    """The feed of this process's share of each step: from the stream, or from the cache (see :mod:`.feed`)."""
    r, accel = run.recipe, run.accelerator
    process = (accel.process_index, accel.num_processes)
    if isinstance(run.data, StreamedSet):
        _decoded_on_host(r, accel.is_main_process, "a streamed set is decoded in the stream's worker processes")
        return StreamFeed(run.data, run.splits["train"], run.pre, seed=r.seed, local_batch=per_process, total=run.total,
                          device=accel.device, process=process, max_loss=r.max_data_loss)
    decoder = None
    if r.decode == "device":
        if not isinstance(run.data.images["train"], EncodedImages):
            _decoded_on_host(r, accel.is_main_process,
                             "this set's cache holds its images decoded already (one small size, or MIXER_FT_STORE)")
        elif run.pre.translate:
            _decoded_on_host(r, accel.is_main_process,
                             "translate moves crop boxes past the images' edges, which only the host path repeats")
        else:
            decoder = jpeg_decoder(accel.device)
            accel.print(f"decode = \"device\": the train split's JPEGs are decoded on {accel.device} by {decoder.name}")
    return TrainFeed(run.data, run.splits["train"][1], run.pre, seed=r.seed, global_batch=r.global_batch,
                     steps_per_epoch=run.steps_per_epoch, total=run.total, device=accel.device, process=process,
                     on_device=on_device, decoder=decoder)


def _decoded_on_host(recipe: Recipe, main: bool, why: str) -> None:
    """Say (once: on the main process) that ``decode = "device"`` does not apply to this run, and why."""
    if recipe.decode == "device" and main:
        log.warning("decode = \"device\" does not apply: %s. Its images are decoded on the host.", why)


def class_weights(recipe: Recipe, data: ImageData | StreamedSet, splits: dict[str, Any]) -> list[float] | None:
    """The loss's weight of each class (recipe key ``class_weights``): as given, or balanced on the train split."""
    from mixer_ft.train.objective import balanced_weights

    given, k = recipe.class_weights, len(data.classes)
    if isinstance(given, list) and len(given) != k:
        raise ConfigError(f"class_weights has {len(given)} weight(s); the data set has {k} classes: give one a class, "
                          f"in this order: {', '.join(data.classes[:20])}{', ...' if k > 20 else ''}.")
    if given != "balanced":
        return given
    if isinstance(data, StreamedSet):
        raise ConfigError("class_weights = \"balanced\" counts the train split's classes, which a streamed set does "
                          "not know before it is read: give one weight a class instead.")
    array, idx = splits["train"]
    return balanced_weights(np.bincount(np.asarray(data.labels[array])[idx], minlength=k).tolist())


def data_loss(run: Run) -> dict[str, Any]:
    """What reading the run's data lost (``data_loss`` in its record): the cache's, or every process's reads of a
    stream put together (call it on every process)."""
    if not isinstance(run.data, StreamedSet):
        return run.data.loss.to_dict()
    from accelerate.utils import gather_object

    parts = gather_object([run.data.loss.to_dict()]) if run.accelerator.num_processes > 1 else [run.data.loss.to_dict()]
    merged = DataLoss()
    for part in parts:
        merged = merged.merge(DataLoss.from_dict(part))
    return merged.to_dict()


def count_share(run: Run, split: str, process: tuple[int, int], batch: int, **scored: Any) -> tuple[int, int]:
    """(correct, images) of this process's disjoint share of ``split`` (``scored``: the views, as count_correct)."""
    if isinstance(run.data, StreamedSet):  # this process's share of the split's shards, decoded in chunks
        correct = seen = 0
        for images, labels, extents in stream_chunks(run.data, run.splits[split], process, 4 * batch):
            c, n = count_correct(run.net, run.pre, images, labels, np.arange(len(labels)), run.device,
                                 batch=batch, extents=extents, **scored)
            correct, seen = correct + c, seen + n
        return correct, seen
    array, idx = run.splits[split]
    return count_correct(run.net, run.pre, run.data.images[array], run.data.labels[array], idx[process[0]::process[1]],
                         run.device, batch=batch, extents=run.data.extents.get(array), **scored)


__all__ = ["class_weights", "count_share", "data_loss", "make_feed", "open_run_data", "schedule_length"]
