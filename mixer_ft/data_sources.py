"""Where images come from: one class per kind of ``--dataset`` value, and the registry that picks one.

Kinds: ``cifar10`` / ``cifar100`` (the Hub copies through ``datasets``), ``hf:owner/name`` (any Hub
image-classification set, or a local folder ``datasets`` can read), the official CIFAR "python
version" archives or folders, and an image folder (``train/<class>/*``, ``test/<class>/*``, or plain
``<class>/*``) or that folder as .tar/.tar.gz/.zip.

Each kind answers: is this string mine (:meth:`DataSource.matches`), what is missing for it on this
machine (:meth:`DataSource.missing`, asked by :mod:`mixer_ft.preflight`), which Hub data set it is
(:meth:`DataSource.hub_id`, for the model card), and a reader of its images
(:meth:`DataSource.reader`), which :mod:`mixer_ft.data` decodes into the cache. A new kind of source
is one reader class here plus one entry in :data:`DATA_SOURCES`.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import re
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mixer_ft.config import TEST_FRACTION
from mixer_ft.errors import ConfigError, DataError

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


class _FolderReader(Reader):
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


class _CifarPythonReader(Reader):
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


class _HubReader(Reader):
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


# --------------------------------------------------------------------------- the registry


def _datasets_cached(repo: str) -> bool:
    from datasets import config

    from mixer_ft.downloads import hub_cache

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
        return _HubReader(source[3:], image_column, label_column)

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
        return _HubReader(repo, image_column or "img", label_column or label, alias=source)

    def _alternative(self, source: str) -> str:
        n = source.removeprefix("cifar")
        return (f"; or download cifar-{n}-python.tar.gz from the CIFAR page and pass --dataset "
                f"path/to/cifar-{n}-python.tar.gz")


class CifarPython(DataSource):
    """The official CIFAR python version: ``cifar-10-python.tar.gz``, ``cifar-10-batches-py/``, ..."""

    def matches(self, source: str) -> bool:
        path = Path(source).expanduser()
        return path.exists() and _is_cifar_python(path)

    def reader(self, source: str, image_column: str | None, label_column: str | None,
               test_fraction: float) -> Reader:
        return _CifarPythonReader(Path(source).expanduser())


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
