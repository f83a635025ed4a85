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


def check_export(fmt: str, formats: tuple[str, ...], output: str) -> None:
    """``mixer-ft export``'s options, before the model is read: a known format, an output file that is a file's
    name (not a folder), in a folder that can be there."""
    if fmt not in formats:
        raise ConfigError(f"--format {fmt!r}: the formats are {', '.join(formats)}.")
    check_name(output, "--output")
    if not output.strip() or Path(output).is_dir() or output.endswith(("/", "\\")):
        raise ConfigError(f"--output {output!r} names a folder; name the file to write, e.g. model.onnx.")
    if Path(output).suffix.lower() != ".onnx":
        raise ConfigError(f"--output {output}: an ONNX file's name ends in .onnx.")
    check_folder(str(Path(output).parent), "--output's folder")


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
