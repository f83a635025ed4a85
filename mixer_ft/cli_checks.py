"""Checks of command-line values made before any work starts (torch-free, like the CLI itself)."""

from __future__ import annotations

from pathlib import Path

from mixer_ft.errors import ConfigError
from mixer_ft.gate import check_name


def check_plot(path: str | None) -> None:
    """A --plot is checked before the work it draws: matplotlib is there and the name is an image's."""
    if path is None:
        return
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise ConfigError("--plot needs matplotlib: pip install 'mixer_ft[plot]'.")
    if Path(path).suffix.lower() not in (".png", ".pdf", ".svg", ".jpg", ".jpeg"):
        raise ConfigError(f"--plot {path}: name an image file ending in .png, .pdf, .svg or .jpg.")
    check_folder(str(Path(path).parent), "--plot's folder")


def check_folder(path: str, flag: str) -> None:
    """A folder an option names: given, and not a file."""
    if not path.strip():
        raise ConfigError(f"{flag} needs a folder name.")
    check_name(path, flag)
    if Path(path).exists() and not Path(path).is_dir():
        raise ConfigError(f"{flag} {path} is a file, not a folder.")


def positive_int(text: str, flag: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"{flag} takes a positive integer or 'auto', got {text!r}.")
    return value


__all__ = ["check_folder", "check_plot", "positive_int"]
