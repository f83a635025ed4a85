"""The one reader every byte source goes through: a file, an HTTP body, a ``file://`` URL, a gzip stream, the
members of a tar archive. A new source of bytes is opened here, never with a bare ``open`` or ``urlopen``.

Each source is read within :class:`Limits`, and its end is verified:

- **Size.** The most bytes it may have is bounded before reading where the source says its size (a file's, a
  ``Content-Length``), and while reading where it does not; a gzip stream's output is bounded as well.
- **Time.** An idle timeout (``MIXER_FT_STREAM_TIMEOUT``: no byte for that long), a minimum rate
  (``MIXER_FT_STREAM_MIN_RATE`` over each window of that timeout: a server that sends a byte every 2 s), and a
  deadline for the whole read (``MIXER_FT_STREAM_DEADLINE``). Time is counted while the reader waits for the
  source, not while its caller works on what it read; opening an HTTP source is bounded by the deadline too.
- **The end.** A ``Content-Length`` body read to its last byte (``http.client`` returns ``b''`` when the
  connection closes early); a chunked body to its terminator; a gzip stream to its trailer (CRC and length); a
  tar archive to its end-of-archive block, with nothing but zeros after it (``tarfile`` takes a damaged header
  after the first, or a file cut at a member's edge, for the end).
- **What it is.** FIFOs, devices and sockets are refused for ``file://`` URLs as for paths, at open and without
  blocking; an HTML page served where a file is expected (a sign-in page) is refused.

Every failure is one :class:`~mixer_ft.errors.SourceError`, naming the source (a URL without its query or user
info: :func:`mixer_ft.publish.public_url`) and what went wrong.
"""

from __future__ import annotations

import functools
import http.client
import io
import os
import stat
import tarfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from mixer_ft.errors import ConfigError, SourceError
from mixer_ft.gate import TEXT_LIMIT, check_name, check_path, kind_of
from mixer_ft.publish import public_url
from mixer_ft.settings import setting

READ_SIZE = 1 << 16  # bytes asked of a source at a time
ZERO_TAIL = 1 << 20  # bytes after a tar's end-of-archive block checked to be zeros (then reading stops)


@dataclass(frozen=True)
class Limits:
    """What one source may cost: ``max_bytes`` it may have; ``idle_s`` with no byte; ``min_rate`` bytes a second
    over each ``idle_s`` window; ``deadline_s`` for the whole read."""

    max_bytes: int
    idle_s: float
    min_rate: int
    deadline_s: float

    @classmethod
    def of(cls, max_bytes: int) -> Limits:
        """The limits the settings give (``MIXER_FT_STREAM_*``), for a source of at most ``max_bytes``."""
        return cls(max_bytes, setting("MIXER_FT_STREAM_TIMEOUT"), setting("MIXER_FT_STREAM_MIN_RATE"),
                   setting("MIXER_FT_STREAM_DEADLINE"))


class Source(io.RawIOBase):
    """A byte source read within its :class:`Limits`; its declared ``size`` (if any) verified at its end.

    ``read(n)`` returns at most ``n`` bytes, fewer when fewer have arrived: a trickling server is seen after
    each arrival, never only after a whole buffer. ``done`` is the bytes read so far; ``ended`` whether the
    source's own end was reached (and verified).
    """

    def __init__(self, raw: Any, name: str, limits: Limits, size: int | None = None) -> None:
        super().__init__()
        self._raw, self.name, self.limits, self.size = raw, name, limits, size
        self.headers = getattr(raw, "headers", None) or http.client.HTTPMessage()  # an HTTP body's headers
        self.done, self.ended, self._waited = 0, False, 0.0
        self._window = (0.0, 0)  # (waiting time, bytes) where the current rate window began
        if size is not None and size > limits.max_bytes:
            raw.close()
            raise SourceError(name, f"it is {size:,} bytes, more than the {limits.max_bytes:,} such a source may have")

    def readable(self) -> bool:
        return True

    def fail(self, why: str) -> SourceError:
        """A :class:`SourceError` for this source, with what was read of it."""
        return SourceError(self.name, why, self.done, self.size)

    def readinto(self, buffer: Any) -> int:  # type: ignore[override]
        want = min(len(buffer), self.limits.max_bytes + 1 - self.done)  # one past the bound: to know it is passed
        if want <= 0 or self.ended:
            return 0
        t0 = time.monotonic()
        try:
            chunk = self._raw.read1(want) if hasattr(self._raw, "read1") else self._raw.read(want)
        except TimeoutError:
            raise self.fail(f"stalled: no data for {self.limits.idle_s:g} s (MIXER_FT_STREAM_TIMEOUT)") from None
        except http.client.IncompleteRead:
            raise self.fail("cut short: the connection closed before the body's end") from None
        except (OSError, http.client.HTTPException, ValueError) as e:
            raise self.fail(f"connection lost ({type(e).__name__})") from None
        n = len(chunk)
        self.done += n
        self._clock(time.monotonic() - t0)
        if not n:
            if self.size is not None and self.done != self.size:
                raise self.fail(f"cut short: {self.done:,} of its {self.size:,} bytes arrived")
            self.ended = True
            return 0
        buffer[:n] = chunk
        if self.done > self.limits.max_bytes:
            raise self.fail(f"it holds more than the {self.limits.max_bytes:,} bytes such a source may have")
        return n

    def _clock(self, waited: float) -> None:
        """Count time spent waiting for the source; past the deadline, or under the minimum rate over a window,
        the source fails."""
        self._waited += waited
        lim = self.limits
        if self._waited > lim.deadline_s:
            raise self.fail(f"reading it took longer than {lim.deadline_s:g} s (MIXER_FT_STREAM_DEADLINE)")
        began, had = self._window
        span = self._waited - began
        if span >= lim.idle_s:
            rate = (self.done - had) / span
            if rate < lim.min_rate:
                raise self.fail(f"too slow: {rate:,.0f} bytes/s over {span:.0f} s, under the {lim.min_rate:,} "
                                "bytes/s a source must keep up (MIXER_FT_STREAM_MIN_RATE)")
            self._window = (self._waited, self.done)

    def read_all(self) -> bytes:
        """The whole source (within its limits), its end verified."""
        chunks = []
        while chunk := self.read(READ_SIZE):
            chunks.append(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


def open_file(path: str | Path, name: str, limits: Limits) -> Source:
    """A local file as a :class:`Source`, its size known. A FIFO, device or socket is refused without blocking
    (opened non-blocking, then looked at): what the path is when it is opened, not when it was listed.

    Raises:
        OSError: it cannot be opened (no such file, no permission), as ``open`` says it.
        SourceError: it is not a regular file, or larger than ``limits`` allow.
    """
    check_name(path, "file")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    mode = os.fstat(fd)
    if not stat.S_ISREG(mode.st_mode):
        os.close(fd)
        raise SourceError(name, f"it is {kind_of(mode.st_mode)}, not a regular file")
    os.set_blocking(fd, True)
    return Source(os.fdopen(fd, "rb"), name, limits, size=mode.st_size)


def read_bytes(path: str | Path, what: str, limit: int = TEXT_LIMIT) -> bytes:
    """The whole of a small file (a recipe, a config.json, a record, a class list) through the gate and
    :func:`open_file`, never more than ``limit`` bytes read.

    Raises:
        ConfigError: what :func:`~mixer_ft.gate.check_path` refuses, a file larger than ``limit``, or one that
            cannot be read whole.
        OSError: it cannot be opened (``FileNotFoundError`` for a path that does not exist).
    """
    path = check_path(path, what)
    try:
        with open_file(path, str(path), Limits.of(limit)) as source:
            return source.read_all()
    except SourceError as e:
        if e.read > limit or (e.size or 0) > limit:
            raise ConfigError(f"The {what} {path} is larger than the {limit >> 20} MiB such a file may have; "
                              "is it the right file?") from None
        raise ConfigError(f"The {what} {path} could not be read: {e.why}.") from None


def read_file(path: str | Path, name: str, limit: int) -> bytes:
    """The whole of a file (an image, a data file) of at most ``limit`` bytes, through :func:`open_file`.

    Raises:
        OSError: it cannot be opened. SourceError: not a regular file, larger than ``limit``, or cut short.
    """
    with open_file(path, name, Limits.of(limit)) as source:
        return source.read_all()


def read_text(path: str | Path, what: str, limit: int = TEXT_LIMIT) -> str:
    """:func:`read_bytes` decoded as UTF-8; a byte-order mark at its start (as Windows editors write) dropped.

    Raises:
        ConfigError: as :func:`read_bytes`, or text that is not UTF-8.
    """
    try:
        return read_bytes(path, what, limit).decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        raise ConfigError(f"The {what} {path} is not UTF-8 text ({e.reason} at byte {e.start}).") from None


class _Watch:
    """The sockets an HTTP open made; :meth:`expire` shuts them, which ends a read blocked on any of them."""

    def __init__(self) -> None:
        self.sockets: list[Any] = []
        self.expired = False

    def expire(self) -> None:
        self.expired = True
        for sock in self.sockets:
            try:
                sock.shutdown(2)
            except OSError:
                pass


class _Registers:
    """A connection that registers its socket with a :class:`_Watch` as soon as it connects."""

    def __init__(self, *args: Any, watch: _Watch, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[call-arg]
        self._watch = watch

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        self._watch.sockets.append(self.sock)  # type: ignore[attr-defined]


class _WatchedHTTP(_Registers, http.client.HTTPConnection):
    pass


class _WatchedHTTPS(_Registers, http.client.HTTPSConnection):
    pass


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, watch: _Watch) -> None:
        super().__init__()
        self.watch = watch

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(functools.partial(_WatchedHTTP, watch=self.watch), req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, watch: _Watch) -> None:
        super().__init__()
        self.watch = watch

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(functools.partial(_WatchedHTTPS, watch=self.watch), req, context=self._context)


def _why_not_opened(e: BaseException, watch: _Watch, limits: Limits) -> str:
    """Why an HTTP request got no response, in a few words."""
    if watch.expired:
        return f"the server did not answer within {limits.deadline_s:g} s (MIXER_FT_STREAM_DEADLINE)"
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    reason = getattr(e, "reason", e)
    if isinstance(reason, TimeoutError) or isinstance(e, TimeoutError):
        return f"stalled: no data for {limits.idle_s:g} s (MIXER_FT_STREAM_TIMEOUT)"
    if isinstance(e, urllib.error.URLError):
        return f"unreachable: {reason}"
    return f"connection lost ({type(e).__name__})"


def open_url(url: str, limits: Limits, *, html: bool = False) -> Source:
    """An ``http://``, ``https://`` or ``file://`` URL as a :class:`Source` (named by :func:`public_url`).

    Args:
        html: whether an HTML page is what is wanted; else a page served as ``text/html`` is refused.
    """
    name = public_url(url)
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise SourceError(name, "a file:// URL names a file on this machine (file:///path), not on another host")
        return open_file(urllib.request.url2pathname(parts.path), name, limits)
    watch = _Watch()
    opener = urllib.request.build_opener(_HTTPHandler(watch), _HTTPSHandler(watch))
    request = urllib.request.Request(name if parts.query == "" else f"{name}?{parts.query}")  # no user info in it
    if parts.username is not None:  # user:password@host, sent as HTTP Basic authentication (as curl does)
        import base64

        pair = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
        request.add_unredirected_header("Authorization", "Basic " + base64.b64encode(pair.encode()).decode())
    timer = threading.Timer(limits.deadline_s, watch.expire)  # status line and headers: a trickle is cut here
    timer.daemon = True
    timer.start()
    try:
        response = opener.open(request, timeout=limits.idle_s)
    except (OSError, http.client.HTTPException, ValueError) as e:
        raise SourceError(name, _why_not_opened(e, watch, limits)) from None
    finally:
        timer.cancel()
    if watch.expired:  # cut while its headers trickled in: http.client takes the cut for their end
        response.close()
        raise SourceError(name, _why_not_opened(TimeoutError(), watch, limits))
    if not html and response.headers.get_content_type() == "text/html":
        response.close()
        raise SourceError(name, "the server answered with an HTML page (Content-Type text/html), not the file: a "
                                "sign-in, error or index page?")
    return Source(response, name, limits, size=response.length)  # None when chunked: its terminator is checked


def open_source(location: str, name: str, limits: Limits) -> Source:
    """A URL (``http(s)://``, ``file://``) or a local path as a :class:`Source`."""
    if "://" in location:
        return open_url(location, limits)
    return open_file(location, name, limits)


class Gunzip(io.RawIOBase):
    """A gzip stream's bytes, decompressed: each member's trailer (CRC-32, length) verified, zero padding after
    the last member allowed, its output bounded by ``limit``."""

    def __init__(self, reader: IO[bytes], source: Source, limit: int) -> None:
        super().__init__()
        self.reader, self.source, self.limit, self.total = reader, source, limit, 0
        self._d, self._in, self._out = zlib.decompressobj(31), b"", memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:  # type: ignore[override]
        while not self._out:
            if self._d.eof and not self._next_member():
                return 0
            data = self._in or self.reader.read1(READ_SIZE)  # type: ignore[attr-defined]
            if not data:
                raise self.source.fail("cut short: its gzip stream ends before its end")
            try:
                out = self._d.decompress(data, READ_SIZE)
            except zlib.error as e:
                raise self.source.fail(f"damaged: its gzip data does not decompress ({e})") from None
            self._in = self._d.unconsumed_tail
            self.total += len(out)
            if self.total > self.limit:
                raise self.source.fail(f"it decompresses to more than the {self.limit:,} bytes it may hold")
            self._out = memoryview(out)
        n = min(len(buffer), len(self._out))
        buffer[:n] = self._out[:n]
        self._out = self._out[n:]
        return n

    def _next_member(self) -> bool:
        """After a member's trailer: whether another member follows (zero padding, then the end, ends it)."""
        rest = self._d.unused_data
        while not rest.strip(b"\0"):
            rest = self.reader.read1(READ_SIZE)  # type: ignore[attr-defined]
            if not rest:
                return False
        rest = rest.lstrip(b"\0")
        if not rest.startswith(b"\x1f\x8b"):
            raise self.source.fail("damaged: bytes that are not gzip after its gzip stream's end")
        self._d, self._in = zlib.decompressobj(31), rest
        return True

    def close(self) -> None:
        self.reader.close()
        super().close()


def decompressed(source: Source, limit: int) -> io.BufferedReader:
    """``source`` as its bytes: gunzipped where it starts as gzip does, as it is otherwise."""
    reader = io.BufferedReader(source, READ_SIZE)
    if reader.peek(2)[:2] == b"\x1f\x8b":
        return io.BufferedReader(Gunzip(reader, source, limit), READ_SIZE)  # type: ignore[arg-type]
    return reader


class _EndSeen(tarfile.TarInfo):
    """A TarInfo that notes on its archive how the member list ended (tarfile keeps it to itself)."""

    @classmethod
    def fromtarfile(cls, tar: tarfile.TarFile) -> tarfile.TarInfo:
        try:
            return super().fromtarfile(tar)
        except tarfile.HeaderError as e:
            tar._mixer_ft_end = e  # type: ignore[attr-defined]
            raise


def open_tar(fileobj: IO[bytes] | None = None, path: str | Path | None = None) -> tarfile.TarFile:
    """A tar archive read in one pass from ``fileobj`` (never seeked), or from ``path`` (its index read first);
    :func:`check_tar_end` then says whether it ended as a tar archive ends."""
    if fileobj is not None:
        return tarfile.open(fileobj=fileobj, mode="r|", tarinfo=_EndSeen)
    return tarfile.open(path, tarinfo=_EndSeen)


def check_tar_end(tar: tarfile.TarFile, name: str, rest: IO[bytes] | None = None) -> None:
    """Whether the member list of ``tar`` (read to its end) ended at tar's end-of-archive block. ``rest``: the
    stream the archive was read from, whose next :data:`ZERO_TAIL` bytes must then be zeros (a header zeroed in
    the middle of an archive looks like its end).

    Raises:
        SourceError: cut short (no end-of-archive block) or damaged (an invalid header, data after the end).
    """
    end = getattr(tar, "_mixer_ft_end", None)
    if isinstance(end, (tarfile.EmptyHeaderError, tarfile.TruncatedHeaderError)):
        raise SourceError(name, "cut short: it ends without tar's end-of-archive block")
    if end is not None and not isinstance(end, tarfile.EOFHeaderError):
        raise SourceError(name, f"damaged: a member's header is not valid ({end})")
    if rest is not None:
        seen = 0
        while seen < ZERO_TAIL and (chunk := rest.read(READ_SIZE)):
            if chunk.strip(b"\0"):
                raise SourceError(name, "damaged: data after its end-of-archive block (a member's header zeroed?)")
            seen += len(chunk)


def members(tar: tarfile.TarFile, name: str, limit: int, member_limit: int) -> Iterator[tarfile.TarInfo]:
    """The members of a tar archive read in one pass. A member declaring more than ``member_limit`` bytes, or one
    that would take the archive past ``limit``, ends it once its header is seen and before its bytes are read (in a
    compressed archive a member is skipped only by decompressing it); its caller must not read it.

    Raises:
        SourceError: such a member (named, with its declared size).
    """
    for member in tar:
        yield member  # its header (which ends the sample before it); its bytes are read only after this
        if member.size > member_limit or member.offset_data + member.size > limit:
            bound = f"the {member_limit:,} a member" if member.size > member_limit else f"the {limit:,} the archive"
            raise SourceError(name, f"its member {member.name[:80]!r} declares {member.size:,} bytes, past {bound} may "
                              "hold: the rest of it is not read")


__all__ = ["READ_SIZE", "Gunzip", "Limits", "Source", "check_tar_end", "decompressed", "members", "open_file", "open_source",
           "open_tar", "open_url", "read_bytes", "read_file", "read_text"]
