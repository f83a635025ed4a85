"""Webdataset tar shards: the form large image sets travel in (timm's ``wds`` reader, the Hub's webdataset sets).

A folder of ``train-*.tar`` shards and ``test-*.tar`` (or ``validation-*.tar`` / ``val-*.tar``: ImageNet's
labelled split serves as test) shards; ``.tar.gz`` and ``.tgz`` too. In each shard a sample is the run of
consecutive members that share a key (the member's path up to the first dot of its file name):
``<key>.jpg`` (or ``.jpeg``, ``.png``, ``.webp``) and ``<key>.cls``, the class as an integer. ``classes.txt``
beside the shards names the classes, one per line in index order (:mod:`mixer_ft.data.class_names`); without it
a class is named by its number.

Each shard is read through the one bounded reader (:mod:`mixer_ft.bounded`) in one pass from start to end (never
seeked, so a compressed one costs no more): its size bounded, its gzip trailer and tar end-of-archive block
verified. Of a sample only its image and ``.cls`` are held (each bounded); a member declaring more than
:data:`MEMBER_BYTES` ends the shard before it is read (skipping it would mean decompressing it); a member written
twice in one sample (webdataset refuses such a shard) drops the sample. What cannot be used is skipped and counted
by kind: a sample
without an image or a ``.cls``, a ``.cls`` that is not an integer or not a class, an image over the size bound,
a link or special member. A shard that ends early or damaged is named and its lost samples counted
(:class:`~mixer_ft.data.loss.DataLoss`): its samples before the damage are kept, the other shards go on.
"""

from __future__ import annotations

import contextlib
import re
import tarfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mixer_ft.bounded import Limits, Source, check_tar_end, decompressed, members, open_file, open_tar, read_text
from mixer_ft.data.class_names import numbered_classes, parse_class_list, printable
from mixer_ft.data.images import MAX_FILE_BYTES
from mixer_ft.data.loss import DataLoss
from mixer_ft.data.reader import Reader, file_fingerprint
from mixer_ft.errors import DataError, SourceError
from mixer_ft.gate import check_path
from mixer_ft.text import get_logger

log = get_logger(__name__)
SHARD = re.compile(r"(train|test|validation|val)[-_.][^/]*\.(tar|tar\.gz|tgz)", re.IGNORECASE)
SPLIT_OF = {"train": "train", "test": "test", "validation": "validation", "val": "validation"}
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
CLASSES_FILE = "classes.txt"
SHARD_BYTES = 8 << 30  # the most bytes one shard may hold, read or decompressed (webdataset advises a few hundred MB)
CLS_BYTES = 1 << 10  # a .cls is a number: more than this is not one
MEMBER_BYTES = 256 << 20  # a member past this ends its shard unread (an image over MAX_FILE_BYTES is only skipped)


def shards_of(folder: Path) -> dict[str, list[Path]]:
    """The folder's shards by split ("train", "test", "validation"), each list in name order."""
    found: dict[str, list[Path]] = {"train": [], "test": [], "validation": []}
    for path in sorted(folder.iterdir()):
        match = SHARD.fullmatch(path.name)
        if match:
            found[SPLIT_OF[match.group(1).lower()]].append(check_path(path, "shard"))
    return found


def local_shard(path: Path) -> Shard:
    """A shard file on this machine, read through :func:`mixer_ft.bounded.open_file`."""
    return Shard(printable(str(path)), lambda: open_file(path, printable(str(path)), Limits.of(SHARD_BYTES)))


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


def class_list_of(folder: Path) -> list[str] | None:
    """The class names of ``folder``'s ``classes.txt``, None when it has none. The file must lie inside the folder
    (a link may point within it): what a run publishes holds no file from elsewhere.

    Raises:
        DataError: a ``classes.txt`` that leads outside the folder, or breaks the class-name rules.
    """
    path = folder / CLASSES_FILE
    if not path.exists() and not path.is_symlink():
        return None
    if not path.resolve().is_relative_to(folder.resolve()):
        raise DataError(f"{printable(str(path))} is a link that leads outside {printable(str(folder))}: class names are "
                        "read only from inside the data folder (they are published with the model). Copy the file in.")
    return parse_class_list(read_text(path, "class list"), printable(str(path)))


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
        self.named = class_list_of(folder)
        self.classes = self.named

    def fingerprint(self) -> list[Any]:
        extra = [file_fingerprint(self.folder / CLASSES_FILE)] if self.named is not None else []
        return ["wds-shards", *[file_fingerprint(Path(s.name)) for _, s in self.shards], *extra]

    def items(self) -> Iterator[tuple[str, str | int, Any]]:
        top, count = -1, 0
        for split, shard in self.shards:
            for name, label, data in labelled_samples(shard, self.named, self.loss):
                top, count = max(top, label), count + 1
                yield split, label, (name, lambda data=data: data)
        self.loss.report(self.location)
        if self.named is None:
            self.classes = numbered_classes(top, count, printable(self.location))


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


def labelled_samples(shard: Shard, named: list[str] | None, loss: DataLoss) -> Iterator[tuple[str, int, bytes]]:
    """(printable name, class, image bytes) of each usable sample of one shard, in order; the rest counted in
    ``loss`` by kind. A shard that cannot be read to its verified end is named and its loss counted: its samples
    before the failure are given, the one being read is dropped."""
    for key, sample in tar_samples(shard, loss):
        label, why = sample_label(sample.get("cls"), named)
        image = next((e for e in IMAGE_EXTENSIONS if e in sample), None)
        if why or image is None:
            loss.skip(why or "sample(s) without an image")
            continue
        yield printable(f"{shard.name.rpartition('/')[2]}:{key}.{image}"), label, sample[image]


def _bound(extension: str) -> int | None:
    """The most bytes a member of this extension may have, where the sample holds it; None: not held."""
    return CLS_BYTES if extension == "cls" else MAX_FILE_BYTES if extension in IMAGE_EXTENSIONS else None


def tar_samples(shard: Shard, loss: DataLoss) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) for each whole sample of one shard, in order: only its .cls and first image held.
    What is not usable is counted in ``loss``; a shard that ends early or damaged ends here, named and counted."""
    key, sample, seen, flaw, given = None, {}, set(), None, 0
    source: Source | None = None
    try:
        with contextlib.ExitStack() as stack:
            source = stack.enter_context(shard.open())
            stream = stack.enter_context(decompressed(source, SHARD_BYTES))
            tar = stack.enter_context(open_tar(stream))
            for member in members(tar, shard.name, SHARD_BYTES, MEMBER_BYTES):
                if not member.isfile():
                    if not member.isdir():
                        loss.skip("link or special member(s)")
                    continue
                name_key, extension = _key_and_extension(member.name)
                if name_key != key:
                    if key is not None:
                        given += 1  # a sample read, whether it is used or counted as skipped
                        if done := _finished(sample, flaw, loss):
                            yield key, done
                    key, sample, seen, flaw = name_key, {}, set(), None
                if extension in seen:
                    flaw = "sample(s) with a member written twice (webdataset refuses such a shard)"
                seen.add(extension)
                bound = _bound(extension)
                if bound is None or flaw or (extension in IMAGE_EXTENSIONS and any(e in sample for e in IMAGE_EXTENSIONS)):
                    continue  # not held: read past, within the shard's bound
                if member.size > bound or member.size > MEMBER_BYTES:
                    flaw = f"sample(s) with a .{extension} over {bound:,} bytes"
                    continue
                sample[extension] = tar.extractfile(member).read()  # type: ignore[union-attr]
            check_tar_end(tar, shard.name, stream)
    except (SourceError, tarfile.TarError, EOFError, OSError, zlib.error) as e:
        done = source.done if source is not None else 0
        size = source.size if source is not None else None
        loss.source_failed(shard.name, e, given, done, size)
        return  # the sample being read when the failure came may be incomplete: dropped
    if key is not None:
        given += 1
        if done := _finished(sample, flaw, loss):
            yield key, done
    loss.source_read(given)


def _finished(sample: dict[str, bytes], flaw: str | None, loss: DataLoss) -> dict[str, bytes] | None:
    """A sample once its last member is read: as it is, or None (counted in ``loss``) when it has a flaw."""
    if flaw:
        loss.skip(flaw)
        return None
    return sample


@dataclass(frozen=True)
class Shard:
    """One shard: its name (a path, or a URL without its query: as it may be printed) and how to open it as a
    :class:`~mixer_ft.bounded.Source` (a Hub set's shard: as its rows)."""

    name: str
    open: Callable[[], Any]


__all__ = ["CLASSES_FILE", "SHARD", "SHARD_BYTES", "SPLIT_OF", "Shard", "ShardReader", "class_list_of", "is_shard_folder",
           "labelled_samples", "local_shard", "sample_label", "shards_of", "tar_samples"]
