"""Text the tool prints and writes: any name (a class folder, a file) on one line, whatever it holds.

A class folder may be named with a newline, a tab or a ``|``: printed as is, it would break a table row, a
CSV line or the model card's markdown. These escape what would, and nothing else.
"""

from __future__ import annotations

import re

_BREAKS = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")


def one_line(text: object) -> str:
    """``text`` with line breaks, tabs and other control characters written as escapes (``\\n``, ``\\x1b``)."""
    return _BREAKS.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(text))


def md_cell(text: object) -> str:
    """``text`` for a markdown table cell: one line, ``|`` and backslashes escaped."""
    return one_line(text).replace("\\", "\\\\").replace("|", "\\|")


__all__ = ["md_cell", "one_line"]
