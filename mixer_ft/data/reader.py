"""What every data source's reader is: it yields (split, class, image) and knows its class names."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mixer_ft.data.loss import DataLoss


class Reader:
    """Yields (split, class name or index, image) and knows the class names."""

    location: str
    classes: list[str] | None = None  # known up front, or collected while reading
    total: int | None = None  # images it will yield, once it knows
    test_from: str = "its test split"  # which split is reported as test, and why
    encoded_files: bool = False  # items are files' bytes: the cache may keep them encoded (data/encoded.py)

    @property
    def loss(self) -> DataLoss:
        """What reading the source lost: samples skipped, sources cut short (:mod:`mixer_ft.data.loss`)."""
        if "_loss" not in self.__dict__:
            self._loss = DataLoss()
        return self._loss

    def fingerprint(self) -> list[Any]:
        raise NotImplementedError

    def items(self) -> Iterator[tuple[str, str | int, Any]]:
        raise NotImplementedError


def file_fingerprint(path: Path) -> list[Any]:
    st = path.stat()
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


__all__ = ["Reader", "file_fingerprint"]
