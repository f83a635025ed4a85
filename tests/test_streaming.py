"""Streamed sets (issue 35): webdataset shards read shard by shard while a run trains (a folder with --streaming, or
a URL pattern served here on loopback), and a Hub-format set through `datasets` in streaming mode. Nothing goes
into the data cache; processes read distinct shards; a stopped run resumes at the exact sample; a stalled or dead
server is named, and a stream that gives nothing ends the run with one line."""

import http.server
import json
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_invariants import TINY, one_error_line
from test_shards import CLASSES, images_of, write_shards

from conftest import REPO, run_cli, signal_once_written
from mixer_ft.data.stream import ShardCursor, expand_braces, shard_stream
from mixer_ft.errors import ConfigError


@pytest.fixture(scope="module")
def shards(cifar_subset, tmp_path_factory):
    """Real CIFAR-10 JPEGs as 6 train shards of 20 and 3 test shards of 10, with classes.txt."""
    cut, folder = cifar_subset(train=12, test=3), tmp_path_factory.mktemp("wds") / "shards"
    write_shards(folder, "train", images_of(cut, "train"), per_shard=20)
    write_shards(folder, "test", images_of(cut, "test"), per_shard=10)
    (folder / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return folder


class Server(http.server.SimpleHTTPRequestHandler):
    """Serves the shard folder; a shard named in ``stall`` sends its headers and half its bytes, then nothing; one
    named in ``refuse`` is answered 503."""

    stall: set[str] = set()
    refuse: set[str] = set()

    def log_message(self, *args):
        pass

    def do_GET(self):
        name = self.path.rpartition("/")[2]
        if name in self.refuse:
            return self.send_error(503)
        if name not in self.stall:
            return super().do_GET()
        data = (Path(self.directory) / name).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[:len(data) // 2])
        self.wfile.flush()
        time.sleep(4)  # past the client's stream timeout


@pytest.fixture
def server(shards):
    """The shard folder on a loopback HTTP server: (its base URL, the shard names that stall, those refused)."""
    stall, refuse = set(), set()
    handler = type("Handler", (Server,), {"stall": stall, "refuse": refuse})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: handler(*a, directory=str(shards)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", stall, refuse
    httpd.shutdown()
    httpd.server_close()


def finetune(tmp_path, dataset, name, *extra, steps=4, env=None):
    return run_cli("finetune", "--dataset", dataset, "--steps", steps, "--batch", 8, "--warmup", 0, "--eval-every", 0,
                   "--output-dir", tmp_path / name, "--set", f'results_dir="{tmp_path / "results"}"', "--set",
                   f'name="{name}"', "--mixed-precision", "no", *TINY, *extra, cwd=REPO, env=env)


def test_brace_patterns_expand_as_webdataset_does():
    assert expand_braces("s/train-{000..002}.tar") == ["s/train-000.tar", "s/train-001.tar", "s/train-002.tar"]
    assert expand_braces("{train-{8..10},test-0}.tar") == ["train-8.tar", "train-9.tar", "train-10.tar", "test-0.tar"]
    assert expand_braces("plain.tar") == ["plain.tar"]
    with pytest.raises(ConfigError, match="must count up"):
        expand_braces("train-{5..1}.tar")


@pytest.mark.parametrize("world", [1, 2, 4])
def test_processes_read_distinct_shards_and_every_shard_once_an_epoch_whatever_their_number(shards, world):
    """6 shards over 4 processes do not divide: two read 2 shards an epoch, two read 1, and each goes on into the
    next epoch's shards; within an epoch no shard is read twice and none is left out."""
    data = shard_stream(str(shards))
    cursors = [ShardCursor(data, data.train, seed=3, process=(r, world)) for r in range(world)]
    per_epoch = [np.concatenate([c.mine(e) for c in cursors]) for e in range(3)]
    assert all(sorted(p) == list(range(6)) for p in per_epoch)
    assert [len(c.mine(0)) for c in cursors] == [len(range(r, 6, world)) for r in range(world)]
    assert not np.array_equal(per_epoch[0], per_epoch[1]), "each epoch reshuffles the shards"
    seen = [Counter(s[0].split(":")[0] for s in c.take(20 * len(c.mine(0)))) for c in cursors]
    assert all(not (set(a) & set(b)) for i, a in enumerate(seen) for b in seen[i + 1:]), "distinct shards"
    assert sum(sum(s.values()) for s in seen) == 120 and all(n == 20 for s in seen for n in s.values())
    for c in cursors:
        c.close()
    with pytest.raises(ConfigError, match="6 train shard"):
        ShardCursor(data, data.train, seed=0, process=(0, 7))


def test_a_cursor_put_back_where_it_stood_gives_the_same_samples(shards):
    data = shard_stream(str(shards))
    a = ShardCursor(data, data.train, seed=1)
    a.take(37)
    state, rest = a.state(), [s[0] for s in a.take(50)]  # crosses shard and epoch boundaries
    b = ShardCursor(data, data.train, seed=1)
    b.load(state)
    assert [s[0] for s in b.take(50)] == rest
    a.close()
    b.close()


def test_a_streamed_run_over_http_trains_without_a_cache_and_scores_every_test_image(shards, server, tmp_path):
    base, _, _ = server
    env = {"MIXER_FT_CACHE": str(tmp_path / "cache")}
    # With a query, as a signed URL has: the split comes from the path; classes.txt is beside it
    out = finetune(tmp_path, base + "/{train-{00000..00005},test-{00000..00002}}.tar?token=abc", "http", "--set",
                   "val_fraction=0.2", env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    record = json.loads((tmp_path / "results" / "http.json").read_text())
    assert record["streamed"] and record["classes"] == CLASSES
    assert record["test_images"] == 30 and record["minival_images"] == 40  # ceil(0.2 x 6) = 2 shards held out
    assert not (tmp_path / "cache" / "data").exists() or not any((tmp_path / "cache" / "data").iterdir())
    dry = run_cli("finetune", "--dataset", base + "/{train-0,test-0}.tar", "--dry-run", cwd=REPO)
    assert 'streaming = true  # rule (a shard URL is always streamed)' in dry.stdout, dry.stdout[-2000:]
    shown = run_cli("data", base + "/{train-{00000..00005},test-{00000..00002}}.tar", "--val-fraction", "0.2", "--json")
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert {k: v for k, v in json.loads(shown.stdout).items() if k.endswith("_shards")} == \
        {"train_shards": 4, "minival_shards": 2, "test_shards": 3}


def test_a_stalled_shard_is_named_and_skipped_and_a_dead_stream_is_one_line(shards, server, tmp_path):
    base, stall, refuse = server
    env = {"MIXER_FT_STREAM_TIMEOUT": "1"}
    stall.add("train-00002.tar")
    pattern = base + "/{train-{00000..00005},test-00000}.tar"
    out = finetune(tmp_path, pattern, "one", "--set", "val_fraction=0", steps=20, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "train-00002.tar could not be read to its end (stalled" in out.stderr
    refuse.update(f"train-{i:05d}.tar" for i in range(6))
    out = finetune(tmp_path, pattern, "dead", "--set", "val_fraction=0", env=env)
    line = one_error_line(out)
    assert "3 shards in a row" in line and "gave no sample" in line and "HTTP 503" in out.stderr
    missing = one_error_line(finetune(tmp_path, base + "/nowhere/train-0.tar", "gone"))
    assert "classes.txt" in missing and "HTTP 404" in missing


def test_a_streamed_run_stopped_by_sigterm_resumes_at_the_exact_sample(shards, tmp_path):
    """Batch 8 over shards of 20: the stop falls inside a shard, so the resume must re-read it and skip what was
    taken. The resumed weights equal those of the run that was never stopped."""
    def args(name):
        return ["finetune", "--dataset", shards, "--streaming", "--steps", 40, "--batch", 8, "--warmup", 0,
                "--eval-every", 0, "--output-dir", tmp_path / name, "--set", f'results_dir="{tmp_path / "r"}"',
                "--set", f'name="{name}"', "--set", "checkpoint_every=3", "--set", "val_fraction=0",
                "--mixed-precision", "no", *TINY]

    assert run_cli(*args("whole"), cwd=REPO).returncode == 0
    ckpt = tmp_path / "stopped" / "checkpoints" / "step_00000003.pt"
    proc = signal_once_written([sys.executable, "-m", "mixer_ft", *args("stopped")], ckpt, signal.SIGTERM)
    assert proc.returncode == 128 + signal.SIGTERM and not (tmp_path / "stopped" / "model").exists()
    saved = torch.load(sorted((tmp_path / "stopped" / "checkpoints").glob("step_*.pt"))[-1], weights_only=False)
    assert saved["step"] < 40 and saved["stream"][0] != [0, 0, 0]
    out = run_cli(*args("stopped"), cwd=REPO)
    assert out.returncode == 0 and "resuming" in out.stdout + out.stderr, out.stderr[-2000:]
    a, b = (load_file(tmp_path / n / "model" / "model.safetensors") for n in ("whole", "stopped"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_what_cannot_be_streamed_is_one_line(shards, cifar_subset, tmp_path):
    no_classes = tmp_path / "bare"
    no_classes.mkdir()
    for p in shards.glob("*.tar"):
        (no_classes / p.name).write_bytes(p.read_bytes())
    assert "has no classes.txt" in one_error_line(finetune(tmp_path, no_classes, "a", "--streaming"))
    assert "leave --streaming out" in one_error_line(finetune(tmp_path, cifar_subset(train=2, test=1), "b", "--streaming"))
    assert "measured in steps" in one_error_line(finetune(tmp_path, shards, "c", "--streaming", "--set", "epochs=1"))
    assert "would leave none to train on" in one_error_line(
        finetune(tmp_path, shards, "d", "--streaming", "--set", "val_fraction=0.9"))
    from mixer_ft.data.cache import load_data

    with pytest.raises(ConfigError, match="read as a stream"):  # evaluate, few-shot: what reads into the cache
        load_data("http://127.0.0.1:9/{train-0,test-0}.tar")
    assert "is not a shard name" in one_error_line(finetune(tmp_path, "http://127.0.0.1:9/{a,b}.tar", "e"))


def test_a_shard_too_large_to_hold_is_cut_with_a_warning_and_memory_stays_bounded(shards, monkeypatch, caplog):
    from mixer_ft.data import stream

    monkeypatch.setattr(stream, "MAX_SHARD_BYTES", 5 * 1024)  # about 5 CIFAR JPEGs
    data = shard_stream(str(shards))
    cursor = ShardCursor(data, data.train, seed=0)
    taken = cursor.take(30)
    cursor.close()
    per_shard = Counter(s[0].split(":")[0] for s in taken)
    assert all(n < 20 for n in per_shard.values()) and len(per_shard) > 1
    assert "GiB of images, the rest of it is skipped" in caplog.text and data.loss.sources


@pytest.fixture(scope="module")
def hub_folder(cifar_subset, tmp_path_factory):
    """The same CIFAR-10 JPEGs as a Hub-format set: parquet files written by `datasets` (image bytes, ClassLabel),
    3 train files and 1 test file under data/, as the Hub lays a set out."""
    from datasets import ClassLabel, Dataset, Features, Image

    cut, folder = cifar_subset(train=12, test=3), tmp_path_factory.mktemp("hub") / "cifar-parquet"
    features = Features({"img": Image(), "label": ClassLabel(names=CLASSES)})
    for split, files in (("train", 3), ("test", 1)):
        rows = images_of(cut, split)
        ds = Dataset.from_dict({"img": [{"bytes": b, "path": None} for _, b in rows], "label": [y for y, _ in rows]},
                               features=features)
        for i in range(files):
            ds.shard(files, i, contiguous=True).to_parquet(str(folder / "data" / f"{split}-{i:05d}-of-{files:05d}.parquet"))
    return folder


def test_a_hub_set_streams_through_datasets_and_scores_as_the_cached_copy_does(hub_folder, shards, tmp_path):
    """hf:<set> --streaming: datasets' IterableDataset, its data files as shards, ClassLabel names as classes. The
    model it trains, scored from the cache (`mixer-ft evaluate` on the shard folder), gets the run's own score."""
    out = finetune(tmp_path, f"hf:{hub_folder}", "hub", "--streaming", "--set", "val_fraction=0.3", steps=6)
    assert out.returncode == 0, out.stderr[-2000:]
    record = json.loads((tmp_path / "results" / "hub.json").read_text())
    assert record["streamed"] and record["classes"] == CLASSES
    assert record["test_images"] == 30 and record["minival_images"] == 40  # the last of 3 train files held out
    scored = run_cli("evaluate", tmp_path / "hub" / "model", "--dataset", shards, "--json", cwd=REPO)
    assert scored.returncode == 0, scored.stderr[-2000:]
    result = json.loads(scored.stdout)
    assert result["images"] == 30 and result["accuracy"] == pytest.approx(record["test_accuracy"], abs=1e-5)


@pytest.mark.slow
def test_two_processes_stream_distinct_shards_count_each_test_image_once_and_resume_only_as_two(shards, tmp_path):
    """Under `accelerate launch` with 2 processes: each keeps its own place in its own shards (both in the
    checkpoint), the test images are each scored once, and a resume in 1 process is refused in one line."""
    launch = [sys.executable, "-m", "mixer_ft", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no"]
    args = ["finetune", "--dataset", shards, "--streaming", "--steps", 6, "--batch", 8, "--warmup", 0, "--eval-every", 0,
            "--output-dir", tmp_path / "two", "--set", f'results_dir="{tmp_path / "r"}"', "--set", 'name="two"',
            "--set", "val_fraction=0", "--mixed-precision", "no", *TINY]
    import subprocess

    out = subprocess.run([*launch, *map(str, args)], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    record = json.loads((tmp_path / "r" / "two.json").read_text())
    assert record["hardware"]["count"] == 2 and record["test_images"] == 30
    saved = torch.load(tmp_path / "two" / "checkpoints" / "step_00000006.pt", weights_only=False)
    assert len(saved["stream"]) == 2 and all(c[:2] == [0, 1] and c[2] == 4 for c in saved["stream"])  # 6 x 4 = 20 + 4
    assert "resume it with 2, not 1" in one_error_line(run_cli(*args, cwd=REPO))


def test_a_split_is_scored_as_it_is_read_not_read_whole_first(shards):
    """Scoring a streamed split holds one chunk of it: the first chunk comes after the first shard is opened,
    not after every shard has been read (ImageNet's validation shards are 6 GB)."""
    import dataclasses

    from mixer_ft.data.shards import Shard
    from mixer_ft.train.stream_feed import stream_chunks

    data, opened = shard_stream(str(shards)), []

    def counted(shard):
        return Shard(shard.name, lambda: (opened.append(shard.name), shard.open())[1])

    data = dataclasses.replace(data, train=[counted(s) for s in data.train])
    chunks = stream_chunks(data, data.train, (0, 1), 8)
    images, labels, extents = next(chunks)
    assert len(opened) == 1 and images.shape[0] == len(labels) == len(extents) == 8
    assert sum(len(c[1]) for c in chunks) == 120 - 8 and len(opened) == 6


def test_a_streamed_image_whose_pixels_do_not_decode_is_named_and_its_batch_neighbour_stands_in_with_its_label(
        cifar_subset, tmp_path, caplog):
    """A stream sizes its samples from their headers and crops each where it is decoded, as the compact store does:
    a sample whose header is whole but whose pixels are damaged takes the input and label of its batch's nearest."""
    import logging

    from test_encoded_store import damaged_pixels

    from mixer_ft.data.preprocess import Preprocess
    from mixer_ft.train.stream_feed import StreamFeed

    samples = images_of(cifar_subset(train=12, test=3), "train")[:8]
    picture = np.zeros((32, 32, 3), np.uint8)
    samples[3] = (9, damaged_pixels(picture))  # a truck that does not decode, between two airplanes
    write_shards(tmp_path / "s", "train", samples, per_shard=8)
    write_shards(tmp_path / "s", "test", samples[:2], per_shard=8)
    (tmp_path / "s" / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    stream, pre = shard_stream(str(tmp_path / "s")), Preprocess(32)
    feed = StreamFeed(stream, stream.train, pre, seed=0, local_batch=8, total=1, device=torch.device("cpu"))
    with caplog.at_level(logging.WARNING):
        data = feed.take(0)
    feed.close()
    assert data.cropped and data.images.shape == (8, 3, 32, 32)
    read = [s[1] for s in ShardCursor(stream, stream.train, seed=0).take(8)]  # the order the feed read them
    at = read.index(9)
    assert data.labels[at] != 9 and torch.equal(data.images[at], data.images[at - 1 if at else 1])
    assert "does not decode" in caplog.text and "nearest image takes its place" in caplog.text
