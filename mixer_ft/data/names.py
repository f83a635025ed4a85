"""What data sets are called: the Hub sets ``--dataset`` names, CIFAR-10's classes, the name runs are compared
under, and which ``--dataset`` values are URLs. Imports nothing of the package, so every data module may use it."""

from __future__ import annotations

import re

HUB_DATASETS = {  # --dataset name -> (Hub id, label column)
    "cifar10": ("uoft-cs/cifar10", "label"),
    "cifar100": ("uoft-cs/cifar100", "fine_label"),
}
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def canonical_dataset(source: str, classes: list[str], n_test: int) -> str:
    """"cifar10"/"cifar100" for any copy of CIFAR (Hub, JPEG folder, python archive), "imagenet" for any copy of
    ImageNet-1k (1,000 classes, the 50,000 validation images as test), else ``source``."""
    if source in HUB_DATASETS:
        return source
    if classes == CIFAR10_CLASSES and n_test == 10_000:
        return "cifar10"
    if len(classes) == 100 and n_test == 10_000 and re.search(r"cifar.?100", source, re.IGNORECASE):
        return "cifar100"
    if len(classes) == 1000 and n_test == 50_000:  # ILSVRC-2012: its labelled validation split as test
        return "imagenet"
    return source


def is_url(source: str) -> bool:
    """Whether ``source`` is a URL (pattern) of shards: http://, https:// or file://."""
    return re.match(r"(https?|file)://", source) is not None


__all__ = ["CIFAR10_CLASSES", "HUB_DATASETS", "canonical_dataset", "is_url"]
