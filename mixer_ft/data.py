"""Image classification data behind one ``--dataset`` value, decoded once into a uint8 cache.

Sources: ``cifar10`` / ``cifar100`` (the Hub copies through ``datasets``), ``hf:owner/name``
(any Hub image-classification set, or a local folder ``datasets`` can read), an image folder
(``train/<class>/*``, ``test/<class>/*``) or that folder as .tar/.tar.gz, and the official
CIFAR "python version" archives or folders.

Every image is decoded once into ``(N, H, W, 3)`` uint8 arrays stored as memory-mapped files in
the cache, so host RAM stays bounded whatever the data set's size and later runs start at once.
Cropping, resizing, flipping and scaling happen later, in batches, on the training device
(:mod:`mixer_ft.preprocess`). A corrupt image is skipped, counted and named in the log; a
source where nothing decodes is an error.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import pickle
import re
import shutil
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mixer_ft.config import MAX_SIDE, TEST_FRACTION
from mixer_ft.errors import ConfigError, DataError
from mixer_ft.images import to_rgb_array

log = logging.getLogger(__name__)

HUB_DATASETS = {  # --dataset name -> (Hub id, label column)
    "cifar10": ("uoft-cs/cifar10", "label"),
    "cifar100": ("uoft-cs/cifar100", "fine_label"),
}
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}
_CACHE_FORMAT = 3  # bump when the cache layout or decoding changes (3: images at their own bounded size)


def canonical_dataset(source: str, classes: list[str], n_test: int) -> str:
    """"cifar10"/"cifar100" for any copy of CIFAR (Hub, JPEG folder, python archive), else ``source``."""
    if source in HUB_DATASETS:
        return source
    if classes == CIFAR10_CLASSES and n_test == 10_000:
        return "cifar10"
    if len(classes) == 100 and n_test == 10_000 and re.search(r"cifar.?100", source, re.IGNORECASE):
        return "cifar100"
    return source


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
        sizes = {k: len(idx) for k, (_, idx) in self.splits(val_fraction, seed).items()}
        h, w = self.image_size
        return {"source": self.source, "location": self.location, "splits": sizes, "classes": self.classes,
                "image_size": [h, w], "one_size": all(e is None for e in self.extents.values()),
                "skipped": self.skipped, "test_from": self.test_from}


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
    reader = _reader(source, image_column, label_column, test_fraction)
    key = hashlib.sha1(json.dumps([_CACHE_FORMAT, reader.fingerprint(), store_size, max_side]).encode()).hexdigest()[:16]
    from mixer_ft.weights import cache_dir

    folder = cache_dir() / "data" / key
    if not (folder / "meta.json").is_file():
        _build_cache(reader, folder, store_size, max_side)
    return _open_cache(folder, source)


def _reader(source: str, image_column: str | None, label_column: str | None, test_fraction: float) -> _Reader:
    if source in HUB_DATASETS:
        repo, label = HUB_DATASETS[source]
        return _HubReader(repo, image_column or "img", label_column or label, alias=source)
    if source.startswith("hf:"):
        return _HubReader(source[3:], image_column, label_column)
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(
            f"No data set {source!r}: not a file or folder, and not one of {', '.join(HUB_DATASETS)} or "
            "'hf:owner/name'. Give an image folder (train/<class>/*, test/<class>/*), its .tar/.tar.gz, or a "
            "CIFAR python-version archive (cifar-10-python.tar.gz)."
        )
    if _is_cifar_python(path):
        return _CifarPythonReader(path)
    if path.is_dir() or zipfile.is_zipfile(path) or tarfile.is_tarfile(path):
        return _FolderReader(path, test_fraction)
    raise DataError(f"{path} is neither a folder nor a .tar, .tar.gz or .zip archive of an image folder.")


# --------------------------------------------------------------------------- readers


class _Reader:
    """Yields (split, class name or index, image) and knows the class names."""

    location: str
    classes: list[str] | None = None  # known up front, or collected while reading
    test_from: str = "its test split"  # which split is reported as test, and why

    def fingerprint(self) -> list[Any]:
        raise NotImplementedError

    def items(self) -> Iterator[tuple[str, str | int, Any]]:
        raise NotImplementedError


def _file_fingerprint(path: Path) -> list[Any]:
    st = path.stat()
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


# Split folder names, as image-folder data sets spell them; "validation" is reported when there is no "test".
_SPLITS = {"train": "train", "test": "test", "val": "validation", "valid": "validation", "validation": "validation"}


def _layout(names: list[str], test_fraction: float, where: str) -> tuple[dict[str, tuple[str, str]], str]:
    """{image name: (split, class)} for an image folder's file names, and which split is reported as test and why.

    ``train/<class>/*`` with ``test/`` or ``val/``/``validation/`` (test preferred); or, with no split
    folders, ``<class>/*`` with a seeded, stratified ``test_fraction`` of each class held out.
    """
    images = [n for n in names if Path(n).suffix.lower() in IMAGE_SUFFIXES]
    split_of = {n: (_SPLITS[p[-3].lower()], p[-2]) for n in images
                if len(p := Path(n).parts) >= 3 and p[-3].lower() in _SPLITS}
    if split_of:
        present = {s for s, _ in split_of.values()}
        test = "test" if "test" in present else "validation" if "validation" in present else None
        if test is None:
            raise DataError(f"{where} has a train/ folder but no test/, val/ or validation/ folder to report on; "
                            "add one, or put the class folders at the top to have a test split held out.")
        why = "its test/ folder" if test == "test" else "its validation folder (there is no test/ folder)"
        if test == "test" and "validation" in present:
            why += "; its validation folder is not used (the minival is cut from train, as upstream)"
        return {n: ("test" if s == test else s, c) for n, (s, c) in split_of.items() if s in ("train", test)}, why
    by_class: dict[str, list[str]] = {}
    for n in images:
        if len(Path(n).parts) >= 2:
            by_class.setdefault(Path(n).parts[-2], []).append(n)
    rng, out = np.random.default_rng(0), {}
    for cls in sorted(by_class):
        files = sorted(by_class[cls])
        held = {files[i] for i in rng.permutation(len(files))[: round(len(files) * test_fraction)]}
        out |= {f: ("test" if f in held else "train", cls) for f in files}
    return out, (f"no split folders: {test_fraction:.0%} of each class held out as the test split (seeded, "
                 "stratified; --test-fraction / recipe key test_fraction)")


class _FolderReader(_Reader):
    """An image folder, or one packed as .tar, .tar.gz or .zip (see :func:`_layout`)."""

    def __init__(self, path: Path, test_fraction: float = TEST_FRACTION) -> None:
        if not 0 < test_fraction < 1:
            raise ConfigError(f"test_fraction must be in (0, 1), got {test_fraction}.")
        self.path, self.location, self.test_fraction = path, str(path), test_fraction
        self.test_from = ""

    def fingerprint(self) -> list[Any]:
        if self.path.is_file():
            return ["folder-archive", *_file_fingerprint(self.path), self.test_fraction]
        files = sorted(p for p in self.path.rglob("*") if p.is_file())
        h = hashlib.sha1()
        for p in files:
            st = p.stat()
            h.update(f"{p.relative_to(self.path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return ["folder", str(self.path.resolve()), h.hexdigest(), self.test_fraction]

    def _damaged(self, e: BaseException) -> DataError:
        return DataError(f"{self.path} is truncated or damaged ({type(e).__name__}: {e}); download or copy it again.")

    def items(self) -> Iterator[tuple[str, str | int, Any]]:
        try:
            if self.path.is_dir():
                files = {str(p.relative_to(self.path)): p for p in sorted(self.path.rglob("*")) if p.is_file()}
                assign, self.test_from = _layout(list(files), self.test_fraction, self.location)
                for name, path in files.items():
                    if name in assign:
                        yield *assign[name], (str(path), path.read_bytes)
            elif zipfile.is_zipfile(self.path):
                with zipfile.ZipFile(self.path) as zf:
                    assign, self.test_from = _layout(zf.namelist(), self.test_fraction, self.location)
                    for name in zf.namelist():
                        if name in assign:  # read now: the archive closes when the last item is taken
                            data = zf.read(name)
                            yield *assign[name], (name, lambda d=data: d)
            else:
                with tarfile.open(self.path) as tar:  # names first, then the images in archive order
                    members = [m for m in tar.getmembers() if m.isfile()]
                    assign, self.test_from = _layout([m.name for m in members], self.test_fraction, self.location)
                    for m in members:
                        if m.name in assign:
                            data = tar.extractfile(m).read()  # type: ignore[union-attr]
                            yield *assign[m.name], (m.name, lambda d=data: d)
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, zlib.error) as e:
            raise self._damaged(e) from None


class _SafeUnpickler(pickle.Unpickler):
    """Admits only what the CIFAR python-version pickles hold: dicts, lists, strings, numbers,
    bytes and numpy arrays. Any other global (os.system, eval, ...) is refused before it runs."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if (module, name) == ("_codecs", "encode"):  # how protocol 2 spells bytes under Python 3
            import codecs

            return codecs.encode
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            try:
                from numpy._core.multiarray import _reconstruct  # numpy >= 2
            except ImportError:
                from numpy.core.multiarray import _reconstruct
            return _reconstruct
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")


def _is_cifar_python(path: Path) -> bool:
    name = path.name
    return bool(re.fullmatch(r"cifar-(10|100)-(python\.tar\.gz|batches-py|python)", name))


class _CifarPythonReader(_Reader):
    """The CIFAR-10/100 "python version" (pickled batches), as an archive or unpacked."""

    def __init__(self, path: Path) -> None:
        self.path, self.location = path, str(path)
        self.cifar100 = "cifar-100" in path.name
        self.files = ({"train": ["train"], "test": ["test"], "meta": "meta"} if self.cifar100 else
                      {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"],
                       "meta": "batches.meta"})

    def fingerprint(self) -> list[Any]:
        if self.path.is_file():
            return ["cifar-python", *_file_fingerprint(self.path)]
        return ["cifar-python", *[_file_fingerprint(p) for p in sorted(self.path.iterdir())]]

    def _load(self, name: str, blobs: dict[str, bytes]) -> dict[str, Any]:
        data = blobs.get(name)
        if data is None:
            raise DataError(f"{self.path} lacks {name!r}: not a complete CIFAR python-version archive.")
        try:
            obj = _SafeUnpickler(io.BytesIO(data), encoding="latin1").load()
        except pickle.UnpicklingError as e:
            raise DataError(
                f"Refusing {self.path} ({name}): its pickle asks for something other than plain arrays and "
                f"lists ({e}), which could run code. Download the archive again from the CIFAR page."
            ) from None
        except Exception as e:  # noqa: BLE001 - truncated or garbled pickle data
            raise DataError(f"{self.path} ({name}) is corrupt ({type(e).__name__}: {e}).") from None
        return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}

    def _blobs(self) -> dict[str, bytes]:
        wanted = {*self.files["train"], *self.files["test"], self.files["meta"]}
        if self.path.is_dir():
            return {n: (self.path / n).read_bytes() for n in wanted if (self.path / n).is_file()}
        try:
            with tarfile.open(self.path) as tar:
                return {Path(m.name).name: tar.extractfile(m).read() for m in tar  # type: ignore[union-attr]
                        if m.isfile() and Path(m.name).name in wanted}
        except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
            raise DataError(f"{self.path} is truncated or not a tar.gz archive ({type(e).__name__}: {e}).") from None

    def items(self) -> Iterator[tuple[str, str | int, Any]]:
        blobs = self._blobs()
        meta = self._load(self.files["meta"], blobs)
        names = meta["fine_label_names" if self.cifar100 else "label_names"]
        self.classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
        for split in ("train", "test"):
            for name in self.files[split]:
                batch = self._load(name, blobs)
                labels = batch["fine_labels" if self.cifar100 else "labels"]
                data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
                for img, label in zip(data, labels):
                    yield split, int(label), img


class _HubReader(_Reader):
    """A Hugging Face ``datasets`` image classification set (Hub id or local folder)."""

    def __init__(self, repo: str, image_column: str | None, label_column: str | None, alias: str = "") -> None:
        self.repo, self.image_column, self.label_column, self.alias = repo, image_column, label_column, alias
        self.location = f"hf:{repo}"
        self._ds: Any = None

    def _dataset(self) -> Any:
        if self._ds is None:
            import datasets

            try:
                self._ds = datasets.load_dataset(self.repo)
            except Exception as e:  # noqa: BLE001 - offline, not found, bad format: all say the same
                raise self._unavailable(e) from None
        return self._ds

    def _unavailable(self, e: Exception) -> DataError:
        from datasets import config

        alt = ""
        if self.alias:
            n = self.alias.removeprefix("cifar")
            alt = (f" Or download cifar-{n}-python.tar.gz from the CIFAR page "
                   f"(https://www.cs.toronto.edu/~kriz/cifar.html) and pass --dataset path/to/cifar-{n}-python.tar.gz.")
        return DataError(
            f"Could not load {self.repo} through `datasets` ({type(e).__name__}: {e}). If this machine is "
            f"offline, run `python -c \"import datasets; datasets.load_dataset('{self.repo}')\"` on one with "
            f"internet and copy its datasets cache into {config.HF_DATASETS_CACHE} (HF_DATASETS_CACHE).{alt}"
        )

    def fingerprint(self) -> list[Any]:
        ds = self._dataset()
        return ["hf", self.repo, self.image_column, self.label_column,
                {k: v._fingerprint for k, v in sorted(ds.items())}]

    def _columns(self, features: Any) -> tuple[str, str]:
        from datasets import ClassLabel, Image, Value

        image = self.image_column or next((k for k, f in features.items() if isinstance(f, Image)), None)
        label = self.label_column or next((k for k, f in features.items() if isinstance(f, ClassLabel)), None)
        label = label or next((k for k in ("label", "labels", "fine_label") if k in features), None)
        cols = ", ".join(f"{k} ({type(f).__name__})" for k, f in features.items())
        if image not in features or not isinstance(features[image], Image):
            raise DataError(f"{self.repo}: no image column found (columns: {cols}); pass --image-column.")
        if label not in features:
            raise DataError(f"{self.repo}: no label column found (columns: {cols}); pass --label-column.")
        f = features[label]
        if not (isinstance(f, ClassLabel) or (isinstance(f, Value) and f.dtype.startswith(("int", "uint")))):
            raise DataError(
                f"{self.repo}: label column {label!r} is {f}, not an integer or class label. Pass "
                f"--label-column naming an integer or ClassLabel column (columns: {cols})."
            )
        return image, label

    def items(self) -> Iterator[tuple[str, str | int, Any]]:
        ds = self._dataset()
        test = "test" if "test" in ds else "validation" if "validation" in ds else None
        self.test_from = f"its {test} split" + (" (it has no test split)" if test == "validation" else "")
        if "train" not in ds or test is None:
            raise DataError(f"{self.repo} needs a train split and a test (or validation) split; it has "
                            f"{', '.join(ds)}.")
        image, label = self._columns(ds["train"].features)
        f = ds["train"].features[label]
        if hasattr(f, "names"):
            self.classes = list(f.names)
        else:
            n = max(int(max(ds[s][label])) for s in ("train", test)) + 1
            self.classes = [str(i) for i in range(n)]
        for split, name in (("train", "train"), ("test", test)):
            for i, row in enumerate(ds[name].select_columns([image, label])):
                yield split, int(row[label]), (f"{name}[{i}]", lambda im=row[image]: im)


# --------------------------------------------------------------------------- the cache


def decode_workers() -> int:
    """Processes that decode images into the cache: ``$MIXER_FT_WORKERS``, else one per core."""
    try:
        return max(1, int(os.environ.get("MIXER_FT_WORKERS") or os.cpu_count() or 1))
    except ValueError:
        raise ConfigError(f"MIXER_FT_WORKERS must be a whole number, got {os.environ['MIXER_FT_WORKERS']!r}.") from None


def _read(item: Any) -> Any:
    """An item's bytes (or PIL image, or array), read here; a file that cannot be read becomes an error."""
    if isinstance(item, np.ndarray):
        return item
    try:
        return item[1]()
    except OSError as e:
        return OSError(e.strerror or str(e))


def _decode(payload: tuple[Any, tuple[int, int] | None, int]) -> np.ndarray | str:
    """One image (bytes, a PIL image or an array) decoded, or why it could not be (a worker process runs this)."""
    from PIL import UnidentifiedImageError

    data, size, max_side = payload
    if isinstance(data, OSError):
        return f"unreadable: {data}"
    try:
        return to_rgb_array(data if isinstance(data, np.ndarray) else ("", lambda: data), size, max_side=max_side)
    except UnidentifiedImageError:
        return "not an image"
    except (OSError, ValueError, SyntaxError) as e:
        return type(e).__name__


def _decoded(reader: _Reader, size: tuple[int, int] | None,
             max_side: int) -> Iterator[tuple[str, str | int, str, np.ndarray | str]]:
    """(split, label, name, image or why not) for each image of ``reader``, in order.

    Encoded images are decoded in worker processes, a bounded window of them at a time, so host
    memory stays bounded; a progress bar shows images done and images/s.
    """
    import itertools
    import multiprocessing

    from tqdm.auto import tqdm

    workers = decode_workers() if "fork" in multiprocessing.get_all_start_methods() else 1
    items = reader.items()
    pool = multiprocessing.get_context("fork").Pool(workers) if workers > 1 else None
    try:
        with tqdm(desc=f"decoding {Path(reader.location).name}", unit="img", disable=None, leave=False) as bar:
            while window := list(itertools.islice(items, 64 * workers)):
                payloads = [(_read(item), size, max_side) for _, _, item in window]
                results = pool.map(_decode, payloads, chunksize=4) if pool else map(_decode, payloads)
                for (split, label, item), arr in zip(window, results):
                    yield split, label, "array" if isinstance(item, np.ndarray) else item[0], arr
                    bar.update(1)
    finally:
        if pool:
            pool.terminate()


def _decode_all(reader: _Reader, tmp: Path, size: tuple[int, int] | None,
                max_side: int) -> tuple[dict[str, list], dict[str, np.ndarray], int]:
    """Decode every image of ``reader`` into tmp/<split>.u8, one after another at its own (bounded) size.

    Returns (labels by split, (h, w) of each image by split, images skipped).
    """
    labels: dict[str, list] = {"train": [], "test": []}
    shapes: dict[str, list] = {"train": [], "test": []}
    skipped = []
    with open(tmp / "train.u8", "wb") as train, open(tmp / "test.u8", "wb") as test:
        outs = {"train": train, "test": test}
        for split, label, name, arr in _decoded(reader, size, max_side):
            if isinstance(arr, str):
                skipped.append(f"{name} ({arr})")
                continue
            outs[split].write(arr.tobytes())
            labels[split].append(label)
            shapes[split].append(arr.shape[:2])
    if skipped:
        log.warning("skipped %d image(s) that could not be decoded: %s%s", len(skipped),
                    ", ".join(skipped[:5]), ", ..." if len(skipped) > 5 else "")
    for split in ("train", "test"):
        if not labels[split]:
            bad = f" ({len(skipped)} could not be decoded)" if skipped else ""
            raise DataError(
                f"{reader.location} has no {split} images{bad}. Expected the image-folder layout "
                f"{split}/<class>/<image> (e.g. {split}/cat/0001.jpg), a CIFAR python-version archive, "
                f"or a Hub data set with train and test splits."
            )
    return labels, {k: np.array(v, dtype=np.int64).reshape(-1, 2) for k, v in shapes.items()}, len(skipped)


def _label_ids(reader: _Reader, labels: dict[str, list]) -> tuple[list[str], dict[str, np.ndarray]]:
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


def _build_cache(reader: _Reader, folder: Path, store_size: int | None, max_side: int) -> None:
    """Decode every image once into raw uint8 files, written beside and renamed into place."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        labels, shapes, skipped = _decode_all(reader, tmp, (store_size, store_size) if store_size else None, max_side)
        classes, ids = _label_ids(reader, labels)
        for split, split_ids in ids.items():
            np.save(tmp / f"{split}_labels.npy", split_ids)
            np.save(tmp / f"{split}_shapes.npy", shapes[split])
        size = np.concatenate(list(shapes.values())).max(0).tolist()
        meta = {"format": _CACHE_FORMAT, "location": reader.location, "classes": classes, "size": size,
                "counts": {s: len(v) for s, v in ids.items()}, "skipped": skipped, "test_from": reader.test_from}
        (tmp / "meta.json").write_text(json.dumps(meta))  # written last: its presence marks a whole cache
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _open_cache(folder: Path, source: str) -> ImageData:
    meta = json.loads((folder / "meta.json").read_text())
    images, extents = {}, {}
    for split, n in meta["counts"].items():
        shapes = np.load(folder / f"{split}_shapes.npy")
        flat = np.memmap(folder / f"{split}.u8", dtype=np.uint8, mode="r")
        if (shapes == shapes[0]).all():  # one size for all (CIFAR): a plain (N, H, W, 3) array
            images[split], extents[split] = flat.reshape(n, *shapes[0], 3), None
        else:
            images[split], extents[split] = RaggedImages(flat, shapes), shapes
    labels = {s: np.load(folder / f"{s}_labels.npy") for s in meta["counts"]}
    return ImageData(source, meta["location"], meta["classes"], images, labels,  # type: ignore[arg-type]
                     meta["skipped"], meta.get("test_from", ""), extents)


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
