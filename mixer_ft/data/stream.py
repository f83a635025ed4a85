"""Streamed data: a set read shard by shard while it trains, never copied whole onto the disk.

For sets larger than the disk, or ones not worth a local copy: webdataset shards on a server (a URL
pattern such as ``https://host/imagenet/{train-{0000..1023},validation-{00..63}}.tar``), a local shard
folder or Hub set with ``--streaming`` (``hf:owner/name`` read through ``datasets`` in streaming mode).
Nothing goes into the data cache; the images are decoded when a batch needs them.

The rules, which follow webdataset and ``datasets`` where they have one:

- **Shuffling.** Each epoch the train shards are shuffled by (seed, epoch), and each shard's samples by
  (seed, epoch, shard): the buffer is one shard, as webdataset's ``shuffle`` with a buffer of its size. A
  shard's samples are held in memory (its size: keep shards to a few hundred MB, as webdataset advises; past
  :data:`MAX_SHARD_BYTES` the rest of a shard is skipped, named in a warning).
- **Processes.** Of each epoch's shard order, process ``r`` of ``W`` reads shards ``r, r + W, ...``: every
  process reads distinct shards, and each goes on into the next epoch's shards when its own run out, so
  none waits for another. When the shards do not divide among the processes, a process reads one shard
  more than another in an epoch (an epoch is a nominal pass; a streamed run is measured in steps). Fewer
  train shards than processes is an error: a process would have nothing to read.
- **Minival.** The last ``ceil(val_fraction x train shards)`` train shards (in name order) are held out as
  minival, as upstream holds out the end of train; the test split is every test (or validation) shard.
- **Resume.** Each process keeps where it stands (epoch, shard, sample) with every checkpoint; a resumed
  run re-reads that shard and goes on at the exact sample, with the same number of processes.
- **Failures.** Each shard is read through the one bounded reader (:mod:`mixer_ft.bounded`): a shard that
  cannot be read to its verified end (cut short, damaged, a stalled, trickling, endless or dropped connection,
  an HTTP error, an HTML page) is named and its lost samples counted (:class:`~mixer_ft.data.loss.DataLoss`);
  its samples before the failure are used and the next shard is read. Past the recipe's ``max_data_loss`` (judged
  once :data:`JUDGE_AFTER` samples are read), or after :data:`FAILED_IN_A_ROW` shards in a row that give
  nothing, the run ends with one message.
- **Names.** A shard URL is printed and recorded without its query or user info (a signed URL's token).
"""

from __future__ import annotations

import hashlib
import math
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mixer_ft.atomic import json_text
from mixer_ft.bounded import Limits, open_url
from mixer_ft.data.class_names import parse_class_list
from mixer_ft.data.loss import DataLoss
from mixer_ft.data.names import canonical_dataset, is_url
from mixer_ft.data.shards import CLASSES_FILE, SHARD, SHARD_BYTES, SPLIT_OF, Shard, ShardReader, labelled_samples
from mixer_ft.errors import ConfigError, DataError, SourceError
from mixer_ft.gate import check_path
from mixer_ft.publish import public_url
from mixer_ft.settings import setting
from mixer_ft.text import get_logger

log = get_logger(__name__)
MAX_SHARD_BYTES = 2 << 30  # of images held from one shard (it and the next are held while they are read)
FAILED_IN_A_ROW = 3  # train shards in a row that give no sample: the stream is down, not one shard damaged
CLASS_LIST_BYTES = 16 << 20  # a classes.txt of 100,000 names is about 2 MB
MAX_PATTERN = 1_000_000  # shard names one URL pattern may expand to
JUDGE_AFTER = 1_000  # samples a stream reads before its loss is judged against max_data_loss (one damaged shard early
# is not yet a share of the set)
Sample = tuple[str, int, bytes]  # (printable name, class, the image file's bytes)


def stream_timeout() -> float:
    """Seconds a stream may go without a byte before it counts as stalled (``MIXER_FT_STREAM_TIMEOUT``)."""
    return setting("MIXER_FT_STREAM_TIMEOUT")


def expand_braces(pattern: str) -> list[str]:
    """webdataset's (and bash's) brace expansion, in bash's order: ``a-{000..002}.tar`` -> a-000.tar, a-001.tar,
    a-002.tar; ``{train-{0..1},test-0}.tar`` -> train-0.tar, train-1.tar, test-0.tar. Ranges keep the first
    bound's zero padding; braces nest. At most :data:`MAX_PATTERN` names, counted before any is made.

    Raises:
        ConfigError: an unclosed brace, a range that counts down, or more names than :data:`MAX_PATTERN`.
    """
    if (n := _expansions(pattern)) > MAX_PATTERN:
        raise ConfigError(f"The shard pattern {public_url(pattern)} names {n:,} shards, more than the {MAX_PATTERN:,} a "
                          "pattern may; check its ranges.")
    return _expand(pattern)


def _braces(pattern: str) -> tuple[int, int, list[int]] | None:
    """(where the first brace opens, where it closes, its top-level commas); None without braces."""
    start = pattern.find("{")
    if start < 0:
        return None
    depth, cuts = 0, []
    for i in range(start, len(pattern)):
        depth += {"{": 1, "}": -1}.get(pattern[i], 0)
        if depth == 1 and pattern[i] == ",":
            cuts.append(i)
        if depth == 0:
            return start, i, cuts
    raise ConfigError(f"The shard pattern {public_url(pattern)} has a '{{' that is never closed.")


def _expansions(pattern: str) -> int:
    """How many names ``pattern`` expands to, counted without making them."""
    found = _braces(pattern)
    if found is None:
        return 1
    start, end, cuts = found
    body, tail = pattern[start + 1:end], _expansions(pattern[end + 1:])
    bounds = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if bounds:
        lo, hi = int(bounds.group(1)), int(bounds.group(2))
        if hi < lo:
            raise ConfigError(f"The shard range {{{body}}} in {public_url(pattern)} must count up.")
        return (hi - lo + 1) * tail
    edges = [start, *cuts, end]
    return sum(_expansions(pattern[edges[k] + 1:edges[k + 1]]) for k in range(len(edges) - 1)) * tail


def _expand(pattern: str) -> list[str]:
    found = _braces(pattern)
    if found is None:
        return [pattern]
    start, i, cuts = found
    head, body, tail = pattern[:start], pattern[start + 1:i], pattern[i + 1:]
    bounds = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if bounds:
        lo, hi = int(bounds.group(1)), int(bounds.group(2))
        options = [str(k).zfill(len(bounds.group(1))) for k in range(lo, hi + 1)]
    else:
        edges = [start, *cuts, i]
        options = [pattern[edges[k] + 1:edges[k + 1]] for k in range(len(edges) - 1)]
    tails = _expand(tail)
    return [head + x + rest for option in options for x in _expand(option) for rest in tails]


def url_shard(url: str) -> Shard:
    """A shard on a server (or a ``file://`` URL), read through the one bounded reader; named without its query.

    Raises:
        ConfigError: a ``file://`` URL of a FIFO, device or socket (the gate, as for a path).
    """
    limits = Limits.of(SHARD_BYTES)
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "file":
        check_path(urllib.request.url2pathname(parts.path), "shard")
    return Shard(public_url(url), lambda: open_url(url, limits))


@dataclass
class StreamedSet:
    """A set read as a stream: its classes and its shards by split (see the module's description).

    ``reading`` turns a shard into its samples; the webdataset tar reader by default.
    """

    source: str
    location: str
    classes: list[str]
    train: list[Shard]
    test: list[Shard]
    test_from: str
    fingerprint: list[Any]
    reading: Callable[[Shard, list[str], DataLoss], Iterator[Sample]] | None = None
    test_images: int = 0  # counted when the test split is scored
    loss: DataLoss = field(default_factory=DataLoss)  # what this process's reading lost, train and scored splits

    def samples(self, shard: Shard, loss: DataLoss) -> Iterator[Sample]:
        """The usable samples of ``shard`` in order; what cannot be used counted in ``loss``."""
        if self.reading is not None:
            return self.reading(shard, self.classes, loss)
        return labelled_samples(shard, self.classes, loss)

    @property
    def manifest(self) -> str:
        """A digest of the shards and classes: the same stream, or not."""
        return hashlib.sha256(json_text([self.fingerprint, self.classes]).encode()).hexdigest()[:16]

    @property
    def dataset_id(self) -> str:
        return canonical_dataset(self.source, self.classes, self.test_images)

    def summary(self, val_fraction: float) -> dict[str, Any]:
        """What ``mixer-ft data`` shows of a stream, read from its names alone: shards by split, and classes."""
        train, minival = self.cut(val_fraction)
        return {"source": public_url(self.source) if is_url(self.source) else self.source, "streamed": True,
                "train_shards": len(train), "minival_shards": len(minival),
                "test_shards": len(self.test), "test_from": self.test_from, "classes": self.classes}

    def cut(self, val_fraction: float) -> tuple[list[Shard], list[Shard]]:
        """(train shards, minival shards): the last ceil(val_fraction x train shards) held out."""
        held = math.ceil(val_fraction * len(self.train)) if val_fraction > 0 else 0
        if held and held >= len(self.train):
            raise ConfigError(f"{self.location} has {len(self.train)} train shard(s): a streamed set takes its minival "
                              f"from whole train shards (val_fraction {val_fraction}: {held}), which would leave none to "
                              "train on. Use --set val_fraction=0 (no minival), or more, smaller shards.")
        return self.train[:len(self.train) - held], self.train[len(self.train) - held:]


def shard_stream(source: str) -> StreamedSet:
    """A webdataset shard folder or URL pattern as a :class:`StreamedSet`; its ``classes.txt`` is needed.

    Raises:
        DataError: no train or test shards, or no ``classes.txt`` (a stream cannot count its classes first).
    """
    if is_url(source):
        urls = expand_braces(source)
        found: dict[str, list[Shard]] = {"train": [], "test": [], "validation": []}
        for url in urls:  # the name says the split; a query (a signed URL's) is not part of it
            match = SHARD.fullmatch(urllib.parse.urlsplit(url).path.rpartition("/")[2])
            if match is None:
                raise ConfigError(f"{public_url(url)} is not a shard name: a shard URL ends in train-*.tar, test-*.tar or "
                                  "validation-*.tar (.tar.gz, .tgz), which say its split.")
            found[SPLIT_OF[match.group(1).lower()]].append(url_shard(url))
        first = urllib.parse.urlsplit(urls[0])
        classes_at = urllib.parse.urlunsplit((first.scheme, first.netloc, first.path.rpartition("/")[0] + "/" + CLASSES_FILE,
                                              first.query, ""))  # with the shards' query: a token for the folder
        classes = parse_class_list(_fetch_text(classes_at), public_url(classes_at))
        test = found["test"] or found["validation"]
        if not found["train"] or not test:
            lacking = "train-*" if not found["train"] else "test-* or validation-*"
            raise DataError(f"{public_url(source)} has no {lacking} shards: a streamed set needs train and test (or "
                            "validation) shards.")
        test_from = "its test-* shards" if found["test"] else "its validation-* shards"
        return StreamedSet(source, public_url(source), classes, found["train"], test, test_from, ["wds-urls", urls])
    reader = ShardReader(Path(source).expanduser())  # a folder: its shards by split and classes.txt, as cached
    if reader.named is None:
        raise DataError(f"{source} has no {CLASSES_FILE}: a streamed set needs its class names before it reads a "
                        "sample. Put one name per line, in class-index order, beside the shards.")
    train, test = ([shard for split, shard in reader.shards if split == want] for want in ("train", "test"))
    return StreamedSet(source, source, reader.named, train, test, reader.test_from, reader.fingerprint())


def _fetch_text(url: str) -> str:
    """A small text file beside the shards (their ``classes.txt``), fetched once through the bounded reader."""
    try:
        with open_url(url, Limits.of(CLASS_LIST_BYTES)) as source:
            return source.read_all().decode("utf-8")
    except (SourceError, OSError, UnicodeDecodeError) as e:
        why = e.why if isinstance(e, SourceError) else "not UTF-8 text" if isinstance(e, UnicodeDecodeError) else str(e)
        raise DataError(f"Could not read {public_url(url)} ({why}): a streamed set needs its class names, one per line "
                        "in class-index order, in classes.txt beside its shards.") from None


class ShardCursor:
    """One process's place in the endless train stream: (epoch, shard of its list, sample of that shard).

    Args:
        data: the set; ``shards``: its train shards (minival taken out); ``seed``: the run's.
        process: (this process's index, the number of processes).
    """

    def __init__(self, data: StreamedSet, shards: list[Shard], seed: int, process: tuple[int, int] = (0, 1),
                 max_loss: float = 1.0) -> None:
        rank, world = process
        if len(shards) < world:
            raise ConfigError(f"{data.location} has {len(shards)} train shard(s) for {world} processes: each process "
                              "reads its own shards, so it needs at least one per process. Use fewer processes, or "
                              "more, smaller shards.")
        self.data, self.shards, self.seed, self.rank, self.world = data, shards, seed, rank, world
        self.epoch, self.k, self.j = 0, 0, 0
        self._held: tuple[tuple[int, int], list[Sample]] | None = None  # (epoch, k) -> its shuffled samples
        self._ahead: tuple[tuple[int, int], Future[list[Sample]]] | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="mixer-ft-shards")  # reads the next shard meanwhile
        self.max_loss = max_loss  # the recipe's max_data_loss: past it (once JUDGE_AFTER samples are read), stop
        self._empty_in_a_row = 0

    def state(self) -> list[int]:
        """Where the cursor stands: [epoch, shard of this process's list, sample]."""
        return [self.epoch, self.k, self.j]

    def load(self, state: list[int]) -> None:
        """Stand where :meth:`state` said."""
        self.epoch, self.k, self.j = (int(v) for v in state)
        self._held = None

    def mine(self, epoch: int) -> np.ndarray:
        """This process's shards (indices into ``shards``) of ``epoch``, in reading order."""
        return np.random.default_rng((self.seed, epoch)).permutation(len(self.shards))[self.rank::self.world]

    def _read(self, epoch: int, k: int) -> list[Sample]:
        index = int(self.mine(epoch)[k])
        samples, held, shard = [], 0, self.shards[index]
        for sample in self.data.samples(shard, self.data.loss):
            samples.append(sample)
            held += len(sample[2])
            if held > MAX_SHARD_BYTES:  # a shard is held whole to be shuffled: memory stays bounded
                self.data.loss.source_failed(shard.name, SourceError(shard.name, (
                    f"too large to hold: more than {MAX_SHARD_BYTES / 2**30:.3g} GiB of images, the rest of it is skipped "
                    "(a shard is held in memory to be shuffled; cut the set into shards of a few hundred MB)")), len(samples))
                break
        if self.data.loss.held >= JUDGE_AFTER:
            self.data.loss.check(self.max_loss, self.data.location)
        order = np.random.default_rng((self.seed, epoch, index)).permutation(len(samples))
        return [samples[i] for i in order]

    def _next(self, epoch: int, k: int) -> tuple[int, int]:
        return (epoch + 1, 0) if k + 1 >= len(self.mine(epoch)) else (epoch, k + 1)

    def _shard(self) -> list[Sample]:
        """The samples of the shard the cursor is in; the next shard's read started in the background."""
        key = (self.epoch, self.k)
        if self._held is None or self._held[0] != key:
            ahead = self._ahead
            samples = ahead[1].result() if ahead is not None and ahead[0] == key else self._read(*key)
            self._held = (key, samples)
            following = self._next(*key)
            self._ahead = (following, self._pool.submit(self._read, *following))
        return self._held[1]

    def take(self, n: int) -> list[Sample]:
        """The next ``n`` samples of this process's stream.

        Raises:
            DataError: :data:`FAILED_IN_A_ROW` shards in a row gave no sample.
        """
        out: list[Sample] = []
        while len(out) < n:
            samples = self._shard()
            if not samples:
                self._empty_in_a_row += 1
                if self._empty_in_a_row >= FAILED_IN_A_ROW:
                    raise DataError(f"{FAILED_IN_A_ROW} shards in a row of {self.data.location} gave no sample (see the "
                                    "warnings above): the stream is down or the shards are not webdataset image shards. "
                                    "Running the same command again resumes from the last checkpoint.")
            else:
                self._empty_in_a_row = 0
            part = samples[self.j:self.j + n - len(out)]
            out += part
            self.j += len(part)
            if self.j >= len(samples):
                (self.epoch, self.k), self.j = self._next(self.epoch, self.k), 0
        return out

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def split_samples(data: StreamedSet, shards: list[Shard], process: tuple[int, int]) -> Iterator[Sample]:
    """Every sample of ``shards`` this process scores: its share of the shards (``r, r + W, ...``), in order."""
    for shard in shards[process[0]::process[1]]:
        yield from data.samples(shard, data.loss)


def is_streamed(source: str, streaming: bool) -> bool:
    """Whether a run reads ``source`` as a stream: asked to (``--streaming``), or a URL pattern of shards."""
    return streaming or is_url(source)


def stream_summary_lines(source: str, shown: dict[str, Any]) -> list[str]:
    """``mixer-ft data --streaming``'s text: what :meth:`StreamedSet.summary` holds, a line each."""
    from mixer_ft.text import one_line

    return [f"{'source':<11} {one_line(shown['source'])} (streamed: read as a run trains, nothing cached)",
            *(f"{split:<11} {shown[f'{split}_shards']:,} shard(s)" for split in ("train", "minival", "test")),
            f"{'test split':<11} {shown['test_from']}",
            f"{'classes':<11} {len(shown['classes'])}: {' '.join(one_line(c) for c in shown['classes'])}"]


__all__ = ["FAILED_IN_A_ROW", "JUDGE_AFTER", "MAX_PATTERN", "MAX_SHARD_BYTES", "Sample", "ShardCursor", "StreamedSet",
           "expand_braces", "is_streamed",
           "shard_stream", "split_samples", "stream_summary_lines", "stream_timeout", "url_shard"]
