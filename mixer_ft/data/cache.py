"""Image classification data behind one ``--dataset`` value, decoded once into a uint8 cache.

Sources: ``cifar10`` / ``cifar100`` (the Hub copies through ``datasets``), ``hf:owner/name``
(any Hub image-classification set, or a local folder ``datasets`` can read), an image folder
(``train/<class>/*``, ``test/<class>/*``) or that folder as .tar/.tar.gz, and the official
CIFAR "python version" archives or folders.

Every image is decoded once into ``(N, H, W, 3)`` uint8 arrays stored as memory-mapped files in
the cache, so host RAM stays bounded whatever the data set's size and later runs start at once.
Cropping, resizing, flipping and scaling happen later, in batches, on the training device
(:mod:`mixer_ft.data.preprocess`). A corrupt image is skipped, counted and named in the log; a
source where nothing decodes is an error.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mixer_ft.atomic import json_text, locked
from mixer_ft.data.cache_entries import Damaged, check_entry, data_root, evict, stale_builds, touch
from mixer_ft.data.decoding import decode_each
from mixer_ft.data.encoded import SMALL_SIDE, EncodedImages
from mixer_ft.data.images import printable
from mixer_ft.data.loss import DataLoss, estimate_note
from mixer_ft.data.names import canonical_dataset
from mixer_ft.data.sources import Reader, open_reader
from mixer_ft.errors import ConfigError, DataError, StorageError
from mixer_ft.model.config import MAX_SIDE, TEST_FRACTION
from mixer_ft.settings import setting
from mixer_ft.text import get_logger, one_line

log = get_logger(__name__)

_CACHE_FORMAT = 9  # bump when the cache layout, labels or decoding change (6: the encoded store; 7: torch's resize;
# 8: the compact store's names, small images decoded while indexing; 9: data loss, identity, shards read bounded)


@dataclass
class ImageData:
    """Decoded images of one source.

    Attributes:
        images: split name ("train", "test") -> uint8 array (N, H, W, 3), memory-mapped.
        labels: split name -> int64 array (N,).
        classes: class names, index = label.
        location: where the images were read from.
        skipped: images that could not be decoded.
    """

    source: str
    location: str
    classes: list[str]
    images: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    skipped: int = 0
    test_from: str = ""  # which split of the source is the reported test split, and why
    extents: dict[str, np.ndarray | None] = field(default_factory=dict)  # split -> (h, w) of each image; None: one size
    manifest: str = ""  # a digest of every image's split, class, name and size: the same data, or not
    loss: DataLoss = field(default_factory=DataLoss)  # what reading the source lost (data/loss.py)

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of the stored images: the largest, where they differ (see ``extents``)."""
        return tuple(self.images["train"].shape[1:3])  # type: ignore[return-value]

    @property
    def dataset_id(self) -> str:
        """A name runs are compared under: "cifar10"/"cifar100" for any copy of them, else the source."""
        return canonical_dataset(self.source, self.classes, len(self.labels["test"]))

    def splits(self, val_fraction: float = 0.02, seed: int = 0) -> dict[str, tuple[str, np.ndarray]]:
        """The upstream splits as (array name, indices): train[:98%], minival train[98%:], test.

        The train split is shuffled with ``seed`` before it is cut, so the minival holds every
        class even when the source is sorted by class; the same seed gives the same cut.
        """
        if not 0 <= val_fraction < 1:
            raise ConfigError(f"--val-fraction must be in [0, 1), got {val_fraction}.")
        if not 0 <= seed < 2**32:
            raise ConfigError(f"--seed must be a whole number from 0 to 2**32 - 1, got {seed}.")
        n = len(self.labels["train"])
        order = np.random.default_rng(seed).permutation(n)
        n_val = int(round(n * val_fraction))
        return {
            "train": ("train", np.sort(order[: n - n_val])),
            "minival": ("train", np.sort(order[n - n_val:])),
            "test": ("test", np.arange(len(self.labels["test"]))),
        }

    def summary(self, val_fraction: float = 0.02, seed: int = 0) -> dict[str, Any]:
        """What ``mixer-ft data --json`` prints."""
        splits = self.splits(val_fraction, seed)
        sizes = {k: len(idx) for k, (_, idx) in splits.items()}
        counts = {k: dict(zip(self.classes, np.bincount(self.labels[a][idx], minlength=len(self.classes)).tolist()))
                  for k, (a, idx) in splits.items()}
        h, w = self.image_size
        own = [e for e in self.extents.values() if e is not None and len(e)]
        low = np.concatenate(own).min(0).tolist() if own else [h, w]
        return {"source": self.source, "location": self.location, "splits": sizes, "classes": self.classes,
                "class_counts": counts,
                "image_size": [h, w], "one_size": all(e is None for e in self.extents.values()),
                "size_range": [low, [h, w]], "skipped": self.skipped, "test_from": self.test_from,
                "data_loss": self.loss.to_dict(), "warnings": self.small_splits(splits)}

    def small_splits(self, splits: dict[str, tuple[str, np.ndarray]], least: int = 10) -> list[str]:
        """Warnings for a minival or test split (of :meth:`splits`) too small to score on: under
        ``least`` images a class."""
        out = []
        for name, (_, idx) in splits.items():
            if name == "train":
                continue
            per_class = len(idx) / max(len(self.classes), 1)
            if per_class < least:
                hint = ("raise --val-fraction (recipe key val_fraction)" if name == "minival" else
                        "add test images, or raise --test-fraction for a folder without split folders")
                out.append(f"the {name} split has {len(idx)} images, {per_class:.1f} a class: its accuracy is "
                           f"too coarse to compare or choose by; {hint}")
        return out


# --------------------------------------------------------------------------- entry point


def load_data(
    source: str,
    *,
    image_column: str | None = None,
    label_column: str | None = None,
    store_size: int | None = None,
    test_fraction: float = TEST_FRACTION,
    max_side: int = MAX_SIDE,
) -> ImageData:
    """Read ``source`` (see the module docstring), decoding into the cache on first use.

    Args:
        image_column, label_column: for Hub sets whose columns are not found automatically.
        store_size: resize every image to this square size when caching; by default each image keeps
            its own size and aspect, scaled down so that its longer side is at most ``max_side``.
        test_fraction: of an image folder without split folders, the share of each class held out
            as the test split.
    """
    reader = open_reader(source, image_column, label_column, test_fraction)
    decoded = wants_decoded_store()
    options = [store_size, max_side] + (["decoded"] if decoded else [])
    key = hashlib.sha1(json_text([_CACHE_FORMAT, reader.fingerprint(), *options]).encode()).hexdigest()[:16]
    folder = data_root() / key
    # The source whatever its version: a new version of it supersedes the entry of an older one
    where = os.path.realpath(reader.location) if os.path.exists(reader.location) else reader.location
    identity = hashlib.sha1(json_text([where, image_column, label_column, test_fraction, *options]).encode()).hexdigest()[:16]
    if (folder / "meta.json").is_file():
        try:
            return _open_cache(folder, source)
        except Damaged as e:
            log.warning("the data cache entry %s of %s is damaged (%s): building it again", key, source, e)
            _build_cache(reader, folder, store_size, max_side, decoded, identity, damaged=True)
    else:
        _build_cache(reader, folder, store_size, max_side, decoded, identity)
    return _open_cache(folder, source)


# --------------------------------------------------------------------------- the cache


def wants_decoded_store() -> bool:
    """``MIXER_FT_STORE=decoded``: every image decoded into the cache, whatever the data (the store that feeds a
    CPU fastest, at about ten times the disk of the compact store and a decode of every image before the first
    step); unset or ``auto``: the store the data calls for."""
    return setting("MIXER_FT_STORE") == "decoded"


def _report(reader: Reader, labels: dict[str, list], skipped: list[str]) -> None:
    """Name the images skipped (and count them as lost); refuse a split left without images."""
    if skipped:
        log.warning("skipped %d image(s) that could not be decoded: %s%s", len(skipped),
                    ", ".join(skipped[:5]), ", ..." if len(skipped) > 5 else "")
        reader.loss.skip("image(s) that could not be decoded", len(skipped))
    reader.loss.read = max(reader.loss.read, sum(map(len, labels.values())) + len(skipped))  # a shard counts its own
    for split in ("train", "test"):
        if not labels[split]:
            bad = f" ({len(skipped)} could not be decoded)" if skipped else ""
            raise DataError(
                f"{reader.location} has no {split} images{bad}. Expected the image-folder layout "
                f"{split}/<class>/<image> (e.g. {split}/cat/0001.jpg), {split}-*.tar webdataset shards of "
                f"<key>.jpg with <key>.cls, a CIFAR python-version archive, or a Hub data set with train and test splits."
            )


def _decode_all(reader: Reader, tmp: Path, size: tuple[int, int] | None,
                max_side: int) -> tuple[dict[str, list], dict[str, np.ndarray], int, str]:
    """Decode every image of ``reader`` into tmp/<split>.u8, one after another at its own (bounded) size.

    Returns (labels by split, (h, w) of each image by split, images skipped, the manifest: a digest of
    each kept image's split, class, name and size).
    """
    labels: dict[str, list] = {"train": [], "test": []}
    shapes: dict[str, list] = {"train": [], "test": []}
    skipped, manifest = [], hashlib.sha256()
    with open(tmp / "train.u8", "wb") as train, open(tmp / "test.u8", "wb") as test:
        outs = {"train": train, "test": test}
        for split, label, name, arr in decode_each(reader, size, max_side):
            if isinstance(arr, str):
                skipped.append(f"{name} ({arr})")
                continue
            outs[split].write(arr.tobytes())
            labels[split].append(label)
            shapes[split].append(arr.shape[:2])
            manifest.update(json_text([split, label, name, *arr.shape[:2]]).encode("utf-8", "backslashreplace") + b"\n")
    _report(reader, labels, skipped)
    return labels, {k: np.array(v, dtype=np.int64).reshape(-1, 2) for k, v in shapes.items()}, len(skipped), \
        manifest.hexdigest()[:16]


def _index_all(reader: Reader, tmp: Path, max_side: int) -> tuple[dict[str, list], dict[str, np.ndarray], int, str]:
    """Keep every image of ``reader`` encoded in tmp/<split>.enc, its offsets in tmp/<split>_offsets.npy: no
    pixel decoded, except for files larger than their decoded image (see :mod:`mixer_ft.data.encoded`).
    Returns what :func:`_decode_all` returns, the same manifest for the same images."""
    labels: dict[str, list] = {"train": [], "test": []}
    shapes: dict[str, list] = {"train": [], "test": []}
    offsets: dict[str, list] = {"train": [0], "test": [0]}
    skipped, manifest = [], hashlib.sha256()
    with open(tmp / "train.enc", "wb") as train, open(tmp / "test.enc", "wb") as test, \
            open(tmp / "train_names.txt", "w", encoding="utf-8") as train_names, \
            open(tmp / "test_names.txt", "w", encoding="utf-8") as test_names:
        outs = {"train": train, "test": test}
        names = {"train": train_names, "test": test_names}  # to name an image that fails to decode in training
        for split, label, name, got in decode_each(reader, None, max_side, index_only=True):
            if isinstance(got, str):
                skipped.append(f"{name} ({got})")
                continue
            h, w, data = got
            outs[split].write(data)
            names[split].write(json_text(printable(name)) + "\n")
            offsets[split].append(offsets[split][-1] + len(data))
            labels[split].append(label)
            shapes[split].append((h, w))
            manifest.update(json_text([split, label, name, h, w]).encode("utf-8", "backslashreplace") + b"\n")
    _report(reader, labels, skipped)
    for split, ends in offsets.items():
        np.save(tmp / f"{split}_offsets.npy", np.array(ends, dtype=np.int64))
    return labels, {k: np.array(v, dtype=np.int64).reshape(-1, 2) for k, v in shapes.items()}, len(skipped), \
        manifest.hexdigest()[:16]


def _to_raw(tmp: Path, shapes: dict[str, np.ndarray], max_side: int) -> None:
    """Decode the kept files of tmp/<split>.enc into tmp/<split>.u8 (the store of small one-size sets)."""
    for split, split_shapes in shapes.items():
        flat = np.memmap(tmp / f"{split}.enc", dtype=np.uint8, mode="r")
        images = EncodedImages(flat, np.load(tmp / f"{split}_offsets.npy"), split_shapes, max_side, split,
                               tmp / f"{split}_names.txt")
        with open(tmp / f"{split}.u8", "wb") as out:
            for start in range(0, len(images), 1024):
                out.write(images[np.arange(start, min(start + 1024, len(images)))].tobytes())
        del flat, images
        for kept in (f"{split}.enc", f"{split}_offsets.npy", f"{split}_names.txt"):
            (tmp / kept).unlink()


def _label_ids(reader: Reader, labels: dict[str, list]) -> tuple[list[str], dict[str, np.ndarray]]:
    """Class names and each split's labels as indices into them (folder names in sorted order)."""
    classes = reader.classes or sorted(set(labels["train"]))
    index = {c: i for i, c in enumerate(classes)}
    ids = {}
    for split, names in labels.items():
        unknown = {c for c in names if isinstance(c, str) and c not in index}
        if unknown:
            raise DataError(f"{reader.location}: {split} has classes missing from train: {sorted(unknown)}.")
        ids[split] = np.array([index[c] if isinstance(c, str) else c for c in names], dtype=np.int64)
        if ids[split].min() < 0 or ids[split].max() >= len(classes):
            raise DataError(f"{reader.location}: {split} labels outside 0..{len(classes) - 1}.")
    return classes, ids


def _build_cache(reader: Reader, folder: Path, store_size: int | None, max_side: int, decoded: bool, identity: str,
                 damaged: bool = False) -> None:
    """Decode every image once into raw uint8 files, written beside and renamed into place; then the entries it
    supersedes, and those past the cache's bound, go (:func:`~mixer_ft.data.cache_entries.evict`). ``damaged``: the
    entry there is damaged, and is replaced (unless another process replaced it while this one waited)."""
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        with locked(folder.parent / f".{folder.name}.lock", wait=True):  # one builder; a killed one's files go
            if (folder / "meta.json").is_file():
                if not damaged:
                    return  # another process built it while this one waited
                with contextlib.suppress(Damaged):
                    check_entry(folder, _CACHE_FORMAT)
                    return  # another process rebuilt it while this one waited
            stale_builds(folder)
            _build(reader, folder, store_size, max_side, decoded, identity)
    except OSError as e:
        raise StorageError(f"Could not write the data cache {folder} ({e.strerror or e}); free space there or set "
                           "MIXER_FT_CACHE to a folder with room, then run the same command again.") from None
    evict(folder, identity)


def _build(reader: Reader, folder: Path, store_size: int | None, max_side: int, decoded: bool, identity: str) -> None:
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        store = "raw"
        if reader.encoded_files and not store_size and not decoded:  # files: kept encoded, unless one small size
            labels, shapes, skipped, manifest = _index_all(reader, tmp, max_side)
            every = np.concatenate(list(shapes.values()))
            if (every == every[0]).all() and every[0].max() <= SMALL_SIDE:
                _to_raw(tmp, shapes, max_side)
            else:
                store = "encoded"
        else:
            labels, shapes, skipped, manifest = _decode_all(reader, tmp, (store_size, store_size) if store_size else None,
                                                            max_side)
        classes, ids = _label_ids(reader, labels)
        for split, split_ids in ids.items():
            np.save(tmp / f"{split}_labels.npy", split_ids)
            np.save(tmp / f"{split}_shapes.npy", shapes[split])
        size = np.concatenate(list(shapes.values())).max(0).tolist()
        meta = {"format": _CACHE_FORMAT, "location": reader.location, "classes": classes, "size": size,
                "counts": {s: len(v) for s, v in ids.items()}, "skipped": skipped, "test_from": reader.test_from,
                "manifest": manifest, "store": store, "max_side": max_side, "identity": identity,
                "data_loss": reader.loss.to_dict()}
        (tmp / "meta.json").write_text(json_text(meta))  # written last: its presence marks a whole cache
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _open_cache(folder: Path, source: str) -> ImageData:
    """The entry in ``folder``, once :func:`~mixer_ft.data.cache_entries.check_entry` finds it whole.

    Raises:
        Damaged: its files disagree with its index (it is then built again).
    """
    meta = check_entry(folder, _CACHE_FORMAT)
    touch(folder)
    try:
        return _opened(folder, source, meta)
    except (OSError, ValueError) as e:  # a file that cannot be mapped as its index says
        raise Damaged(f"{type(e).__name__}: {e}") from None


def _opened(folder: Path, source: str, meta: dict[str, Any]) -> ImageData:
    images, extents = {}, {}
    for split, n in meta["counts"].items():
        shapes = np.load(folder / f"{split}_shapes.npy")
        if meta["store"] == "encoded":
            flat = np.memmap(folder / f"{split}.enc", dtype=np.uint8, mode="r")
            images[split] = EncodedImages(flat, np.load(folder / f"{split}_offsets.npy"), shapes, meta["max_side"], split,
                                          folder / f"{split}_names.txt")
            extents[split] = None if (shapes == shapes[0]).all() else shapes
            continue
        flat = np.memmap(folder / f"{split}.u8", dtype=np.uint8, mode="r")
        if (shapes == shapes[0]).all():  # one size for all (CIFAR): a plain (N, H, W, 3) array
            images[split], extents[split] = flat.reshape(n, *shapes[0], 3), None
        else:
            images[split], extents[split] = RaggedImages(flat, shapes), shapes
    labels = {s: np.load(folder / f"{s}_labels.npy") for s in meta["counts"]}
    return ImageData(source, meta["location"], meta["classes"], images, labels,  # type: ignore[arg-type]
                     meta["skipped"], meta.get("test_from", ""), extents, meta.get("manifest", ""),
                     DataLoss.from_dict(meta.get("data_loss")))


class RaggedImages:
    """Images of several sizes stored one after another in a flat uint8 file. Indexing with an array
    of indices gives them padded (zeros, bottom and right) into one (n, H, W, 3) array; their own
    sizes are ``ImageData.extents``."""

    dtype = np.dtype(np.uint8)

    def __init__(self, flat: np.ndarray, shapes: np.ndarray) -> None:
        self.flat, self.shapes = flat, shapes
        self.offsets = np.concatenate([[0], np.cumsum(shapes[:, 0] * shapes[:, 1] * 3)])
        self.shape = (len(shapes), int(shapes[:, 0].max()), int(shapes[:, 1].max()), 3)

    def __len__(self) -> int:
        return len(self.shapes)

    def image(self, i: int) -> np.ndarray:
        h, w = self.shapes[i]
        return self.flat[self.offsets[i]:self.offsets[i + 1]].reshape(h, w, 3)

    def __getitem__(self, index: Any) -> np.ndarray:
        if np.ndim(index) == 0:
            return self.image(int(index))
        index = np.arange(len(self))[index] if isinstance(index, slice) else np.asarray(index)
        h, w = self.shapes[index].max(0) if len(index) else (0, 0)
        out = np.zeros((len(index), h, w, 3), dtype=np.uint8)
        for k, i in enumerate(index):
            img = self.image(int(i))
            out[k, :img.shape[0], :img.shape[1]] = img
        return out


def summary_lines(info: dict[str, Any]) -> list[str]:
    """``mixer-ft data``'s text: what :meth:`ImageData.summary` holds, a line each, class counts included."""
    out: list[str] = []
    h, w = info["image_size"]
    out.append(f"{'source':<11} {one_line(info['source'])}")
    out.append(f"{'read from':<11} {one_line(info['location'])}")
    for split, n in info["splits"].items():
        out.append(f"{split:<11} {n:,} images")
    out.append(f"{'test split':<11} {info['test_from']}")
    if info["one_size"]:
        out.append(f"{'image size':<11} {h}x{w}")
    else:
        (lh, lw), _ = info["size_range"]
        out.append(f"{'image size':<11} heights {lh}-{h}, widths {lw}-{w} (each image kept at its own size)")
    names = [one_line(c) for c in info["classes"]]
    out.append(f"{'classes':<11} {len(names)}: {' '.join(names)}")
    counts = info["class_counts"]
    for name, shown in list(zip(info["classes"], names))[:20]:  # images of each class in each split
        out.append(f"  {shown:<{max(map(len, names[:20]))}}  " +
                   "  ".join(f"{split} {counts[split][name]:,}" for split in counts))
    if len(info["classes"]) > 20:
        out.append(f"  ... {len(info['classes']) - 20} more (--json lists every class)")
    if info["skipped"]:
        out.append(f"{'skipped':<11} {info['skipped']} image(s) that could not be decoded")
    if note := estimate_note(DataLoss.from_dict(info["data_loss"])):
        out.append(f"{'lost':<11} {note} (data_loss in --json names them)")
    return out
