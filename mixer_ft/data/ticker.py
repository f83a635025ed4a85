"""Progress a person sees while waiting: a bar on a terminal; in a log or a pipe, where a bar is
noise, one line every few seconds and one at the end. No torch here: the data command uses it."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


class Ticker:
    """Counts work done of a total that may become known later (``total``).

    Args:
        desc: what is being waited for, e.g. "decoding photos".
        every: seconds between lines when the stream is not a terminal.
    """

    def __init__(self, desc: str, total: int | None = None, unit: str = "img", every: float = 10.0,
                 stream: TextIO | None = None) -> None:
        self.desc, self.unit, self.every, self.done = desc, unit, every, 0
        self.stream = stream or sys.stderr
        self.start = self.last = time.perf_counter()
        self.bar: Any = None
        if self.stream.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit, file=self.stream, leave=False, dynamic_ncols=True)
        self._total = total

    @property
    def total(self) -> int | None:
        return self._total

    @total.setter
    def total(self, n: int | None) -> None:
        if n == self._total:  # set for every image while decoding: redraw only when it changes
            return
        self._total = n
        if self.bar is not None:
            self.bar.total = n
            self.bar.refresh()

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif time.perf_counter() - self.last >= self.every:
            self._line()

    def _line(self) -> None:
        self.last = now = time.perf_counter()
        of = f"/{self._total:,}" if self._total else ""
        rate = self.done / max(now - self.start, 1e-9)
        print(f"{self.desc}: {self.done:,}{of} {self.unit} ({rate:,.1f} {self.unit}/s)", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.done and time.perf_counter() - self.start >= self.every:
            self._line()  # a wait long enough to have shown lines ends with the final count

    def __enter__(self) -> Ticker:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


__all__ = ["Ticker"]
