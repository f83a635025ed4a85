"""Image folders, as folders or .tar/.tar.gz/.zip archives: which file is an image of which class and split.

``train/<class>/*`` and ``test/<class>/*`` (``val``/``valid``/``validation`` too), or plain ``<class>/*`` with
a seeded, stratified share of each class held out as test (:func:`_layout`). The rules, in one place, for
folders and archives alike (docs/data.md, "What counts as an image"):

- OS litter is never data: ``__MACOSX/``, hidden files and folders (``._x.jpg``, ``.DS_Store``, ``.git/``),
  ``Thumbs.db``, ``desktop.ini``; nor does it count for the folder every image shares.
- Links are followed while they stay inside the data folder; a link that leaves it is not followed and is
  named in a warning, as are FIFOs, devices, sockets and broken links (a folder's) and links and special
  members (an archive's).
- Class names are Unicode-normalised (NFC); two folders that differ only by case or by normalisation are
  one class spelt twice, and refused.
"""

from __future__ import annotations

import functools
import hashlib
import os
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mixer_ft.bounded import check_tar_end, open_tar, read_file
from mixer_ft.data.class_names import check_folder_classes, class_name
from mixer_ft.data.images import MAX_FILE_BYTES, printable
from mixer_ft.data.reader import Reader, file_fingerprint
from mixer_ft.errors import ConfigError, DataError, SourceError
from mixer_ft.gate import special
from mixer_ft.model.config import TEST_FRACTION
from mixer_ft.text import get_logger

log = get_logger(__name__)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}
HEIF_SUFFIXES = {".heic", ".heif"}  # a phone's photos: read where pillow-heif is installed (mixer_ft[heif])


@functools.cache
def heif_readable() -> bool:
    """Whether HEIC/HEIF photos can be read here: pillow-heif is installed, and its opener is registered with PIL
    (before any decode worker is forked, so the workers have it too)."""
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        return False
    register_heif_opener()
    return True


def image_suffixes() -> set[str]:
    """The file suffixes read as images: :data:`IMAGE_SUFFIXES`, and HEIC/HEIF where :func:`heif_readable`."""
    return IMAGE_SUFFIXES | (HEIF_SUFFIXES if heif_readable() else set())
LITTER = {"__macosx", "thumbs.db", "desktop.ini", "$recycle.bin", "system volume information"}  # compared casefolded


def is_litter(name: str) -> bool:
    """Whether a file (by its path in the folder or archive) is OS litter or hidden: never data."""
    return any(part.startswith(".") or part.casefold() in LITTER for part in name.replace("\\", "/").split("/")
               if part not in ("", "."))


def _named(what: str, names: list[str], where: str, fix: str) -> None:
    """One warning naming skipped files (the first few)."""
    if names:
        shown = ", ".join(names[:5]) + (f", ... ({len(names)} in all)" if len(names) > 5 else "")
        log.warning("%s: %s not used: %s; %s", where, what, shown, fix)


def walk(root: Path) -> dict[str, Path]:
    """The regular files under ``root`` by path relative to it, links followed while they stay inside.

    Links that leave the folder, special files and broken links are skipped and named in a warning;
    a folder reached twice (through a link) is read once.
    """
    inside, files, leaving, odd, seen = root.resolve(), {}, [], [], set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        here = Path(dirpath)
        real = here.resolve()
        if real in seen or not real.is_relative_to(inside):
            dirnames[:] = []
            continue
        seen.add(real)
        for name in list(dirnames):
            path = here / name
            if path.is_symlink() and not path.resolve().is_relative_to(inside):
                leaving.append(printable(str(path.relative_to(root))) + "/")
                dirnames.remove(name)
        for name in filenames:
            path, rel = here / name, str((here / name).relative_to(root))
            if is_litter(rel):
                continue
            if path.is_symlink() and not path.resolve().is_relative_to(inside):
                leaving.append(printable(rel))
            elif (kind := special(path)) is not None:
                odd.append(f"{printable(rel)} ({kind})")
            elif not path.exists():
                odd.append(f"{printable(rel)} (a broken link)")
            else:
                files[rel] = path
    _named("links that lead outside the folder are", sorted(leaving), str(root),
           "copy the files they point to into the folder")
    _named("files that are not regular files are", sorted(odd), str(root), "replace them with image files")
    return dict(sorted(files.items()))


# Split folder names, as image-folder data sets spell them; "validation" is reported when there is no "test".
_SPLITS = {"train": "train", "test": "test", "val": "validation", "valid": "validation", "validation": "validation"}


def _split_at(parts: tuple[str, ...]) -> int | None:
    """Index of the first split folder (train/, test/, val/, ...) on an image's path that has a class
    folder below it; None when there is none."""
    return next((i for i, p in enumerate(parts[:-2]) if p.lower() in _SPLITS), None)


def _layout(names: list[str], test_fraction: float, where: str) -> tuple[dict[str, tuple[str, str]], str]:
    """{image name: (split, class)} for an image folder's file names, and which split is reported as test and why.

    ``train/<class>/...`` with ``test/`` or ``val/``/``validation/`` (test preferred); or, with no split
    folders, ``<class>/...`` with a seeded, stratified ``test_fraction`` of each class held out. The class
    is the first folder under the split folder (or under the folder all images share): images in
    sub-folders of a class belong to it.
    """
    suffixes = image_suffixes()
    images = [n for n in names if Path(n).suffix.lower() in suffixes and not is_litter(n)]
    others = sorted(printable(n) for n in names if not n.endswith("/") and not is_litter(n) and
                    Path(n).suffix.lower() not in suffixes)
    heif = any(Path(n).suffix.lower() in HEIF_SUFFIXES for n in others)
    _named("files that are not images it reads are", others, where, "HEIC/HEIF photos are read once pillow-heif is "
           "installed: pip install 'mixer_ft[heif]'" if heif else f"images are {', '.join(sorted(suffixes))} files")
    split_of = {}
    for n in images:
        parts = Path(n).parts
        if (i := _split_at(parts)) is not None:
            split_of[n] = (_SPLITS[parts[i].lower()], parts[i + 1])
    if split_of:
        present = {s for s, _ in split_of.values()}
        test = "test" if "test" in present else "validation" if "validation" in present else None
        if test is None:
            raise DataError(f"{where} has a train/ folder but no test/, val/ or validation/ folder to report on; "
                            "add one, or put the class folders at the top to have a test split held out.")
        _named("images outside the split folders are", sorted(printable(n) for n in images if n not in split_of), where,
               "move them into train/<class>/ or test/<class>/")
        check_folder_classes({c for _, c in split_of.values()}, where)
        split_of = {n: (s, class_name(c)) for n, (s, c) in split_of.items()}
        why = "its test/ folder" if test == "test" else "its validation folder (there is no test/ folder)"
        if test == "test" and "validation" in present:
            why += "; its validation folder is not used (the minival is cut from train, as upstream)"
        return {n: ("test" if s == test else s, c) for n, (s, c) in split_of.items() if s in ("train", test)}, why
    # Plain class folders: drop the folders every image shares (an archive's top folder), then the
    # first folder left is the class.
    dirs = [Path(n).parts[:-1] for n in images]
    common = 0
    while dirs and all(len(d) > common and d[common] == dirs[0][common] for d in dirs):
        common += 1
    by_folder: dict[str, list[str]] = {}
    for n, d in zip(images, dirs):
        if len(d) > common:
            by_folder.setdefault(d[common], []).append(n)
    _named("images outside the class folders are", sorted(printable(n) for n, d in zip(images, dirs) if len(d) == common),
           where, "move each into the folder of its class")
    check_folder_classes(set(by_folder), where)
    by_class = {class_name(folder): files for folder, files in by_folder.items()}
    rng, out = np.random.default_rng(0), {}
    for cls in sorted(by_class):
        files = sorted(by_class[cls])
        held = {files[i] for i in rng.permutation(len(files))[: round(len(files) * test_fraction)]}
        out |= {f: ("test" if f in held else "train", cls) for f in files}
    return out, (f"no split folders: {test_fraction:.0%} of each class held out as the test split (seeded, "
                 "stratified; --test-fraction / recipe key test_fraction)")


def _capped(size: int, read: Callable[[], bytes]) -> Callable[[], bytes]:
    """``read``, unless the file is larger than an image may be: then a getter that says so, unread."""
    if size <= MAX_FILE_BYTES:
        return read

    def refuse() -> bytes:
        raise OSError(f"{size:,} bytes, more than the {MAX_FILE_BYTES >> 20} MiB an image file may have")
    return refuse


def _taken(get: Callable[[], bytes]) -> Callable[[], bytes]:
    """Read an archive member now (the archive closes when the last item is taken); its error later."""
    try:
        data = get()
    except OSError as e:
        err = e

        def fail() -> bytes:
            raise err
        return fail
    return lambda: data


def _regular_members(members: list[tarfile.TarInfo], where: str) -> list[tarfile.TarInfo]:
    """An archive's regular files; its links and special members (FIFOs, devices) named in a warning."""
    odd = [f"{printable(m.name)} ({'a link' if m.issym() or m.islnk() else 'not a regular file'})"
           for m in members if not m.isfile() and not m.isdir() and not is_litter(m.name)]
    _named("archive members that are not regular files are", odd, where, "pack the files themselves")
    return [m for m in members if m.isfile()]


class FolderReader(Reader):
    """An image folder, or one packed as .tar, .tar.gz or .zip (see :func:`_layout`)."""

    encoded_files = True

    def __init__(self, path: Path, test_fraction: float = TEST_FRACTION) -> None:
        if not 0 < test_fraction < 1:
            raise ConfigError(f"test_fraction must be in (0, 1), got {test_fraction}.")
        self.path, self.location, self.test_fraction = path, str(path), test_fraction
        self.test_from = ""

    def names(self) -> list[str]:
        """The file names it holds, read from the folder or the archive's index (no image is read)."""
        try:
            if self.path.is_dir():
                return list(walk(self.path))
            if zipfile.is_zipfile(self.path):
                with zipfile.ZipFile(self.path) as zf:
                    return zf.namelist()
            with open_tar(path=self.path) as tar:
                found = [m.name for m in tar.getmembers() if m.isfile()]  # (items() names the others)
                check_tar_end(tar, printable(str(self.path)))
                return found
        except (SourceError, tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, zlib.error) as e:
            raise self._damaged(e) from None

    def count(self, split: str) -> int:
        """Images of ``split`` the layout assigns (from the names alone, no image read)."""
        assign, _ = _layout(self.names(), self.test_fraction, self.location)
        return sum(s == split for s, _ in assign.values())

    def fingerprint(self) -> list[Any]:
        if self.path.is_file():
            return ["folder-archive", *file_fingerprint(self.path), self.test_fraction]
        h = hashlib.sha1()
        for rel, p in walk(self.path).items():
            st = p.stat()
            h.update(os.fsencode(rel) + f"\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return ["folder", str(self.path.resolve()), h.hexdigest(), self.test_fraction]

    def _damaged(self, e: BaseException) -> DataError:
        why = e.why if isinstance(e, SourceError) else f"{type(e).__name__}: {e}"
        return DataError(f"{self.path} is truncated or damaged ({why}); download or copy it again.")

    def items(self) -> Iterator[tuple[str, str | int, Any]]:
        try:
            if self.path.is_dir():
                files = walk(self.path)
                assign, self.test_from = _layout(list(files), self.test_fraction, self.location)
                self.total = len(assign)
                for name, path in files.items():
                    if name in assign:
                        shown = printable(str(path))
                        yield *assign[name], (shown, _capped(path.stat().st_size,
                                                             lambda p=path, n=shown: read_file(p, n, MAX_FILE_BYTES)))
            elif zipfile.is_zipfile(self.path):
                with zipfile.ZipFile(self.path) as zf:
                    assign, self.test_from = _layout(zf.namelist(), self.test_fraction, self.location)
                    self.total = len(assign)
                    for info in zf.infolist():
                        if info.filename in assign:  # read now: the archive closes when the last item is taken
                            get = _capped(info.file_size, lambda i=info: zf.read(i))
                            yield *assign[info.filename], (printable(info.filename), _taken(get))
            else:
                with open_tar(path=self.path) as tar:  # names first, then the images in archive order
                    members = _regular_members(tar.getmembers(), self.location)
                    check_tar_end(tar, printable(str(self.path)))
                    assign, self.test_from = _layout([m.name for m in members], self.test_fraction, self.location)
                    self.total = len(assign)
                    for m in members:
                        if m.name in assign:
                            get = _capped(m.size, lambda m=m: tar.extractfile(m).read())  # type: ignore[union-attr]
                            yield *assign[m.name], (printable(m.name), _taken(get))
        except (SourceError, tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, zlib.error) as e:
            raise self._damaged(e) from None


__all__ = ["HEIF_SUFFIXES", "IMAGE_SUFFIXES", "LITTER", "FolderReader", "heif_readable", "image_suffixes", "is_litter",
           "walk"]
