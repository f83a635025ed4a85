"""Every environment variable the tool reads, read by one typed reader.

Each variable is one :class:`Setting` in :data:`SETTINGS`: its name, the parser of its text, its default and
what it means. A value that does not parse is one ``error:`` line naming the variable, what it holds, what it
takes and how to get the default back (unset it); an empty value is the default; ``~`` in a folder is the home
folder. Nothing else in the package reads ``os.environ`` for a value (``tests/test_invariants.py`` holds it).
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mixer_ft.errors import ConfigError

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def seconds(raw: str) -> float:
    """A positive, finite number of seconds."""
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise ValueError("a positive number of seconds")
    return value


def whole(raw: str) -> int:
    """A whole number, 1 or more."""
    if not re.fullmatch(r"\+?\d+", raw) or int(raw) < 1:
        raise ValueError("a whole number, 1 or more")
    return int(raw)


def count(raw: str) -> int:
    """A whole number, 0 or more (a process rank)."""
    if not re.fullmatch(r"\+?\d+", raw):
        raise ValueError("a whole number, 0 or more")
    return int(raw)


def size(raw: str) -> int:
    """A size in bytes: ``512``, ``64K``, ``1.5G``, ``2GiB`` (K, M, G, T: powers of 1024)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?", raw.strip().lower())
    if not match:
        raise ValueError("a size in bytes, e.g. 512, 64K, 20G")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def flag(raw: str) -> bool:
    """1, true, yes or on; 0, false, no or off."""
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("1, true, yes or on; or 0, false, no or off")


def hf_flag(raw: str) -> bool:
    """huggingface_hub's own reading of its switches (``HF_HUB_OFFLINE``): true for 1, ON, YES, TRUE; anything
    else is false, never an error (the Hub's libraries read the same variable, and must agree with us)."""
    return raw.strip().upper() in ("1", "ON", "YES", "TRUE")


def folder(raw: str) -> Path:
    """A folder; ``~`` and ``~user`` are home folders."""
    path = os.path.expanduser(raw.strip())
    if path.startswith("~"):
        raise ValueError(f"a folder; {raw.split('/')[0]} names no home folder on this machine")
    return Path(path)


def url(raw: str) -> str:
    """An http:// or https:// address."""
    parts = urllib.parse.urlsplit(raw.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("an http:// or https:// address")
    return raw.strip().rstrip("/")


def choice(*options: str) -> Callable[[str], str]:
    """One of ``options`` (any case)."""
    def parse(raw: str) -> str:
        if raw.strip().lower() not in options:
            raise ValueError(" or ".join(options))
        return raw.strip().lower()
    return parse


@dataclass(frozen=True)
class Setting:
    """One environment variable: its parser, its default (used when unset or empty) and what it sets."""

    name: str
    parse: Callable[[str], Any]
    default: Any
    meaning: str


SETTINGS: dict[str, Setting] = {s.name: s for s in [
    Setting("MIXER_FT_CACHE", folder, Path.home() / ".cache" / "mixer_ft", "where downloads and decoded data live"),
    Setting("MIXER_FT_CACHE_MAX", size, None, "the data cache's size bound: past it, the entries used least "
            "recently are removed (default: no bound)"),
    Setting("MIXER_FT_STORE", choice("auto", "decoded"), "auto", "which data store a cache is built as"),
    Setting("MIXER_FT_WORKERS", whole, None, "processes that decode images into the cache (default: one a core)"),
    Setting("MIXER_FT_STREAM_TIMEOUT", seconds, 60.0, "the seconds a download or stream may go without a byte, and "
            "the window its minimum rate is measured over"),
    Setting("MIXER_FT_STREAM_DEADLINE", seconds, 3600.0, "the most seconds one file, shard or download may take"),
    Setting("MIXER_FT_STREAM_MIN_RATE", size, 1 << 10, "the fewest bytes a second a download or stream may bring, "
            "over each MIXER_FT_STREAM_TIMEOUT window"),
    Setting("MIXER_FT_OFFLINE", flag, False, "no downloads at all"),
    Setting("HF_HUB_OFFLINE", hf_flag, False, "huggingface_hub's switch: no Hub downloads"),
    Setting("HF_ENDPOINT", url, "https://huggingface.co", "the Hugging Face Hub's address"),
    Setting("MIXER_FT_GOOGLE_BASE_URL", url, "https://storage.googleapis.com/mixer_models",
            "where Google's .npz files are fetched from (a mirror)"),
    Setting("MIXER_FT_PUSH_DEADLINE", seconds, 60.0, "the most seconds `mixer-ft push` may take"),
    Setting("OMP_NUM_THREADS", whole, None, "the threads torch computes with on a CPU (default: one a core this process "
            "may use)"),
    Setting("OMP_WAIT_POLICY", choice("active", "passive"), None, "how OpenMP's threads wait: passive sleeps at once, "
            "active spins"),
    Setting("GOMP_SPINCOUNT", count, None, "how many times an idle OpenMP (libgomp) thread spins before it sleeps "
            "(mixer-ft sets 10000 unless this or OMP_WAIT_POLICY is set: benchmarks/threads.py)"),
    Setting("MIXER_FT_HUB_UNREACHABLE", flag, False, "set by the tool itself: this process found the Hub "
            "unreachable and put its clients offline"),
    Setting("MIXER_FT_LAUNCH_STATUS", folder, None, "set by `mixer-ft launch` for the processes it starts: where "
            "each leaves how it ended"),
    Setting("RANK", count, 0, "this process's rank (set by accelerate launch or torchrun)"),
    Setting("LOCAL_WORLD_SIZE", whole, 1, "processes on this machine (set by accelerate launch or torchrun)"),
]}


def setting(name: str) -> Any:
    """The value of the environment variable ``name`` (one of :data:`SETTINGS`), parsed; its default when unset.

    Raises:
        ConfigError: the value does not parse: one line naming the variable, its value and what it takes.
    """
    spec = SETTINGS[name]
    raw = os.environ.get(name, "")
    if not raw.strip():
        return spec.default
    try:
        return spec.parse(raw)
    except ValueError as e:
        shown = raw if len(raw) <= 60 else raw[:60] + "..."
        default = "" if spec.default is None else f" for the default ({spec.default})"
        raise ConfigError(f"The environment variable {name}={shown!r} is not {e}: it sets {spec.meaning}. Set it to "
                          f"one, or unset it{default}.") from None


__all__ = ["SETTINGS", "Setting", "choice", "count", "flag", "folder", "hf_flag", "seconds", "setting", "size", "url",
           "whole"]
