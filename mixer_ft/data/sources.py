"""Where images come from: one class per kind of ``--dataset`` value, and the registry that picks one.

Kinds: ``cifar10`` / ``cifar100`` (the Hub copies through ``datasets``), ``hf:owner/name`` (any Hub
image-classification set, or a local folder ``datasets`` can read), the official CIFAR "python
version" archives or folders, and an image folder (``train/<class>/*``, ``test/<class>/*``, or plain
``<class>/*``) or that folder as .tar/.tar.gz/.zip, and a folder of webdataset tar shards.

Each kind answers: is this string mine (:meth:`DataSource.matches`), what is missing for it on this
machine (:meth:`DataSource.missing`, asked by :mod:`mixer_ft.train.preflight`), which Hub data set it is
(:meth:`DataSource.hub_id`, for the model card), and a reader of its images
(:meth:`DataSource.reader`), which :mod:`mixer_ft.data.cache` decodes into the cache. A new kind of source
is one reader class (a :class:`~mixer_ft.data.reader.Reader`) in a module of its own plus one class and
one entry in :data:`DATA_SOURCES` here.
"""

from __future__ import annotations

import tarfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mixer_ft.data.folder import IMAGE_SUFFIXES, FolderReader
from mixer_ft.data.names import CIFAR10_CLASSES, HUB_DATASETS, is_url
from mixer_ft.data.reader import Reader
from mixer_ft.errors import ConfigError, DataError
from mixer_ft.gate import check_path, looks_local, no_such
from mixer_ft.model.config import TEST_FRACTION
from mixer_ft.text import get_logger

if TYPE_CHECKING:
    from mixer_ft.data.stream import StreamedSet

log = get_logger(__name__)

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

    def stream(self, source: str, image_column: str | None, label_column: str | None) -> StreamedSet:
        """The source as a stream, read as a run trains (:mod:`mixer_ft.data.stream`), where it can be one."""
        raise ConfigError(f"--streaming reads webdataset shards (a folder or URL pattern) or hf:owner/name; {source} is "
                          "neither. An image folder or archive is read into the data cache: leave --streaming out.")

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

    def stream(self, source: str, image_column: str | None, label_column: str | None) -> StreamedSet:
        from mixer_ft.data.hub import hub_stream

        repo, label = HUB_DATASETS.get(source, (self.hub_id(source), None))
        return hub_stream(repo, image_column, label_column or label, source)

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


class WebDatasetShards(DataSource):
    """A folder of webdataset tar shards: ``train-*.tar``, ``test-*.tar`` or ``validation-*.tar``, ``classes.txt``."""

    def matches(self, source: str) -> bool:
        from mixer_ft.data.shards import is_shard_folder

        return is_shard_folder(Path(source).expanduser())

    def reader(self, source: str, image_column: str | None, label_column: str | None,
               test_fraction: float) -> Reader:
        from mixer_ft.data.shards import ShardReader

        return ShardReader(Path(source).expanduser())

    def stream(self, source: str, image_column: str | None, label_column: str | None) -> StreamedSet:
        from mixer_ft.data.stream import shard_stream

        return shard_stream(source)


class ShardURLs(WebDatasetShards):
    """Webdataset shards on a server: a URL pattern (``https://host/{train-{0000..0099},test-0000}.tar``), streamed
    (as a shard folder with ``--streaming``), never cached."""

    def matches(self, source: str) -> bool:
        return is_url(source)

    def reader(self, source: str, image_column: str | None, label_column: str | None,
               test_fraction: float) -> Reader:
        raise ConfigError(f"{source} is read as a stream while a run trains (mixer-ft finetune --dataset '{source}'), "
                          "never into the data cache; to cache the shards, download them into a folder and give that.")


class ImageFolder(DataSource):
    """An image folder, or that folder as a .tar, .tar.gz or .zip archive."""

    def matches(self, source: str) -> bool:
        return Path(source).expanduser().exists()

    def reader(self, source: str, image_column: str | None, label_column: str | None,
               test_fraction: float) -> Reader:
        path = Path(source).expanduser()
        if path.is_dir() or zipfile.is_zipfile(path) or tarfile.is_tarfile(path):
            return FolderReader(path, test_fraction)
        raise DataError(f"{path} is neither a folder nor a .tar, .tar.gz or .zip archive of an image folder.")


# Asked in order; the first that matches answers. A new kind of source is one class and one entry.
DATA_SOURCES: list[DataSource] = [NamedHubDataSet(), HubDataSet(), ShardURLs(), CifarPython(), WebDatasetShards(),
                                  ImageFolder()]


def data_source_of(source: str) -> DataSource | None:
    """The kind of data source ``source`` is; None when it is none (no such file or folder either).

    Raises:
        ConfigError: a local path that is a FIFO, device or socket, or has an over-long name (the gate).
    """
    if not (source.startswith("hf:") or is_url(source)) and source not in HUB_DATASETS:
        path = check_path(Path(source).expanduser(), "data set")
        if looks_local(source) and not path.exists():  # a mistyped path is not an offline problem
            raise ConfigError(no_such(source, "data set"))
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


def open_stream(source: str, image_column: str | None = None, label_column: str | None = None) -> StreamedSet:
    """``source`` as a :class:`~mixer_ft.data.stream.StreamedSet`: ``hf:owner/name`` (and cifar10/cifar100) through
    ``datasets`` in streaming mode, webdataset shards (a folder or a URL pattern) shard by shard.

    Raises:
        ConfigError, DataError: the source cannot be streamed (an image folder or archive: it is cached instead).
    """
    kind = data_source_of(source)
    if kind is None:
        raise DataError(f"No data set {source!r}: not a file or folder, a shard URL, or 'hf:owner/name'.")
    return kind.stream(source, image_column, label_column)


def listed_train_images(source: str, test_fraction: float = TEST_FRACTION) -> int | None:
    """The training images of ``source`` counted without decoding any (an image folder's listing, the
    CIFAR archives' published 50,000); None where only loading it tells (a Hub data set)."""
    reader = open_reader(source, test_fraction=test_fraction)
    if isinstance(reader, FolderReader):
        return reader.count("train")
    from mixer_ft.data.hub import HubReader

    if isinstance(reader, HubReader):
        return 50_000 if reader.alias else None  # cifar10 and cifar100 are published with 50,000
    from mixer_ft.data.cifar_python import CifarPythonReader

    return 50_000 if isinstance(reader, CifarPythonReader) else None  # shards: only reading them tells


def missing_data(source: str, online: bool) -> str | None:
    """Why the data set ``source`` cannot be had on this machine, with where to put it; None when it can."""
    kind = data_source_of(source)
    if kind is None:
        return (f"the data set {source}: no such file or folder (--dataset takes {', '.join(HUB_DATASETS)}, "
                "hf:owner/name, an image folder or its archive, or a CIFAR python-version archive)")
    return kind.missing(source, online)


def check_outside_data(source: str, path: str | Path, what: str) -> None:
    """Refuse to write ``path`` inside the data folder ``source``: the next read of the data would take what was
    written (a plot, a run's files) for images, or a class.

    Raises:
        ConfigError: naming both.
    """
    data = Path(source).expanduser()
    if source.startswith("hf:") or is_url(source) or source in HUB_DATASETS or not data.is_dir():
        return
    if Path(path).expanduser().resolve().is_relative_to(data.resolve()):
        raise ConfigError(f"The {what} {path} is inside the data folder {source}: what is written there would be read "
                          "as data next time. Choose a folder outside it.")


def hub_dataset_id(source: Any) -> str | None:
    """The Hub data set a ``--dataset`` value names (``cifar10`` -> ``uoft-cs/cifar10``), else None."""
    kind = data_source_of(source) if isinstance(source, str) and source else None
    return kind.hub_id(source) if kind else None


__all__ = ["CIFAR10_CLASSES", "DATA_SOURCES", "check_outside_data", "DataSource", "HUB_DATASETS", "IMAGE_SUFFIXES", "Reader",
           "data_source_of", "hub_dataset_id", "missing_data", "open_reader", "open_stream"]
