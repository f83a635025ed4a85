"""Class names: one parser and one set of rules, whatever names them (a ``classes.txt``, class folders, a Hub
set's ``ClassLabel``, a model's ``config.json``).

- A class list (``classes.txt``): one name per line in index order; a byte-order mark and Windows or old Mac line
  ends are taken as a plain text file's; blank lines at the end are nothing, a blank line before a name is refused
  (it would shift every class after it by one); markup (an HTML sign-in page served as the list) is refused.
- Every name: Unicode NFC, bytes that are not UTF-8 as escapes, at most :data:`MAX_NAME` characters; each named
  once. Class folders besides may not differ only by case (a file system may merge them).
- How many: at most :data:`MAX_CLASSES`; a set whose classes are numbered (no names) has no more classes than
  samples, so one ``.cls`` of 1000000000 cannot build a billion names.
"""

from __future__ import annotations

import re
import unicodedata

from mixer_ft.errors import DataError

MAX_CLASSES = 100_000  # ImageNet-21k has 21,843; the largest class lists in use are a few tens of thousands
MAX_NAME = 256
_MARKUP = re.compile(r"<\s*(?:!doctype|html|head|body|meta|script|title|div|form|\?xml)\b|<\s*/\s*[a-z]+\s*>", re.IGNORECASE)


def printable(name: str) -> str:
    """A name as text that prints and writes anywhere: bytes that are not UTF-8 (which Python keeps as
    surrogates) become their \\x escapes."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def class_name(name: str) -> str:
    """A class's name as the tool keeps it: printable, Unicode NFC."""
    return unicodedata.normalize("NFC", printable(name))


def parse_class_list(text: str, where: str) -> list[str]:
    """The class names of a class list (``classes.txt``): one per line, in index order (see the module's rules).

    Raises:
        DataError: markup, a blank line before a name, or names that break :func:`check_class_names`.
    """
    text = text.removeprefix("\ufeff")
    if _MARKUP.search(text) or text.lstrip().startswith("<"):
        raise DataError(f"{where} is markup (an HTML page: a sign-in or error page?), not a class list; it must hold "
                        "one class name per line, in class-index order.")
    lines = text.splitlines()  # \n, \r\n and \r alike
    while lines and not lines[-1].strip():
        lines.pop()  # blank lines at the end shift nothing
    blank = [i + 1 for i, line in enumerate(lines) if not line.strip()]
    if blank:
        raise DataError(f"{where} has a blank line (line {blank[0]}) before a class name: it would shift every class "
                        "after it by one. Remove blank lines: one class name per line, in class-index order.")
    return check_class_names([line.strip() for line in lines], where)


def check_class_names(names: list[str], where: str) -> list[str]:
    """``names`` as the tool keeps them (:func:`class_name`), once they are known to be a class list.

    Raises:
        DataError: no names, more than :data:`MAX_CLASSES`, a name over :data:`MAX_NAME` characters or blank, or
            a name given twice.
    """
    kept = [class_name(n) for n in names]
    if not kept:
        raise DataError(f"{where} names no class: it must hold one class name per line, in class-index order.")
    if len(kept) > MAX_CLASSES:
        raise DataError(f"{where} names {len(kept):,} classes, more than the {MAX_CLASSES:,} a data set may have; is it "
                        "the right file?")
    bad = next((n for n in kept if not n.strip() or len(n) > MAX_NAME), None)
    if bad is not None:
        shown = ascii(bad[:40]) + ("..." if len(bad) > 40 else "")
        raise DataError(f"{where} has a class name that is blank or longer than {MAX_NAME} characters ({shown}); name "
                        "each class in a few words.")
    seen: set[str] = set()
    twice = sorted({n for n in kept if n in seen or seen.add(n)})  # type: ignore[func-returns-value]
    if twice:
        raise DataError(f"{where} names a class twice ({', '.join(ascii(n) for n in twice[:5])}): each class must be "
                        "named once, one per line in class-index order.")
    return kept


def check_folder_classes(folders: set[str], where: str) -> None:
    """Class folders that differ only by case or by Unicode normalisation (``café`` written NFC and NFD) are one
    class spelt twice: refuse, naming them.

    Raises:
        DataError: naming each such pair.
    """
    folded: dict[str, list[str]] = {}
    for c in folders:
        folded.setdefault(class_name(c).casefold(), []).append(c)
    twins = [sorted(v) for v in folded.values() if len(v) > 1]
    if twins:
        raise DataError(f"{where} has class folders that differ only by case or Unicode normalisation: "
                        f"{'; '.join(' and '.join(ascii(c) for c in t) for t in sorted(twins))}. Merge or rename them.")
    if len(folders) > MAX_CLASSES:
        raise DataError(f"{where} has {len(folders):,} class folders, more than the {MAX_CLASSES:,} a data set may have; "
                        "is the class folder one level deeper?")


def numbered_classes(top: int, samples: int, where: str) -> list[str]:
    """Classes named by their numbers, ``"0"`` to ``str(top)``, for a set that names none: bounded by the data.

    Raises:
        DataError: more classes than samples, or than :data:`MAX_CLASSES` (one label's value is not a class list).
    """
    if top + 1 > min(MAX_CLASSES, max(samples, 1)):
        raise DataError(f"{where}'s labels go up to {top:,} over {samples:,} sample(s): as many classes as that cannot "
                        f"be numbered from the data (at most one a sample, and {MAX_CLASSES:,} in all). Give the class "
                        "names (classes.txt: one per line, in class-index order), or check the labels.")
    return [str(i) for i in range(top + 1)]


def is_numbered(names: list[str]) -> bool:
    """Whether ``names`` are the numbers ``"0"``.. in order (a set that named none)."""
    return names == [str(i) for i in range(len(names))]


__all__ = ["MAX_CLASSES", "MAX_NAME", "check_class_names", "check_folder_classes", "class_name", "is_numbered",
           "numbered_classes", "parse_class_list", "printable"]
