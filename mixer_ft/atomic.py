"""Files that are whole or absent: write beside the target, fsync, then rename over it. Plus the
locks that keep two processes out of one run folder or one cache entry, the sweep of what a
killed writer left behind, and the manifest of what a run wrote: the only files ever deleted there.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from mixer_ft.errors import DataError, StorageError

TMP_SUFFIX = ".mixer-ft.tmp"  # atomic_write's temporary files end so; the sweep takes only these
_OURS = re.compile(r"\..+\.[a-z0-9_]{8}" + re.escape(TMP_SUFFIX))


def json_text(obj: object, **options: object) -> str:
    """``obj`` as strict JSON (``json.dumps`` with ``options``): NaN and infinities are refused, never written
    as the bare ``NaN`` that JSON readers reject. Every JSON the tool prints or writes goes through here.

    Raises:
        DataError: a value is not a finite number (a diverged or corrupt input reached a result).
    """
    try:
        return json.dumps(obj, allow_nan=False, **options)  # type: ignore[arg-type]
    except ValueError as e:
        if "Out of range float" not in str(e):
            raise
        raise DataError("A result holds a number that is not finite (NaN or infinity), so it is not written: an "
                        "input (weights, images) or the run itself went wrong; check them and run again.") from None


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` for a temporary file beside ``path``, then rename it to ``path``.

    A crash at any point leaves either the old file or the new one, never a torn one.
    """
    path, tmp = Path(path), None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
        os.close(fd)
        write(Path(tmp))
        # mkstemp makes the file private (0600), and a writer may make its own; a result has the user's usual mode.
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError
        if not (_is_storage_error(e) if isinstance(e, RuntimeError) else e.errno in _STORAGE_ERRNOS):
            raise  # not the file system's: a failed download, say, is the caller's to report
        raise StorageError(f"Could not write {path}: {_why(e, path)}. Nothing there was changed; free space or "
                           "choose another folder, then run the same command again.") from None
    finally:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
    return path


def _why(e: BaseException, path: Path) -> str:
    """The cause of a failed write in words: the OS's, or (torch hides it) the free space left."""
    if isinstance(e, OSError) and e.errno is not None:
        return f"{e.strerror or os.strerror(e.errno)} ({errno.errorcode.get(e.errno, e.errno)})"
    import resource

    why = str(e).splitlines()[0]
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY:
        why += f"; File too large for this process's file-size limit (ulimit -f) of {limit:,} bytes?"
    try:
        free = shutil.disk_usage(next(p for p in [path, *path.parents] if p.exists())).free
    except (OSError, StopIteration):
        return why
    return f"{why}; {free / 2**20:,.0f} MiB free on its device (a full disk?)"


# Failures of the file system itself, as opposed to a writer's own (a network error inside a download).
_STORAGE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EIO,
                   errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG, errno.ENOENT}


def _is_storage_error(e: RuntimeError) -> bool:
    """torch.save's failures to write (its zip writer's 'unexpected pos', 'file write failed')."""
    return any(k in str(e) for k in ("unexpected pos", "write failed", "PytorchStreamWriter"))


def _umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` as UTF-8, atomically. Characters UTF-8 cannot hold (the undecodable bytes of a file
    name, kept by Python as surrogates) are written as their escapes rather than failing the write."""
    data = text.encode("utf-8", "backslashreplace")
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


@contextlib.contextmanager
def locked(path: Path, *, wait: bool, holder: str = "") -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (an advisory lock the OS drops when the process dies).

    Raises:
        StorageError: ``wait`` is False and another process holds it (its note, e.g. pid, is named).
    """
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            f.seek(0)
            note = f.read().strip()
            raise StorageError(f"{path.parent} is in use by another run{f' ({note})' if note else ''}; wait for it "
                               "to end, or use another --output-dir.") from None
        f.seek(0)
        f.truncate()
        f.write(holder)
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()


MANIFEST = ".mixer-ft-files.json"


class Manifest:
    """The files this tool wrote in a folder (a run folder), by path relative to it, kept in the folder itself:
    a folder that has one knows it is a run folder, and only the files it lists are ever deleted there
    (``--fresh``, a checkpoint's rotation). A file the user put beside them, or replaced by a link, stays."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.path = Path(folder), Path(folder) / MANIFEST

    def exists(self) -> bool:
        return self.path.is_file()

    def listed(self) -> set[str]:
        """The files it lists (nothing, where it is missing or unreadable: then nothing may be deleted)."""
        try:
            files = json.loads(self.path.read_text())["files"]
        except (OSError, ValueError, KeyError, TypeError):
            return set()
        return {f for f in files if isinstance(f, str)}

    def _relative(self, path: Path) -> str:
        return Path(os.path.relpath(Path(path).absolute(), self.folder.absolute())).as_posix()

    def _write(self, files: set[str]) -> None:
        atomic_write_text(self.path, json_text({"made_by": "mixer_ft", "files": sorted(files)}, indent=1) + "\n")

    def add(self, *paths: Path) -> None:
        """Note that this tool wrote ``paths`` (inside the folder)."""
        self._write(self.listed() | {self._relative(p) for p in paths})

    def delete(self, *paths: Path) -> list[Path]:
        """Delete those of ``paths`` that the manifest lists and that are still regular files (a link or a folder
        put in a file's place stays); they are no longer listed. Returns what was deleted."""
        listed, gone = self.listed(), []
        for path in paths:
            rel = self._relative(path)
            if rel in listed:
                target = self.folder / rel
                if target.is_file() and not target.is_symlink():
                    target.unlink()
                    gone.append(target)
                listed.discard(rel)
        if gone or listed != self.listed():
            self._write(listed)
        return gone

    def delete_all(self) -> list[Path]:
        """Every file the manifest lists (see :meth:`delete`), then the folders they were in, where left empty."""
        listed = sorted(self.listed())
        gone = self.delete(*(self.folder / rel for rel in listed))
        for rel in sorted({str(Path(r).parent) for r in listed if Path(r).parent != Path(".")}, key=len, reverse=True):
            with contextlib.suppress(OSError):
                (self.folder / rel).rmdir()  # only an empty one
        return gone


def sweep_partial_writes(*folders: Path) -> list[Path]:
    """Remove what killed writers left: atomic_write's temporary files (``.<name>.<8 random>.mixer-ft.tmp``),
    and nothing else (a user's own ``.notes.tmp`` stays). Call it only while holding the lock of the folders,
    so no live writer's file is taken."""
    gone = []
    for folder in folders:
        for tmp in folder.glob(f".*{TMP_SUFFIX}") if folder.is_dir() else []:
            if _OURS.fullmatch(tmp.name) and tmp.is_file() and not tmp.is_symlink():
                tmp.unlink(missing_ok=True)
                gone.append(tmp)
    return gone
