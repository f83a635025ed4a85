"""What reading a data set lost, counted in one place: samples skipped by kind, and sources (shards, files, streams)
that ended early or damaged, each named once with the samples read from it and those lost.

A run records this as ``data_loss`` and goes on only while the share lost is within the recipe's
``max_data_loss``; past it, it stops with one line naming the sources (:meth:`DataLoss.check`).

The samples a damaged source lost are estimated: from the bytes not read where the source's size is known (a
file's, a ``Content-Length``), else as the mean of the sources read whole; at least the one being read.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from mixer_ft.errors import DataError, SourceError
from mixer_ft.publish import public_text
from mixer_ft.text import get_logger

log = get_logger(__name__)


def why_unread(error: BaseException) -> str:
    """Why a source could not be read whole, in a few words."""
    if isinstance(error, SourceError):
        return error.why
    if isinstance(error, EOFError) or "unexpected end of data" in str(error):
        return "cut short: it ends inside a member's data"
    if isinstance(error, OSError) and not type(error).__module__.startswith("tarfile"):
        return f"unreadable: {error.strerror or error}"
    return f"damaged: {error or type(error).__name__}"


@dataclass
class DataLoss:
    """Samples read from the sources (``read``: those skipped among them), samples skipped by kind, and sources that
    could not be read whole, each with the samples it is estimated to have lost."""

    read: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    sources: list[dict[str, Any]] = field(default_factory=list)
    whole: int = 0  # sources read to their verified end

    def skip(self, why: str, n: int = 1) -> None:
        """Count ``n`` samples read but not used, for ``why`` (a kind, said together by :meth:`report`)."""
        self.skipped[why] += n

    def source_read(self, samples: int) -> None:
        """A source read to its verified end, with ``samples`` samples (used or skipped)."""
        self.read += samples
        self.whole += 1

    def source_failed(self, name: str, error: BaseException, samples: int, done: int = 0, size: int | None = None) -> None:
        """A source that ended early or damaged after ``samples`` samples (``done`` of its ``size`` bytes read,
        where known): counted, and named in one warning."""
        why = why_unread(error)
        self.read += samples
        source = {"source": public_text(name), "why": public_text(why), "samples_read": samples, "bytes_read": done,
                  "bytes_size": size}
        self.sources.append(source)
        log.warning("%s could not be read to its end (%s): %d sample(s) read from it, about %d lost; the other sources "
                    "are read", public_text(name), public_text(why), samples, self._estimate(source))

    def _estimate(self, source: dict[str, Any]) -> int:
        """The samples a damaged source lost: from the bytes it did not give, where its size says how many it
        had; else what the sources read whole hold on average, less what it gave; at least the one being read."""
        samples, done, size = source["samples_read"], source.get("bytes_read") or 0, source.get("bytes_size")
        if "bytes_read" not in source:  # a record of an older release: as it was counted then
            return int(source.get("samples_lost", 1))
        if size and done and samples and done < size:
            lost = samples * (size - done) / done
        else:
            mean = (self.read - sum(s["samples_read"] for s in self.sources)) / self.whole if self.whole else 0.0
            lost = mean - samples
        return max(1, math.ceil(lost))

    @property
    def unread(self) -> int:
        """Samples the damaged sources are estimated to have lost."""
        return sum(self._estimate(s) for s in self.sources)

    @property
    def lost(self) -> int:
        """Samples not used: skipped, or lost with their source."""
        return sum(self.skipped.values()) + self.unread

    @property
    def held(self) -> int:
        """Samples the sources held: those read, and those lost unread."""
        return self.read + self.unread

    @property
    def fraction(self) -> float:
        """The share of the samples the sources held that were lost."""
        return self.lost / max(self.held, 1)

    def merge(self, other: DataLoss) -> DataLoss:
        """This loss and ``other``'s together (another process's, another split's)."""
        return DataLoss(self.read + other.read, self.skipped + other.skipped, self.sources + other.sources,
                        self.whole + other.whole)

    def report(self, location: str) -> None:
        """One warning: what of ``location`` was skipped, counted by kind."""
        if self.skipped:
            log.warning("%s: skipped %s", public_text(location),
                        "; ".join(f"{n} {why}" for why, n in sorted(self.skipped.items())))

    def to_dict(self) -> dict[str, Any]:
        """As a run record and the cache hold it."""
        sources = [s | {"samples_lost": self._estimate(s)} for s in self.sources]
        return {"samples_read": self.read, "samples_lost": self.lost, "fraction": round(self.fraction, 6),
                "skipped": dict(sorted(self.skipped.items())), "sources": sources, "sources_whole": self.whole}

    @classmethod
    def from_dict(cls, saved: dict[str, Any] | None) -> DataLoss:
        saved = saved or {}
        return cls(int(saved.get("samples_read", 0)), Counter(saved.get("skipped", {})), list(saved.get("sources", [])),
                   int(saved.get("sources_whole", 0)))

    def check(self, bound: float, location: str) -> None:
        """Stop when more than ``bound`` of the samples were lost (the recipe's ``max_data_loss``).

        Raises:
            DataError: one line: how much was lost, the sources and kinds, and what to do.
        """
        if self.fraction <= bound:
            return
        named = [f"{s['source']} ({s['why']})" for s in self.sources[:3]] + \
                [f"{n} {why}" for why, n in sorted(self.skipped.items())[:3]]
        more = len(self.sources) + len(self.skipped) - len(named)
        raise DataError(f"{public_text(location)} lost {self.lost:,} of about {self.held:,} samples "
                        f"({self.fraction:.1%}), more than max_data_loss ({bound:.1%}) allows: {'; '.join(named)}"
                        f"{f'; and {more} more' if more else ''}. Repair or fetch again what is named, or accept the loss "
                        f"with --set max_data_loss={min(1.0, math.ceil(self.fraction * 100 + 1) / 100):g}.")


def estimate_note(loss: DataLoss) -> str | None:
    """A line for ``mixer-ft data``: what was lost, where anything was."""
    if not loss.lost:
        return None
    return (f"{loss.lost:,} sample(s) lost ({loss.fraction:.1%}): {len(loss.sources)} source(s) cut short or damaged, "
            f"{sum(loss.skipped.values()):,} sample(s) skipped")


__all__ = ["DataLoss", "estimate_note", "why_unread"]
