"""Webdataset tar shards: the form large image sets travel in (timm's ``wds`` reader, the Hub's webdataset sets).

A folder of ``train-*.tar`` shards and ``test-*.tar`` (or ``validation-*.tar`` / ``val-*.tar``: ImageNet's
labelled split serves as test) shards; ``.tar.gz`` and ``.tgz`` too. In each shard a sample is the run of
consecutive members that share a key (the member's path up to the first dot of its file name):
``<key>.jpg`` (or ``.jpeg``, ``.png``, ``.webp``) and ``<key>.cls``, the class as an integer. ``classes.txt``
beside the shards names the classes, one per line in index order; without it a class is named by its number.

The shards are read in name order, each in one pass from start to end (a shard is never seeked, so a
compressed one costs no more). What cannot be used is skipped and said once, by kind: a sample without an
image or a ``.cls``, a ``.cls`` that is not an integer or not a class, an image over the size bound, a
link or special member. A shard that ends mid-member is named: its samples before the damage are kept, the
rest of it is skipped, and the other shards go on.
"""

from __future__ import annotations

import logging
import re
import tarfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from mixer_ft.data.folder import class_name
from mixer_ft.data.images import MAX_FILE_BYTES, printable
from mixer_ft.data.reader import Reader, file_fingerprint
from mixer_ft.errors import DataError
from mixer_ft.gate import check_path, read_text

log = logging.getLogger(__name__)
SHARD = re.compile(r"(train|test|validation|val)[-_.][^/]*\.(tar|tar\.gz|tgz)", re.IGNORECASE)
SPLIT_OF = {"train": "train", "test": "test", "validation": "validation", "val": "validation"}
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
CLASSES_FILE = "classes.txt"


def shards_of(folder: Path) -> dict[str, list[Path]]:
    """The folder's shards by split ("train", "test", "validation"), each list in name order."""
    found: dict[str, list[Path]] = {"train": [], "test": [], "validation": []}
    for path in sorted(folder.iterdir()):
        match = SHARD.fullmatch(path.name)
        if match:
            found[SPLIT_OF[match.group(1).lower()]].append(check_path(path, "shard"))
    return found


def local_shard(path: Path) -> Shard:
    """A shard file on this machine."""
    return Shard(str(path), lambda: open(path, "rb"))  # noqa: SIM115 - closed by tar_samples


def is_shard_folder(path: Path) -> bool:
    """Whether ``path`` is a folder holding webdataset shards (``train-*.tar``, ...)."""
    try:
        return path.is_dir() and any(SHARD.fullmatch(p.name) for p in path.iterdir())
    except OSError:
        return False


def _key_and_extension(name: str) -> tuple[str, str]:
    """webdataset's grouping: ``a/b/x.seg.png`` -> (``a/b/x``, ``seg.png``)."""
    folder, _, base = name.rpartition("/")
    stem, dot, extension = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), extension.lower() if dot else ""


class ShardReader(Reader):
    """A folder of webdataset shards (see the module's description)."""

    encoded_files = True

    def __init__(self, folder: Path) -> None:
        self.folder, self.location = folder, str(folder)
        shards = shards_of(folder)
        test = shards["test"] or shards["validation"]
        if not shards["train"] or not test:
            lacking = "train-*.tar" if not shards["train"] else "test-*.tar or validation-*.tar"
            raise DataError(f"{folder} has no {lacking} shards. A shard folder holds train-*.tar and test-*.tar "
                            "(or validation-*.tar) webdataset shards, each sample a <key>.jpg and a <key>.cls.")
        if shards["test"] and shards["validation"]:
            log.warning("%s: the test-* shards are the test split; its %d validation-* shard(s) are not used",
                        printable(str(folder)), len(shards["validation"]))
        self.test_from = "its test-* shards" if shards["test"] else "its validation-* shards"
        self.shards = [(split, local_shard(p)) for split, paths in (("train", shards["train"]), ("test", test))
                       for p in paths]
        self.named = self._class_names()
        self.classes = self.named

    def _class_names(self) -> list[str] | None:
        path = self.folder / CLASSES_FILE
        return read_class_names(read_text(path, "class list"), str(path)) if path.exists() else None

    def fingerprint(self) -> list[Any]:
        extra = [file_fingerprint(self.folder / CLASSES_FILE)] if self.named is not None else []
        return ["wds-shards", *[file_fingerprint(Path(s.name)) for _, s in self.shards], *extra]

    def items(self) -> Iterator[tuple[str, str | int, Any]]:
        skipped: Counter[str] = Counter()
        top = -1
        for split, shard in self.shards:
            for name, label, data in labelled_samples(shard.open, shard.name, self.named, skipped):
                top = max(top, label)
                yield split, label, (name, lambda data=data: data)
        report_skipped(self.location, skipped)
        if self.named is None:
            self.classes = [str(i) for i in range(top + 1)]


def report_skipped(location: str, skipped: Counter[str]) -> None:
    """One warning: what of ``location`` was skipped, counted by kind."""
    if skipped:
        log.warning("%s: skipped %s", printable(location), "; ".join(f"{n} {why}" for why, n in sorted(skipped.items())))


def read_class_names(text: str, where: str) -> list[str]:
    """The class names of a ``classes.txt`` (one per line, index order), each named once."""
    names = [class_name(line.strip()) for line in text.splitlines() if line.strip()]
    twice = sorted({n for n in names if names.count(n) > 1})
    if not names or twice:
        raise DataError(f"{where} must name each class once, one per line in index order"
                        + (f"; named twice: {', '.join(twice[:5])}" if twice else "; it is empty") + ".")
    return names


def sample_label(raw: bytes | None, named: list[str] | None) -> tuple[int, str | None]:
    """The class of a sample's ``.cls`` bytes, or why it is not one (``named``: the classes, if known)."""
    if raw is None:
        return -1, "sample(s) without a .cls"
    try:
        label = int(raw.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        return -1, "sample(s) whose .cls is not an integer"
    if label < 0 or (named is not None and label >= len(named)):
        bound = f"0..{len(named) - 1}, the classes of {CLASSES_FILE}" if named else "0 or more"
        return -1, f"sample(s) with a class outside {bound}"
    return label, None


def why_unread(e: BaseException) -> str:
    """A shard's read failure in a few words: a stalled or refused stream, an HTTP status, or damage."""
    import urllib.error

    if isinstance(e, TimeoutError) or isinstance(getattr(e, "reason", None), TimeoutError):
        return "stalled: no data within the stream timeout (MIXER_FT_STREAM_TIMEOUT)"
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    if isinstance(e, urllib.error.URLError):
        return f"unreachable: {e.reason}"
    if isinstance(e, ConnectionError):
        return f"connection lost: {type(e).__name__}"
    return f"truncated or damaged: {type(e).__name__}"


def labelled_samples(open_shard: Callable[[], IO[bytes]], name: str, named: list[str] | None,
                     skipped: Counter[str]) -> Iterator[tuple[str, int, bytes]]:
    """(printable name, class, image bytes) of each usable sample of one shard, in order; the rest counted in
    ``skipped`` by kind. A shard that cannot be read to its end is named in a warning: its samples before the
    failure are given, the one being read is dropped."""
    for key, sample in tar_samples(open_shard, name, skipped):
        label, why = sample_label(sample.get("cls"), named)
        image = next((e for e in IMAGE_EXTENSIONS if e in sample), None)
        if why or image is None:
            skipped[why or "sample(s) without an image"] += 1
            continue
        yield printable(f"{name.rpartition('/')[2]}:{key}.{image}"), label, sample[image]


def tar_samples(open_shard: Callable[[], IO[bytes]], name: str,
                skipped: Counter[str]) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) for each sample of one shard, in order; damage ends the shard, named."""
    key, sample = None, {}
    try:
        with open_shard() as stream, tarfile.open(fileobj=stream, mode="r|*") as tar:  # one pass, never a seek
            for member in tar:
                if not member.isfile():
                    if not member.isdir():
                        skipped["link or special member(s)"] += 1
                    continue
                name_key, extension = _key_and_extension(member.name)
                if name_key != key:
                    if sample:
                        yield key, sample
                    key, sample = name_key, {}
                if member.size > MAX_FILE_BYTES:
                    skipped[f"member(s) over {MAX_FILE_BYTES >> 20} MiB"] += 1
                    continue
                sample[extension] = tar.extractfile(member).read()  # type: ignore[union-attr]
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        log.warning("%s could not be read to its end (%s): the rest of it is skipped, the other shards are read",
                    printable(name), why_unread(e))
        return  # the sample being read when the failure came is incomplete: dropped
    if sample:
        yield key, sample


@dataclass(frozen=True)
class Shard:
    """One shard: its name (a path or URL) and how to open it as a byte stream."""

    name: str
    open: Callable[[], IO[bytes]]


__all__ = ["SHARD", "SPLIT_OF", "Shard", "ShardReader", "is_shard_folder", "labelled_samples", "local_shard",
           "read_class_names", "report_skipped", "sample_label", "shards_of", "tar_samples"]
