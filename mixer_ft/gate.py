"""The one gate every path the tool reads goes through: regular files and folders only, bounded sizes,
names the file system can hold.

A FIFO, a device or a socket given where a file is expected would block forever or stream without end
(``/dev/zero``); an over-long name fails deep inside a library with a bare OSError. Here each is one
line saying what the path is and what to give instead, before anything is opened.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from mixer_ft.errors import ConfigError

NAME_MAX = 255  # bytes in one path component (ext4, XFS, APFS, NTFS)
PATH_MAX = 4096  # bytes in a whole path (Linux)
TEXT_LIMIT = 16 << 20  # a recipe, a config.json or a record: text files this tool reads whole


def kind_of(mode: int) -> str:
    """What a file of ``st_mode`` ``mode`` is, in words, when it is not a regular file or folder."""
    for test, name in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file or folder"


def check_name(path: str | Path, what: str) -> None:
    """Refuse a path with a component over NAME_MAX bytes, or longer than PATH_MAX in all.

    Raises:
        ConfigError: naming the component and its length.
    """
    raw = os.fsencode(str(path))
    if len(raw) > PATH_MAX:
        raise ConfigError(f"The {what} path is {len(raw):,} bytes long, more than the {PATH_MAX:,} a path may have; "
                          "use a shorter one.")
    for part in raw.split(b"/"):
        if len(part) > NAME_MAX:
            shown = os.fsdecode(part[:40]) + "..."
            raise ConfigError(f"The {what} path has a name of {len(part)} bytes ({shown}), more than the {NAME_MAX} "
                              "a file system allows in one name; rename it.")


def special(path: str | Path) -> str | None:
    """What ``path`` is when it is neither a regular file nor a folder (following links), else None.
    A path that does not exist, or cannot be looked at, is None: the caller reports that its own way."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    return None if stat.S_ISREG(mode) or stat.S_ISDIR(mode) else kind_of(mode)


def check_path(path: str | Path, what: str) -> Path:
    """``path``, once it is known to be a regular file, a folder or absent, with names a file system holds.

    Raises:
        ConfigError: a FIFO, device or socket (it would block or never end), or an over-long name.
    """
    check_name(path, what)
    kind = special(path)
    if kind is not None:
        raise ConfigError(f"The {what} {path} is {kind}, not a file or folder; give a regular file or folder.")
    return Path(path)


ARCHIVE_SUFFIXES = (".tar", ".gz", ".tgz", ".zip", ".npz", ".safetensors", ".pt", ".pth", ".bin", ".toml", ".json")


def looks_local(value: str) -> bool:
    """Whether a value that names no existing file was meant as one: it has a folder part, starts like a path,
    or ends like a file."""
    return ("/" in value or "\\" in value or value.startswith((".", "~"))
            or value.lower().endswith(ARCHIVE_SUFFIXES))


def nearest(path: str | Path) -> str | None:
    """The existing name closest to ``path``'s last part, in its folder (for "did you mean"); None if none is."""
    import difflib

    path = Path(path).expanduser()
    folder = path.parent if str(path.parent) else Path(".")
    try:
        names = [p.name + ("/" if p.is_dir() else "") for p in folder.iterdir() if not p.name.startswith(".")]
    except OSError:
        return None
    close = difflib.get_close_matches(path.name, names, n=1, cutoff=0.6)
    if not close:
        return None
    return close[0] if folder == Path(".") else str(folder / close[0]) + ("/" if close[0].endswith("/") else "")


def no_such(value: str, what: str) -> str:
    """The message for a path that does not exist: the path, and the nearest existing name."""
    hint = nearest(value.rstrip("/"))
    return f"No {what} {value}: no such file or folder" + (f"; did you mean {hint}?" if hint else ".")


__all__ = ["NAME_MAX", "PATH_MAX", "TEXT_LIMIT", "check_name", "check_path", "kind_of", "looks_local", "nearest",
           "no_such", "special"]
