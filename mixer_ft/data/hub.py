"""A Hugging Face ``datasets`` image-classification set (a Hub id or a local folder ``datasets`` reads):
image and label columns found by type or named, the test split (or validation) reported on."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from mixer_ft.data.reader import Reader
from mixer_ft.errors import DataError


class HubReader(Reader):
    """A Hugging Face ``datasets`` image classification set (Hub id or local folder)."""

    def __init__(self, repo: str, image_column: str | None, label_column: str | None, alias: str = "") -> None:
        self.repo, self.image_column, self.label_column, self.alias = repo, image_column, label_column, alias
        self.location = f"hf:{repo}"
        self._ds: Any = None

    def _dataset(self) -> Any:
        if self._ds is None:
            from mixer_ft.weights.downloads import hub_offline

            hub_offline()  # no Hub: datasets fails at once instead of retrying
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
        self.total = len(ds["train"]) + len(ds[test])
        f = ds["train"].features[label]
        if hasattr(f, "names"):
            self.classes = list(f.names)
        else:
            n = max(int(max(ds[s][label])) for s in ("train", test)) + 1
            self.classes = [str(i) for i in range(n)]
        for split, name in (("train", "train"), ("test", test)):
            for i, row in enumerate(ds[name].select_columns([image, label])):
                yield split, int(row[label]), (f"{name}[{i}]", lambda im=row[image]: im)


__all__ = ["HubReader"]
