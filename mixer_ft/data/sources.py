"""Where images come from: one class per kind of ``--dataset`` value, and the registry that picks one.

Kinds: ``cifar10`` / ``cifar100`` (the Hub copies through ``datasets``), ``hf:owner/name`` (any Hub
image-classification set, or a local folder ``datasets`` can read), the official CIFAR "python
version" archives or folders, and an image folder (``train/<class>/*``, ``test/<class>/*``, or plain
``<class>/*``) or that folder as .tar/.tar.gz/.zip.

Each kind answers: is this string mine (:meth:`DataSource.matches`), what is missing for it on this
machine (:meth:`DataSource.missing`, asked by :mod:`mixer_ft.train.preflight`), which Hub data set it is
(:meth:`DataSource.hub_id`, for the model card), and a reader of its images
(:meth:`DataSource.reader`), which :mod:`mixer_ft.data.cache` decodes into the cache. A new kind of source
is one reader class here plus one entry in :data:`DATA_SOURCES`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mixer_ft.data.images import MAX_FILE_BYTES, printable
from mixer_ft.errors import ConfigError, DataError
from mixer_ft.model.config import TEST_FRACTION

log = logging.getLogger(__name__)
HUB_DATASETS = {  # --dataset name -> (Hub id, label column)
    "cifar10": ("uoft-cs/cifar10", "label"),
    "cifar100": ("uoft-cs/cifar100", "fine_label"),
}
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}

# --------------------------------------------------------------------------- readers


class Reader:
    """Yields (split, class name or index, image) and knows the class names."""

    location: str
    classes: list[str] | None = None  # known up front, or collected while reading
    total: int | None = None  # images it will yield, once it knows
    test_from: str = "its test split"  # which split is reported as test, and why

    def fingerprint(self) -> list[Any]:
        raise NotImplementedError

    def items(self) -> Iterator[tuple[str, str | int, Any]]:
        raise NotImplementedError


def file_fingerprint(path: Path) -> list[Any]:
    st = path.stat()
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


# Split folder names, as image-folder data sets spell them; "validation" is reported when there is no "test".
_SPLITS = {"train": "train", "test": "test", "val": "validation", "valid": "validation", "validation": "validation"}


def _split_at(parts: tuple[str, ...]) -> int | None:
    """Index of the first split folder (train/, test/, val/, ...) on an image's path that has a class
    folder below it; None when there is none."""
    return next((i for i, p in enumerate(parts[:-2]) if p.lower() in _SPLITS), None)


def _check_classes(classes: set[str], where: str) -> None:
    """Class folders that differ only by case are one class spelt twice: refuse, naming them."""
    folded: dict[str, list[str]] = {}
    for c in classes:
        folded.setdefault(c.casefold(), []).append(c)
    twins = [sorted(v) for v in folded.values() if len(v) > 1]
    if twins:
        raise DataError(f"{where} has class folders that differ only by case: "
                        f"{'; '.join(' and '.join(repr(c) for c in t) for t in sorted(twins))}. Merge or rename them.")


def _layout(names: list[str], test_fraction: float, where: str) -> tuple[dict[str, tuple[str, str]], str]:
    """{image name: (split, class)} for an image folder's file names, and which split is reported as test and why.

    ``train/<class>/...`` with ``test/`` or ``val/``/``validation/`` (test preferred); or, with no split
    folders, ``<class>/...`` with a seeded, stratified ``test_fraction`` of each class held out. The class
    is the first folder under the split folder (or under the folder all images share): images in
    sub-folders of a class belong to it.
    """
    images = [n for n in names if Path(n).suffix.lower() in IMAGE_SUFFIXES]
    split_of = {}
    for n in images:
        parts = Path(n).parts
        if (i := _split_at(parts)) is not None:
            split_of[n] = (_SPLITS[parts[i].lower()], printable(parts[i + 1]))
    if split_of:
        present = {s for s, _ in split_of.values()}
        test = "test" if "test" in present else "validation" if "validation" in present else None
        if test is None:
            raise DataError(f"{where} has a train/ folder but no test/, val/ or validation/ folder to report on; "
                            "add one, or put the class folders at the top to have a test split held out.")
        if outside := len(images) - len(split_of):
            log.warning("%s: %d image(s) outside the split folders are not used", where, outside)
        _check_classes({c for _, c in split_of.values()}, where)
        why = "its test/ folder" if test == "test" else "its validation folder (there is no test/ folder)"
        if test == "test" and "validation" in present:
            why += "; its validation folder is not used (the minival is cut from train, as upstream)"
        return {n: ("test" if s == test else s, c) for n, (s, c) in split_of.items() if s in ("train", test)}, why
    # Plain class folders: drop the folders every image shares (an archive's top folder), then the
    # first folder left is the class.
    dirs = [Path(n).parts[:-1] for n in images]
    common = 0
    while dirs and all(len(d) > common and d[common] == dirs[0][common] for d in dirs):
        common += 1
    by_class: dict[str, list[str]] = {}
    for n, d in zip(images, dirs):
        if len(d) > common:
            by_class.setdefault(printable(d[common]), []).append(n)
    if loose := sum(len(d) == common for d in dirs):
        log.warning("%s: %d image(s) outside the class folders are not used", where, loose)
    _check_classes(set(by_class), where)
    rng, out = np.random.default_rng(0), {}
    for cls in sorted(by_class):
        files = sorted(by_class[cls])
        held = {files[i] for i in rng.permutation(len(files))[: round(len(files) * test_fraction)]}
        out |= {f: ("test" if f in held else "train", cls) for f in files}
    return out, (f"no split folders: {test_fraction:.0%} of each class held out as the test split (seeded, "
                 "stratified; --test-fraction / recipe key test_fraction)")


def _capped(size: int, read: Callable[[], bytes]) -> Callable[[], bytes]:
    """``read``, unless the file is larger than an image may be: then a getter that says so, unread."""
    if size <= MAX_FILE_BYTES:
        return read

    def refuse() -> bytes:
        raise OSError(f"{size:,} bytes, more than the {MAX_FILE_BYTES >> 20} MiB an image file may have")
    return refuse


def _taken(get: Callable[[], bytes]) -> Callable[[], bytes]:
    """Read an archive member now (the archive closes when the last item is taken); its error later."""
    try:
        data = get()
    except OSError as e:
        err = e

        def fail() -> bytes:
            raise err
        return fail
    return lambda: data


class _FolderReader(Reader):
    """An image folder, or one packed as .tar, .tar.gz or .zip (see :func:`_layout`)."""

    def __init__(self, path: Path, test_fraction: float = TEST_FRACTION) -> None:
        if not 0 < test_fraction < 1:
            raise ConfigError(f"test_fraction must be in (0, 1), got {test_fraction}.")
        self.path, self.location, self.test_fraction = path, str(path), test_fraction
        self.test_from = ""

    def names(self) -> list[str]:
        """The file names it holds, read from the folder or the archive's index (no image is read)."""
        try:
            if self.path.is_dir():
                return [str(p.relative_to(self.path)) for p in sorted(self.path.rglob("*")) if p.is_file()]
            if zipfile.is_zipfile(self.path):
                with zipfile.ZipFile(self.path) as zf:
                    return zf.namelist()
            with tarfile.open(self.path) as tar:
                return [m.name for m in tar.getmembers() if m.isfile()]
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, zlib.error) as e:
            raise self._damaged(e) from None

    def fingerprint(self) -> list[Any]:
        if self.path.is_file():
            return ["folder-archive", *file_fingerprint(self.path), self.test_fraction]
        files = sorted(p for p in self.path.rglob("*") if p.is_file())
        h = hashlib.sha1()
        for p in files:
            st = p.stat()
            h.update(os.fsencode(p.relative_to(self.path)) + f"\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return ["folder", str(self.path.resolve()), h.hexdigest(), self.test_fraction]

    def _damaged(self, e: BaseException) -> DataError:
        return DataError(f"{self.path} is truncated or damaged ({type(e).__name__}: {e}); download or copy it again.")

    def items(self) -> Iterator[tuple[str, str | int, Any]]:
        try:
            if self.path.is_dir():
                files = {str(p.relative_to(self.path)): p for p in sorted(self.path.rglob("*")) if p.is_file()}
                assign, self.test_from = _layout(list(files), self.test_fraction, self.location)
                self.total = len(assign)
                for name, path in files.items():
                    if name in assign:
                        yield *assign[name], (printable(str(path)), _capped(path.stat().st_size, path.read_bytes))
            elif zipfile.is_zipfile(self.path):
                with zipfile.ZipFile(self.path) as zf:
                    assign, self.test_from = _layout(zf.namelist(), self.test_fraction, self.location)
                    self.total = len(assign)
                    for info in zf.infolist():
                        if info.filename in assign:  # read now: the archive closes when the last item is taken
                            get = _capped(info.file_size, lambda i=info: zf.read(i))
                            yield *assign[info.filename], (printable(info.filename), _taken(get))
            else:
                with tarfile.open(self.path) as tar:  # names first, then the images in archive order
                    members = [m for m in tar.getmembers() if m.isfile()]
                    assign, self.test_from = _layout([m.name for m in members], self.test_fraction, self.location)
                    self.total = len(assign)
                    for m in members:
                        if m.name in assign:
                            get = _capped(m.size, lambda m=m: tar.extractfile(m).read())  # type: ignore[union-attr]
                            yield *assign[m.name], (printable(m.name), _taken(get))
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, zlib.error) as e:
            raise self._damaged(e) from None


# --------------------------------------------------------------------------- the registry


def _datasets_cached(repo: str) -> bool:
    from datasets import config

    from mixer_ft.weights.downloads import hub_cache

    org, _, name = repo.partition("/")
    return (Path(config.HF_DATASETS_CACHE) / f"{org}___{name}").is_dir() or \
        (Path(hub_cache()) / f"datasets--{org}--{name}").is_dir()


class DataSource:
    """One kind of ``--dataset`` value. Subclasses answer for the strings they match."""

    def matches(self, source: str) -> bool:
        """Whether ``source`` is this kind's."""
        raise NotImplementedError

    def reader(self, source: str, image_column: str | None, label_column: str | None,
               test_fraction: float) -> Reader:
        """A reader of the source's images."""
        raise NotImplementedError

    def missing(self, source: str, online: bool) -> str | None:
        """Why the data cannot be had on this machine, with where to put it; None when it can."""
        return None

    def hub_id(self, source: str) -> str | None:
        """The Hugging Face Hub data set this source is, if it is one."""
        return None


class HubDataSet(DataSource):
    """``hf:owner/name`` through ``datasets`` (image and label columns found by type, or named)."""

    def matches(self, source: str) -> bool:
        return source.startswith("hf:")

    def hub_id(self, source: str) -> str | None:
        return source[3:]

    def reader(self, source: str, image_column: str | None, label_column: str | None,
               test_fraction: float) -> Reader:
        from mixer_ft.data.hub import HubReader

        return HubReader(source[3:], image_column, label_column)

    def missing(self, source: str, online: bool) -> str | None:
        repo = self.hub_id(source)
        if online or Path(repo).exists() or _datasets_cached(repo):
            return None
        return (f"the data set {source} ({repo}): not in the datasets cache; run `python -c \"import datasets; "
                f"datasets.load_dataset('{repo}')\"` on a machine with internet and copy its cache here"
                + self._alternative(source))

    def _alternative(self, source: str) -> str:
        return ""


class NamedHubDataSet(HubDataSet):
    """``cifar10`` / ``cifar100``: the Hub copies ``uoft-cs/cifar10`` and ``uoft-cs/cifar100`` (fine labels)."""

    def matches(self, source: str) -> bool:
        return source in HUB_DATASETS

    def hub_id(self, source: str) -> str | None:
        return HUB_DATASETS[source][0]

    def reader(self, source: str, image_column: str | None, label_column: str | None,
               test_fraction: float) -> Reader:
        repo, label = HUB_DATASETS[source]
        from mixer_ft.data.hub import HubReader

        return HubReader(repo, image_column or "img", label_column or label, alias=source)

    def _alternative(self, source: str) -> str:
        n = source.removeprefix("cifar")
        return (f"; or download cifar-{n}-python.tar.gz from the CIFAR page and pass --dataset "
                f"path/to/cifar-{n}-python.tar.gz")


class CifarPython(DataSource):
    """The official CIFAR python version: ``cifar-10-python.tar.gz``, ``cifar-10-batches-py/``, ..."""

    def matches(self, source: str) -> bool:
        path = Path(source).expanduser()
        from mixer_ft.data.cifar_python import is_cifar_python

        return path.exists() and is_cifar_python(path)

    def reader(self, source: str, image_column: str | None, label_column: str | None,
               test_fraction: float) -> Reader:
        from mixer_ft.data.cifar_python import CifarPythonReader

        return CifarPythonReader(Path(source).expanduser())


class ImageFolder(DataSource):
    """An image folder, or that folder as a .tar, .tar.gz or .zip archive."""

    def matches(self, source: str) -> bool:
        return Path(source).expanduser().exists()

    def reader(self, source: str, image_column: str | None, label_column: str | None,
               test_fraction: float) -> Reader:
        path = Path(source).expanduser()
        if path.is_dir() or zipfile.is_zipfile(path) or tarfile.is_tarfile(path):
            return _FolderReader(path, test_fraction)
        raise DataError(f"{path} is neither a folder nor a .tar, .tar.gz or .zip archive of an image folder.")


# Asked in order; the first that matches answers. A new kind of source is one class and one entry.
DATA_SOURCES: list[DataSource] = [NamedHubDataSet(), HubDataSet(), CifarPython(), ImageFolder()]


def data_source_of(source: str) -> DataSource | None:
    """The kind of data source ``source`` is; None when it is none (no such file or folder either)."""
    return next((kind for kind in DATA_SOURCES if kind.matches(source)), None)


def open_reader(source: str, image_column: str | None = None, label_column: str | None = None,
                test_fraction: float = TEST_FRACTION) -> Reader:
    """A reader for ``source``.

    Raises:
        DataError: no kind of data source takes ``source``.
    """
    kind = data_source_of(source)
    if kind is None:
        raise DataError(
            f"No data set {source!r}: not a file or folder, and not one of {', '.join(HUB_DATASETS)} or "
            "'hf:owner/name'. Give an image folder (train/<class>/*, test/<class>/*), its .tar/.tar.gz, or a "
            "CIFAR python-version archive (cifar-10-python.tar.gz)."
        )
    return kind.reader(source, image_column, label_column, test_fraction)


def listed_train_images(source: str, test_fraction: float = TEST_FRACTION) -> int | None:
    """The training images of ``source`` counted without decoding any (an image folder's listing, the
    CIFAR archives' published 50,000); None where only loading it tells (a Hub data set)."""
    reader = open_reader(source, test_fraction=test_fraction)
    if isinstance(reader, _FolderReader):
        assign, _ = _layout(reader.names(), test_fraction, reader.location)
        return sum(split == "train" for split, _ in assign.values())
    from mixer_ft.data.hub import HubReader

    if isinstance(reader, HubReader):
        return 50_000 if reader.alias else None  # cifar10 and cifar100 are published with 50,000
    return 50_000


def missing_data(source: str, online: bool) -> str | None:
    """Why the data set ``source`` cannot be had on this machine, with where to put it; None when it can."""
    kind = data_source_of(source)
    if kind is None:
        return (f"the data set {source}: no such file or folder (--dataset takes {', '.join(HUB_DATASETS)}, "
                "hf:owner/name, an image folder or its archive, or a CIFAR python-version archive)")
    return kind.missing(source, online)


def hub_dataset_id(source: Any) -> str | None:
    """The Hub data set a ``--dataset`` value names (``cifar10`` -> ``uoft-cs/cifar10``), else None."""
    kind = data_source_of(source) if isinstance(source, str) and source else None
    return kind.hub_id(source) if kind else None


__all__ = ["CIFAR10_CLASSES", "DATA_SOURCES", "DataSource", "HUB_DATASETS", "IMAGE_SUFFIXES", "Reader",
           "data_source_of", "hub_dataset_id", "missing_data", "open_reader"]
