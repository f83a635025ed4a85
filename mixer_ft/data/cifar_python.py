"""The official CIFAR-10/100 "python version": pickled batches, read with an unpickler that admits
only plain arrays, lists and strings, so a tampered archive cannot run code."""

from __future__ import annotations

import io
import pickle
import re
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mixer_ft.bounded import check_tar_end, open_tar, read_file
from mixer_ft.data.reader import Reader, file_fingerprint
from mixer_ft.errors import DataError, SourceError

BATCH_BYTES = 256 << 20  # one pickled batch (CIFAR's are 31 MB)


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


def is_cifar_python(path: Path) -> bool:
    name = path.name
    return bool(re.fullmatch(r"cifar-(10|100)-(python\.tar\.gz|batches-py|python)", name))


class CifarPythonReader(Reader):
    """The CIFAR-10/100 "python version" (pickled batches), as an archive or unpacked."""

    def __init__(self, path: Path) -> None:
        self.path, self.location = path, str(path)
        self.cifar100 = "cifar-100" in path.name
        self.files = ({"train": ["train"], "test": ["test"], "meta": "meta"} if self.cifar100 else
                      {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"],
                       "meta": "batches.meta"})

    def fingerprint(self) -> list[Any]:
        if self.path.is_file():
            return ["cifar-python", *file_fingerprint(self.path)]
        return ["cifar-python", *[file_fingerprint(p) for p in sorted(self.path.iterdir())]]

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
        try:
            if self.path.is_dir():
                return {n: read_file(self.path / n, str(self.path / n), BATCH_BYTES) for n in wanted
                        if (self.path / n).is_file()}
            with open_tar(path=self.path) as tar:
                blobs = {Path(m.name).name: tar.extractfile(m).read()  # type: ignore[union-attr]
                         for m in tar if m.isfile() and Path(m.name).name in wanted and m.size <= BATCH_BYTES}
                check_tar_end(tar, str(self.path))
                return blobs
        except (SourceError, tarfile.TarError, EOFError, OSError, zlib.error) as e:
            why = e.why if isinstance(e, SourceError) else f"{type(e).__name__}: {e}"
            raise DataError(f"{self.path} is truncated or not a tar.gz archive ({why}).") from None

    def items(self) -> Iterator[tuple[str, str | int, Any]]:
        try:
            yield from self._items()
        except (KeyError, ValueError, TypeError, AttributeError) as e:  # a pickle of the wrong shape or keys
            raise DataError(f"{self.path} is not a CIFAR python-version archive as published: its batches have the "
                            f"wrong keys or shapes ({type(e).__name__}: {str(e)[:200]}).") from None

    def _items(self) -> Iterator[tuple[str, str | int, Any]]:
        blobs = self._blobs()
        meta = self._load(self.files["meta"], blobs)
        names = meta["fine_label_names" if self.cifar100 else "label_names"]
        self.total = 60_000  # as published: 50,000 train and 10,000 test images
        self.classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
        for split in ("train", "test"):
            for name in self.files[split]:
                batch = self._load(name, blobs)
                labels = batch["fine_labels" if self.cifar100 else "labels"]
                data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
                for img, label in zip(data, labels):
                    yield split, int(label), img


__all__ = ["CifarPythonReader", "is_cifar_python"]
