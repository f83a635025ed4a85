"""A Hugging Face ``datasets`` image-classification set (a Hub id or a local folder ``datasets`` reads):
image and label columns found by type or named, the test split (or validation) reported on."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from mixer_ft.bounded import read_file
from mixer_ft.data.class_names import check_class_names, numbered_classes
from mixer_ft.data.images import MAX_FILE_BYTES
from mixer_ft.data.loss import DataLoss
from mixer_ft.data.reader import Reader
from mixer_ft.data.shards import Shard
from mixer_ft.errors import DataError, SourceError


def columns(repo: str, features: Any, image_column: str | None, label_column: str | None) -> tuple[str, str]:
    """The (image, label) columns of a set with ``features``: named, else found by type."""
    from datasets import ClassLabel, Image, Value

    image = image_column or next((k for k, f in features.items() if isinstance(f, Image)), None)
    label = label_column or next((k for k, f in features.items() if isinstance(f, ClassLabel)), None)
    label = label or next((k for k in ("label", "labels", "fine_label") if k in features), None)
    cols = ", ".join(f"{k} ({type(f).__name__})" for k, f in features.items())
    if image not in features or not isinstance(features[image], Image):
        raise DataError(f"{repo}: no image column found (columns: {cols}); pass --image-column.")
    if label not in features:
        raise DataError(f"{repo}: no label column found (columns: {cols}); pass --label-column.")
    f = features[label]
    if not (isinstance(f, ClassLabel) or (isinstance(f, Value) and f.dtype.startswith(("int", "uint")))):
        raise DataError(
            f"{repo}: label column {label!r} is {f}, not an integer or class label. Pass "
            f"--label-column naming an integer or ClassLabel column (columns: {cols})."
        )
    return image, label


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

    def items(self) -> Iterator[tuple[str, str | int, Any]]:
        ds = self._dataset()
        test = "test" if "test" in ds else "validation" if "validation" in ds else None
        self.test_from = f"its {test} split" + (" (it has no test split)" if test == "validation" else "")
        if "train" not in ds or test is None:
            raise DataError(f"{self.repo} needs a train split and a test (or validation) split; it has "
                            f"{', '.join(ds)}.")
        image, label = columns(self.repo, ds["train"].features, self.image_column, self.label_column)
        self.total = len(ds["train"]) + len(ds[test])
        f = ds["train"].features[label]
        if hasattr(f, "names"):
            self.classes = check_class_names(list(f.names), f"{self.location}'s {label} column")
        else:  # numbered: as many classes as the labels say, bounded by the rows
            rows = len(ds["train"]) + len(ds[test])
            self.classes = numbered_classes(max(int(max(ds[s][label])) for s in ("train", test)), rows, self.location)
        for split, name in (("train", "train"), ("test", test)):
            for i, row in enumerate(ds[name].select_columns([image, label])):
                yield split, int(row[label]), (f"{name}[{i}]", lambda im=row[image]: im)


def hub_stream(repo: str, image_column: str | None, label_column: str | None, source: str) -> Any:
    """A Hub set (or a local folder ``datasets`` reads) in streaming mode as a
    :class:`~mixer_ft.data.stream.StreamedSet`: its data files are its shards (``IterableDataset.shard``), its
    ClassLabel names its classes, and each image's encoded bytes are decoded per batch like a shard's.

    Raises:
        DataError: not loadable, no train or test/validation split, or a label column without class names.
    """
    from mixer_ft.data.stream import StreamedSet
    from mixer_ft.weights.downloads import hub_offline

    hub_offline()
    import datasets

    try:
        ds = datasets.load_dataset(repo, streaming=True)
    except Exception as e:  # noqa: BLE001 - offline, not found, bad format: all say the same
        raise HubReader(repo, image_column, label_column)._unavailable(e) from None
    test = "test" if "test" in ds else "validation" if "validation" in ds else None
    if "train" not in ds or test is None:
        raise DataError(f"{repo} needs a train split and a test (or validation) split; it has {', '.join(ds)}.")
    features = ds["train"].features
    if features is None:
        raise DataError(f"{repo}: datasets does not know its columns' types in streaming mode; pass --image-column and "
                        "--label-column, or read it without --streaming.")
    image, label = columns(repo, features, image_column, label_column)
    names = getattr(features[label], "names", None)
    if not names:
        raise DataError(f"{repo}: its label column {label!r} has no class names (not a ClassLabel), which a stream needs "
                        "before it reads a sample; read it without --streaming.")
    names = check_class_names(list(names), f"hf:{repo}'s {label} column")
    splits = {split: ds[name].select_columns([image, label]).cast_column(image, datasets.Image(decode=False))
              for split, name in (("train", "train"), ("test", test))}

    def shards(split: str) -> list[Shard]:
        n = splits[split].num_shards
        return [Shard(f"{split}[shard {i} of {n}]", lambda i=i, n=n: splits[split].shard(n, i)) for i in range(n)]

    def reading(shard: Shard, classes: list[str], loss: DataLoss) -> Iterator[tuple[str, int, bytes]]:
        rows = 0
        try:
            for j, row in enumerate(shard.open()):
                rows += 1
                cell, y = row[image], row[label]
                data = cell.get("bytes") if isinstance(cell, dict) else None
                if data is None and isinstance(cell, dict) and cell.get("path"):  # a local file the set points to
                    data = read_file(cell["path"], f"{shard.name}[{j}]", MAX_FILE_BYTES)
                if data is None or not isinstance(y, int) or not 0 <= y < len(classes):
                    loss.skip("row(s) without image bytes or with a label outside the classes")
                    continue
                yield f"{shard.name}[{j}]", y, data
        except (SourceError, OSError) as e:  # a data file cut short or unreadable under datasets
            loss.source_failed(shard.name, e, rows)
            return
        loss.source_read(rows)

    return StreamedSet(source, f"hf:{repo} (streamed)", list(names), shards("train"), shards("test"),
                       f"its {test} split", ["hf-stream", repo, image, label, ds["train"].info.dataset_name],
                       reading=reading)


__all__ = ["HubReader", "columns", "hub_stream"]
