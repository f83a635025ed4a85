"""Streams and shards under the folders' invariants (issue 43): every byte source goes through one bounded, verified
reader (mixer_ft/bounded.py), and faults are generated rather than listed: shards cut at any byte or with bytes
flipped, members repeated or oversized, keys written twice; a loopback server that drops, trickles, lies about
lengths, never ends, or answers HTML. The invariant: either every sample a source holds is read, or the loss is
named and counted; memory stays under a bound; the read ends within a deadline."""

import gzip
import http.server
import io
import socket
import tarfile
import threading
import time
import tracemalloc
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mixer_ft.bounded import Limits, open_url
from mixer_ft.data.loss import DataLoss
from mixer_ft.data.shards import Shard, labelled_samples, local_shard, tar_samples
from mixer_ft.data.stream import MAX_PATTERN, expand_braces, url_shard
from mixer_ft.errors import ConfigError, SourceError

FAST = {"MIXER_FT_STREAM_TIMEOUT": "0.5", "MIXER_FT_STREAM_MIN_RATE": "1K", "MIXER_FT_STREAM_DEADLINE": "2"}


def shard_bytes(n: int = 6, seed: int = 0, gz: bool = False, image_bytes: int = 300) -> tuple[bytes, list[tuple[str, bytes]]]:
    """A webdataset shard of ``n`` samples (``<key>.jpg`` of random bytes, ``<key>.cls``), and its (key, image)s."""
    rng, buf, samples = np.random.default_rng(seed), io.BytesIO(), []
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as tar:
        for i in range(n):
            key, image = f"s{i:04d}", rng.integers(1, 255, image_bytes, dtype=np.uint8).tobytes()
            for name, data in ((f"{key}.jpg", image), (f"{key}.cls", str(i % 3).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            samples.append((key, image))
    return buf.getvalue(), samples


def read(shard: Shard) -> tuple[list[tuple[str, dict]], DataLoss]:
    loss = DataLoss()
    return list(tar_samples(shard, loss)), loss


def holds(got: list, samples: list, loss: DataLoss, cut: bool) -> None:
    """The invariant: every sample read and nothing lost, or the loss named (a source with its why) and counted; a
    shard cut short gives exactly its first samples (nothing made up from the damage)."""
    if len(got) == len(samples) and not loss.sources:
        return
    assert loss.sources and loss.sources[0]["why"] and loss.lost >= 1, (len(got), len(samples), loss)
    if cut:
        assert [(k, s["jpg"]) for k, s in got] == samples[:len(got)]


# --------------------------------------------------------------------------- shards: generated damage


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(gz=st.booleans(), at=st.floats(0, 1))
def test_a_shard_cut_at_any_byte_is_read_whole_or_its_loss_is_named_and_counted(tmp_path_factory, gz, at):
    data, samples = shard_bytes(gz=gz)
    path = tmp_path_factory.mktemp("cut") / ("train-0.tar.gz" if gz else "train-0.tar")
    path.write_bytes(data[:int(at * len(data))])
    got, loss = read(local_shard(path))
    holds(got, samples, loss, cut=True)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(gz=st.booleans(), at=st.floats(0, 1, exclude_max=True), bit=st.integers(0, 7))
def test_a_shard_with_a_flipped_bit_anywhere_is_read_whole_or_its_loss_is_named(tmp_path_factory, gz, at, bit):
    """A flip in an image's bytes is read as it is (a tar holds no checksum of its data; the image may then not
    decode, which the cache counts); one in a header, the gzip data or the end-of-archive block is named."""
    data, samples = shard_bytes(gz=gz)
    flipped = bytearray(data)
    flipped[int(at * len(data))] ^= 1 << bit
    path = tmp_path_factory.mktemp("flip") / "train-0.tar"
    path.write_bytes(bytes(flipped))
    got, loss = read(local_shard(path))
    holds(got, samples, loss, cut=False)
    where = int(at * len(data))
    if gz and not 4 <= where <= 9:  # gzip's CRC covers every byte but the header's time, flags and OS fields
        assert loss.sources, where


def test_truncation_at_a_member_edge_and_a_zeroed_header_are_named_though_tarfile_takes_them_for_the_end(tmp_path):
    data, samples = shard_bytes()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        starts = [m.offset for m in tar.getmembers()]
    edge = tmp_path / "edge.tar"
    edge.write_bytes(data[:starts[4]])  # two whole samples, then nothing: no end-of-archive block
    got, loss = read(local_shard(edge))  # the sample being read at the damage may lack members: dropped, counted
    assert len(got) == 1 and "without tar's end-of-archive block" in loss.sources[0]["why"]
    zeroed = bytearray(data)
    zeroed[starts[6]:starts[6] + 512] = bytes(512)  # the 4th sample's header: all zeros, as an end block is
    (tmp_path / "zeroed.tar").write_bytes(bytes(zeroed))
    got, loss = read(local_shard(tmp_path / "zeroed.tar"))
    assert len(got) == 2 and "data after its end-of-archive block" in loss.sources[0]["why"]


def test_a_member_written_twice_drops_its_sample_and_an_oversized_one_is_never_held(tmp_path, monkeypatch):
    from mixer_ft.data import shards

    buf = io.BytesIO()
    big = b"\x01" * (3 << 20)
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, blob in (("a.jpg", b"A"), ("a.cls", b"0"), ("a.jpg", b"B"), ("b.jpg", big), ("b.cls", b"1"),
                           ("c.jpg", b"C"), ("c.txt", big), ("c.cls", b"2")):  # c's extra member: read past, not held
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    (tmp_path / "train-0.tar").write_bytes(buf.getvalue())
    monkeypatch.setattr(shards, "MAX_FILE_BYTES", 1 << 20)
    tracemalloc.start()
    got, loss = read(local_shard(tmp_path / "train-0.tar"))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert [k for k, _ in got] == ["c"] and set(got[0][1]) == {"jpg", "cls"}
    assert loss.skipped == Counter({"sample(s) with a member written twice (webdataset refuses such a shard)": 1,
                                    "sample(s) with a .jpg over 1,048,576 bytes": 1})
    assert peak < (2 << 20), f"{peak:,} bytes held: an oversized member was read into memory"


def test_a_member_declaring_a_gibibyte_ends_its_shard_before_a_byte_of_it_is_decompressed(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, blob in (("a.jpg", b"A"), ("a.cls", b"0")):
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
        huge = tarfile.TarInfo("b.jpg")
        huge.size = 1 << 30
        buf.write(huge.tobuf())  # a header that declares 1 GiB, then (in the gzip stream) zeros that would follow
    path = tmp_path / "train-0.tar.gz"
    path.write_bytes(gzip.compress(buf.getvalue() + bytes(1 << 20)))
    started = time.perf_counter()
    got, loss = read(local_shard(path))
    assert time.perf_counter() - started < 2 and [k for k, _ in got] == ["a"]  # whole: b's header began a new key
    assert "declares 1,073,741,824 bytes, past the 268,435,456 a member may hold" in loss.sources[0]["why"]


def test_one_cls_of_a_billion_cannot_build_a_billion_class_names(tmp_path):
    from test_shards import write_shards

    from mixer_ft.data.cache import load_data
    from mixer_ft.errors import DataError

    write_shards(tmp_path / "s", "train", [(b"1000000000", b"x" * 10), (0, b"y" * 10)], per_shard=4)
    write_shards(tmp_path / "s", "test", [(0, b"z" * 10)], per_shard=4)
    with pytest.raises(DataError, match="labels go up to 1,000,000,000 over"):
        load_data(str(tmp_path / "s"))


def test_a_brace_pattern_of_a_trillion_names_is_refused_before_any_is_made():
    started = time.perf_counter()
    with pytest.raises(ConfigError, match=f"names 1,000,000,000,000 shards, more than the {MAX_PATTERN:,}"):
        expand_braces("http://h/train-{000000..999999}-{000000..999999}.tar")
    assert time.perf_counter() - started < 1
    assert len(expand_braces("train-{0..999}-{0..999}.tar")) == MAX_PATTERN


# --------------------------------------------------------------------------- a loopback server that misbehaves


class Misbehaving(http.server.BaseHTTPRequestHandler):
    """GET /<behaviour>/train-0.tar answers the shard in ``shard`` as the behaviour says."""

    shard = b""
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def head(self, length=None, kind="application/x-tar", chunked=False):
        self.send_response(200)
        self.send_header("Content-Type", kind)
        if length is not None:
            self.send_header("Content-Length", str(length))
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()

    def chunk(self, data):
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

    def do_GET(self):  # noqa: C901 - one branch a behaviour
        how, data = self.path.split("/")[1], self.shard
        try:
            if how == "whole":
                self.head(len(data))
                self.wfile.write(data)
            elif how == "chunked":
                self.head(chunked=True)
                for i in range(0, len(data), 1000):
                    self.chunk(data[i:i + 1000])
                self.wfile.write(b"0\r\n\r\n")
            elif how == "drop":  # closes halfway through a Content-Length body
                self.head(len(data))
                self.wfile.write(data[:len(data) // 2])
            elif how == "chunked-drop":  # closes halfway, never sends the terminating chunk
                self.head(chunked=True)
                self.chunk(data[:len(data) // 2])
            elif how == "longer":  # claims more than it sends
                self.head(len(data) + 5000)
                self.wfile.write(data)
            elif how == "shorter":  # claims less than the shard: the reader stops where it said
                self.head(len(data) // 2)
                self.wfile.write(data)
            elif how == "trickle":  # a byte every 50 ms: never silent for long, never done
                self.head(len(data))
                for b in data:
                    self.wfile.write(bytes([b]))
                    self.wfile.flush()
                    time.sleep(0.05)
            elif how == "endless":  # valid members, forever, at 1 MB/s: only the deadline ends it
                self.head(chunked=True)
                body = data[:-10240] if len(data) > 10240 else data
                members = body.rstrip(b"\0")
                members += bytes(-len(members) % 512)
                while True:
                    self.chunk(members)
                    self.wfile.flush()
                    time.sleep(0.05)
            elif how == "html":
                page = b"<!DOCTYPE html><html><body>Sign in to continue</body></html>"
                self.head(len(page), kind="text/html")
                self.wfile.write(page)
            elif how == "slow-headers":  # the status line, then a header byte every 100 ms, forever
                self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                while True:
                    self.wfile.write(b"a")
                    self.wfile.flush()
                    time.sleep(0.1)
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture
def misbehaving():
    data, samples = shard_bytes(n=40, image_bytes=2000)
    handler = type("Handler", (Misbehaving,), {"shard": data})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", samples
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize("how,why", [
    ("whole", None), ("chunked", None),
    ("drop", "bytes arrived"), ("chunked-drop", "cut short: the connection closed before the body's end"),
    ("longer", "cut short"), ("shorter", "cut short"),
    ("trickle", "too slow"), ("endless", "took longer than 2 s"),
    ("html", "answered with an HTML page"), ("slow-headers", "did not answer within 2 s"),
])
def test_a_server_that_drops_trickles_lies_never_ends_or_answers_html_is_named_within_its_deadline(
        misbehaving, monkeypatch, how, why):
    base, samples = misbehaving
    for key, value in FAST.items():
        monkeypatch.setenv(key, value)
    loss, got, started = DataLoss(), 0, time.perf_counter()
    tracemalloc.start()
    for _ in labelled_samples(url_shard(f"{base}/{how}/train-0.tar?token=SECRET"), ["a", "b", "c"], loss):
        got += 1
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    took = time.perf_counter() - started
    assert took < 6, f"{how}: {took:.1f} s"  # the deadline (2 s) and one idle timeout (0.5 s), with room
    assert peak < 64 << 20, f"{how}: {peak:,} bytes held"
    if why is None:
        assert got == len(samples) and not loss.sources and loss.read == len(samples)
        return
    assert loss.sources and why in loss.sources[0]["why"], loss.sources
    assert "SECRET" not in repr(loss.to_dict()) and loss.sources[0]["source"].endswith("/train-0.tar")
    if how != "endless":
        assert got < len(samples) or loss.lost >= 1


def test_a_fifo_behind_a_file_url_is_refused_at_once(tmp_path):
    import os

    from test_invariants import within

    fifo = tmp_path / "train-0.tar"
    os.mkfifo(fifo)
    with within(10), pytest.raises(ConfigError, match="is a FIFO"):
        url_shard(f"file://{fifo}")
    with within(10), pytest.raises(SourceError, match="is a FIFO"):  # made a FIFO after it was listed
        open_url(f"file://{fifo}", Limits.of(1 << 20))


def test_a_source_larger_than_its_bound_is_refused_before_it_is_read(misbehaving):
    base, _ = misbehaving
    with pytest.raises(SourceError, match="more than the 1,000 such a source may have"):
        open_url(f"{base}/whole/train-0.tar", Limits(1000, 5, 0, 10))
    with pytest.raises(SourceError, match="holds more than the 1,000 bytes"):  # no length said: bounded as it comes
        open_url(f"{base}/chunked/train-0.tar", Limits(1000, 5, 0, 10)).read_all()


def test_a_sixteen_bit_png_costs_a_bounded_multiple_of_its_pixels():
    """175 KB of 16-bit PNG, 81 Mpx: its conversion to 8 bits once made float64 copies of the whole image (1.5 GB
    per decode thread); now a block of rows at a time, then reduced by a whole factor to about its kept size."""
    from PIL import Image

    from mixer_ft.data.images import to_rgb_array

    buf = io.BytesIO()
    Image.fromarray(np.full((9000, 9000), 40000, dtype=np.uint16)).save(buf, format="PNG")
    tracemalloc.start()
    image = to_rgb_array(("wide.png", buf.getvalue), max_side=512)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert image.shape == (512, 512, 3) and int(image.mean()) == round(40000 / 257)
    # the 8-bit image (a byte a pixel) and a block of rows; the whole-image float64 copies were 16 bytes a pixel
    assert peak < 9000 * 9000 * 1.5, f"{peak:,} bytes of numpy arrays for an 81 Mpx image"


def test_idle_deadline_and_rate_are_read_from_the_settings_and_a_bad_one_is_one_line(monkeypatch):
    monkeypatch.setenv("MIXER_FT_STREAM_MIN_RATE", "2M")
    monkeypatch.setenv("MIXER_FT_STREAM_DEADLINE", "90")
    assert Limits.of(5) == Limits(5, 60.0, 2 << 20, 90.0)
    monkeypatch.setenv("MIXER_FT_STREAM_DEADLINE", "soon")
    with pytest.raises(ConfigError, match="MIXER_FT_STREAM_DEADLINE='soon' is not a positive number of seconds"):
        Limits.of(5)


def test_a_socket_that_never_answers_the_request_is_stalled_within_the_idle_timeout(monkeypatch):
    for key, value in FAST.items():
        monkeypatch.setenv(key, value)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)  # accepts the connection, reads nothing, says nothing
    started = time.perf_counter()
    with pytest.raises(SourceError, match="stalled: no data for 0.5 s"):
        open_url(f"http://127.0.0.1:{server.getsockname()[1]}/train-0.tar", Limits.of(1 << 20))
    assert time.perf_counter() - started < 3
    server.close()
