"""Scoring a model on a labelled split: accuracy, per-class accuracy and the confusion matrix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mixer_ft.data.cache import ImageData
from mixer_ft.data.class_names import is_numbered
from mixer_ft.errors import ConfigError, DataError
from mixer_ft.text import get_logger
from mixer_ft.train.evaluation import EVAL_BATCH, split_predictions
from mixer_ft.use.infer import Classifier

log = get_logger(__name__)

SPLITS = ("test", "minival", "train")


def check_classes(model_classes: list[str], data: ImageData, named: bool = True) -> None:
    """The data set's classes must be the model's, in the same order. A model trained on numbered classes (a set
    that named none) is not scored on named ones, nor the other way round: the numbers are not known to be those
    classes. ``named``: whether the model names its classes at all (bare weights do not: then the counts decide).

    Raises:
        DataError: one line naming what differs.
    """
    if model_classes == data.classes:
        return
    if not named and len(model_classes) == len(data.classes):
        log.warning("the model names no classes: its head's order is taken as %s's (%s, ...)", data.location,
                    ", ".join(data.classes[:3]))
        return
    if len(model_classes) != len(data.classes):
        raise DataError(f"The model has {len(model_classes)} classes and {data.location} has {len(data.classes)}: "
                        "score a model on the classes it was trained for.")
    if is_numbered(model_classes) != is_numbered(data.classes):
        numbered, other = ("the model's", f"{data.location}'s") if is_numbered(model_classes) else \
            (f"{data.location}'s", "the model's")
        raise DataError(f"{numbered} classes are numbered 0..{len(model_classes) - 1} (named by no list) and {other} are "
                        f"named ({', '.join((data.classes if is_numbered(model_classes) else model_classes)[:3])}, ...): "
                        "nothing says number 0 is the first name. Score the model on data named as it was trained (a "
                        "classes.txt beside shards names their numbers).")
    missing = [c for c in model_classes if c not in data.classes]
    extra = [c for c in data.classes if c not in model_classes]
    if missing or extra:
        raise DataError(f"{data.location} has other classes than the model: the model's {missing} are not in it, "
                        f"and its {extra} are not the model's.")
    raise DataError(f"{data.location} orders its classes differently from the model ({data.classes} against "
                    f"{model_classes}).")


def evaluate_split(clf: Classifier, data: ImageData, split: str = "test", *, val_fraction: float = 0.02,
                   seed: int = 0, batch: int = EVAL_BATCH) -> dict[str, Any]:
    """Score ``clf`` on one split of ``data``, as training scores its minival and test splits.

    Returns:
        ``accuracy``, ``images``, ``per_class`` (class -> accuracy, None for a class with no
        image), ``confusion`` (rows: true class, columns: predicted), ``classes``, ``split``, ``views``.
    """
    if split not in SPLITS:
        raise ConfigError(f"Unknown split {split!r}; choose one of {', '.join(SPLITS)}.")
    check_classes(clf.classes, data, clf.named)
    array, idx = data.splits(val_fraction, seed)[split]
    if len(idx) == 0:
        raise DataError(f"The {split} split of {data.location} is empty (val_fraction {val_fraction}).")
    k = len(clf.classes)
    confusion = np.zeros((k, k), dtype=np.int64)
    with clf.scoring():
        for pred, y in split_predictions(clf.model, clf.pre, data.images[array], data.labels[array], idx, clf.device,
                                         mirror=clf.mirror, shift=clf.shift, batch=batch,
                                         extents=data.extents.get(array)):
            np.add.at(confusion, (y.numpy(), pred.numpy()), 1)
    per_row = confusion.sum(1)
    return {
        "accuracy": float(np.trace(confusion) / confusion.sum()), "images": int(confusion.sum()),
        "per_class": {c: (float(confusion[i, i] / per_row[i]) if per_row[i] else None) for i, c in enumerate(clf.classes)},
        "confusion": confusion.tolist(), "classes": clf.classes, "split": split, "dataset": data.dataset_id,
        "views": {"flip": clf.mirror, "translate": clf.shift, "precision": clf.precision},
    }


def summary_text(result: dict[str, Any]) -> str:
    """``mixer-ft evaluate``'s text: the accuracy, then each class's."""
    from mixer_ft.text import one_line

    names = [one_line(c) for c in result["classes"]]
    lines = [f"{one_line(result['dataset'])} {result['split']}: {100 * result['accuracy']:.2f}% of {result['images']:,} images"]
    lines += [f"  {name:<{max(map(len, names))}}  " + ("-" if acc is None else f"{100 * acc:.2f}%")
              for name, acc in zip(names, result["per_class"].values())]
    return "\n".join(lines)


def plot_confusion(result: dict[str, Any], path: str | Path) -> Path:
    """The confusion matrix as a PNG, rows normalised, counts written in the cells when there are few classes."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("--plot needs matplotlib: pip install 'mixer_ft[plot]'.") from None
    counts = np.array(result["confusion"])
    rates = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    k = len(result["classes"])
    side = min(4 + 0.5 * k, 24)
    fig, ax = plt.subplots(figsize=(side, side), constrained_layout=True)
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    if k <= 30:
        ax.set_xticks(range(k), result["classes"], rotation=90)
        ax.set_yticks(range(k), result["classes"])
        for i in range(k):
            for j in range(k):
                ax.text(j, i, counts[i, j], ha="center", va="center", fontsize=7,
                        color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{result['dataset']} {result['split']}: {100 * result['accuracy']:.2f}% of {result['images']:,} images")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


__all__ = ["SPLITS", "check_classes", "evaluate_split", "plot_confusion", "summary_text"]
