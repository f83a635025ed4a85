"""Text the tool prints and writes: any name (a class folder, a file) on one line, whatever it holds.

A class folder may be named with a newline, a tab, a ``|`` or a terminal's escape codes: printed as is, it would
break a table row, a CSV line or the model card's markdown, or drive the terminal. :func:`one_line` escapes what
would, and nothing else; every warning the package logs passes through it (:func:`get_logger`), as does every
``error:`` line (:mod:`mixer_ft.exits`).
"""

from __future__ import annotations

import logging
import re

_BREAKS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")  # C0 and C1 controls (ESC, CSI), DEL, line breaks


def one_line(text: object) -> str:
    """``text`` with line breaks, tabs and other control characters written as escapes (``\\n``, ``\\x1b``)."""
    return _BREAKS.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(text))


def md_cell(text: object) -> str:
    """``text`` for a markdown table cell: one line, ``|`` and backslashes escaped."""
    return one_line(text).replace("\\", "\\\\").replace("|", "\\|")


class _OneLine(logging.Filter):
    """Each record's message, its arguments filled in, made :func:`one_line` (a file name's escape codes included)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        record.msg, record.args = one_line(message), None
        return True


def get_logger(name: str) -> logging.Logger:
    """The package's logger for module ``name``: what it logs is printed on one line, escapes and all."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, _OneLine) for f in logger.filters):
        logger.addFilter(_OneLine())
    return logger


__all__ = ["get_logger", "md_cell", "one_line"]
