"""The data cache's entries: each checked whole when opened, when each was last used, and which go.

An entry is a folder ``MIXER_FT_CACHE/data/<key>`` whose ``meta.json`` this tool wrote last of its files. Beside
what :mod:`mixer_ft.data.cache` builds, it keeps:

- **Checked when opened** (:func:`check_entry`): its metadata, labels, sizes and the byte counts of its image
  files against each other. A damaged entry (a file cut short, removed or rewritten between runs) is rebuilt
  with one warning, never a traceback.
- **Last use**: the time of ``last_use``, touched each time the entry is opened (where the cache is writable).
- **Eviction** (:func:`evict`): when an entry is built, the entries of older versions of the same source (the
  same folder, read with the same settings, before its files changed) are removed; then, past
  ``MIXER_FT_CACHE_MAX`` bytes, the entries used least recently, never the one in use.
- ``mixer-ft cache`` lists the entries (:func:`entries`) and ``mixer-ft cache clean`` removes them
  (:func:`remove`): only folders this tool made, each under its lock.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from mixer_ft.atomic import locked
from mixer_ft.errors import StorageError
from mixer_ft.publish import public_text
from mixer_ft.settings import setting
from mixer_ft.text import get_logger
from mixer_ft.weights.downloads import cache_dir

log = get_logger(__name__)
LAST_USE = "last_use"


class Damaged(Exception):
    """An entry whose files disagree with each other or with its ``meta.json``: ``str()`` says how."""


def data_root() -> Path:
    """Where the data entries live: ``MIXER_FT_CACHE/data``."""
    return cache_dir() / "data"


def _lock(folder: Path) -> Path:
    return folder.parent / f".{folder.name}.lock"


def check_entry(folder: Path, cache_format: int) -> dict[str, Any]:
    """The entry's ``meta.json``, once its files are known to agree with it.

    Raises:
        Damaged: what is wrong, in a few words.
    """
    try:
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("format") != cache_format:
            raise Damaged(f"written by another version of mixer_ft (format {meta.get('format')})")
        n_classes = len(meta["classes"])
        for split, n in meta["counts"].items():
            labels, shapes = np.load(folder / f"{split}_labels.npy"), np.load(folder / f"{split}_shapes.npy")
            if labels.shape != (n,) or shapes.shape != (n, 2) or (n and not (0 <= labels.min() <= labels.max() < n_classes)):
                raise Damaged(f"its {split} labels or sizes do not match its index")
            if meta["store"] == "encoded":
                offsets = np.load(folder / f"{split}_offsets.npy")
                size = (folder / f"{split}.enc").stat().st_size
                names = (folder / f"{split}_names.txt").stat().st_size
                if offsets.shape != (n + 1,) or offsets[0] != 0 or offsets[-1] != size or (np.diff(offsets) < 0).any() \
                        or (n and not names):
                    raise Damaged(f"its {split} image file is not the size its index says")
            elif (folder / f"{split}.u8").stat().st_size != int((shapes[:, 0] * shapes[:, 1] * 3).sum()):
                raise Damaged(f"its {split} pixels are not the size its index says")
    except (OSError, ValueError, EOFError, KeyError, TypeError, AttributeError) as e:
        raise Damaged(f"{type(e).__name__}: {str(e)[:120]}") from None
    return meta


def touch(folder: Path) -> None:
    """Note that the entry is used now (nothing, where the cache is read-only)."""
    try:
        (folder / LAST_USE).touch()
    except OSError:
        pass


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def _last_use(folder: Path) -> float:
    for name in (LAST_USE, "meta.json"):
        try:
            return (folder / name).stat().st_mtime
        except OSError:
            continue
    return 0.0


def entries() -> list[dict[str, Any]]:
    """Every data entry: key, source, store, images, bytes, last use (seconds since the epoch), identity; the
    least recently used first."""
    root, found = data_root(), []
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if folder.name.startswith(".") or not (folder / "meta.json").is_file():
            continue
        try:
            meta = json.loads((folder / "meta.json").read_text())
        except (OSError, ValueError):
            meta = {}
        counts = meta.get("counts", {}) if isinstance(meta, dict) else {}
        found.append({"key": folder.name, "source": public_text(str(meta.get("location", "?"))),
                      "store": meta.get("store", "?"), "images": sum(counts.values()) if isinstance(counts, dict) else 0,
                      "bytes": _size(folder), "last_use": _last_use(folder), "identity": meta.get("identity"),
                      "path": folder})
    return sorted(found, key=lambda e: e["last_use"])


def remove(folder: Path) -> bool:
    """Remove one entry this tool made, under its lock (an entry being built is left: False). A process that has
    the entry open keeps reading it (its files stay until it closes them)."""
    if not (folder / "meta.json").is_file() or folder.parent != data_root():
        return False
    try:
        with locked(_lock(folder), wait=False):
            shutil.rmtree(folder, ignore_errors=True)
    except StorageError:
        return False
    return True


def evict(kept: Path, identity: str | None) -> None:
    """After ``kept`` is built: remove the entries it supersedes (same ``identity``), then, past
    ``MIXER_FT_CACHE_MAX``, the least recently used others. Each removal is said in one line."""
    bound = setting("MIXER_FT_CACHE_MAX")
    every = entries()
    for entry in every:
        if entry["path"] != kept and identity and entry["identity"] == identity and remove(entry["path"]):
            log.warning("data cache: removed %s, the entry of an older version of %s (%.1f MB)", entry["key"],
                        entry["source"], entry["bytes"] / 1e6)
    if bound is None:
        return
    every = [e for e in entries()]
    total = sum(e["bytes"] for e in every)
    for entry in every:
        if total <= bound:
            return
        if entry["path"] != kept and remove(entry["path"]):
            total -= entry["bytes"]
            log.warning("data cache: removed %s (%s, %.1f MB, last used %s): the cache is past MIXER_FT_CACHE_MAX",
                        entry["key"], entry["source"], entry["bytes"] / 1e6, time.strftime("%Y-%m-%d", time.localtime(
                            entry["last_use"])))
    if total > bound:
        log.warning("data cache: the entry in use alone (%.1f MB) is larger than MIXER_FT_CACHE_MAX (%.1f MB)",
                    total / 1e6, bound / 1e6)


def stale_builds(folder: Path) -> None:
    """Remove what a killed builder of ``folder`` left (``.<key>.*`` folders); call it holding the entry's lock."""
    for stale in folder.parent.glob(f".{folder.name}.*"):
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)


def clean(keys: list[str]) -> str:
    """``mixer-ft cache clean``: remove the entries named by ``keys`` (all, when none), saying what went.

    Raises:
        ConfigError: a key that names no entry.
    """
    from mixer_ft.errors import ConfigError

    every = {e["key"]: e for e in entries()}
    unknown = [k for k in keys if k not in every]
    if unknown:
        raise ConfigError(f"No data cache entry {', '.join(unknown[:5])}; `mixer-ft cache` lists the entries.")
    chosen = [every[k] for k in keys] if keys else list(every.values())
    gone = [e for e in chosen if remove(e["path"])]
    kept = len(chosen) - len(gone)
    return (f"removed {len(gone)} entr{'y' if len(gone) == 1 else 'ies'}, {sum(e['bytes'] for e in gone) / 1e6:,.1f} MB"
            + (f"; {kept} being built by another process stayed" if kept else ""))


def listing(as_json: bool = False) -> str:
    """``mixer-ft cache``'s text: a line per entry, the least recently used first (or them all as JSON)."""
    from mixer_ft.atomic import json_text
    from mixer_ft.text import one_line

    rows = entries()
    if as_json:
        return json_text([{k: str(v) if k == "path" else v for k, v in e.items()} for e in rows])
    if not rows:
        return f"the data cache {data_root()} holds no entries"
    out = [f"{'key':<16}  {'size':>10}  {'images':>9}  {'last use':<16}  store    source"]
    for e in rows:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(e["last_use"]))
        out.append(f"{e['key']:<16}  {e['bytes'] / 1e6:>7.1f} MB  {e['images']:>9,}  {when:<16}  {e['store']:<7}  "
                   f"{one_line(e['source'])}")
    out.append(f"{len(rows)} entr{'y' if len(rows) == 1 else 'ies'}, {sum(e['bytes'] for e in rows) / 1e6:,.1f} MB in "
               f"{data_root()}")
    return "\n".join(out)


__all__ = ["Damaged", "check_entry", "clean", "data_root", "entries", "evict", "listing", "remove", "stale_builds", "touch"]
