"""Webdataset tar shards as --dataset (issue 35): built here from real CIFAR-10 JPEGs, as timm's `wds` reader and the
Hub's webdataset sets lay them out (<key>.jpg + <key>.cls), then read, damaged and trained on."""

import io
import json
import logging
import tarfile

import numpy as np
import pytest
from test_invariants import TINY, one_error_line

from conftest import REPO, run_cli
from mixer_ft.data.cache import load_data

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def images_of(cut, split):
    """(class index, JPEG bytes) of a cut's split, in the order the image folder is read (class, then name)."""
    return [(CLASSES.index(c.name), p.read_bytes()) for c in sorted((cut / split).iterdir()) for p in sorted(c.iterdir())]


def add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_shards(folder, prefix, samples, per_shard, mode="w", suffix=".tar"):
    """``samples`` ((label, jpeg bytes) or (cls bytes, jpeg bytes)) into shards of ``per_shard``: <prefix>-00000.tar, ..."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, start in enumerate(range(0, len(samples), per_shard)):
        path = folder / f"{prefix}-{n:05d}{suffix}"
        with tarfile.open(path, mode) as tar:
            for i, (label, jpeg) in enumerate(samples[start:start + per_shard], start):
                key = f"images/{prefix}_{i:06d}"  # keys with a folder part, as webdataset allows
                add(tar, f"{key}.jpg", jpeg)
                add(tar, f"{key}.cls", label if isinstance(label, bytes) else str(label).encode())
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def cut(cifar_subset):
    return cifar_subset(train=6, test=2)


def test_shards_hold_the_same_images_labels_and_classes_as_the_folder_they_were_made_from(cut, tmp_path):
    shards = tmp_path / "shards"
    write_shards(shards, "train", images_of(cut, "train"), per_shard=16)  # 60 samples: 4 shards, the last short
    write_shards(shards, "test", images_of(cut, "test"), per_shard=16, mode="w:gz", suffix=".tar.gz")
    (shards / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    a, b = load_data(str(shards)), load_data(str(cut))
    assert a.classes == b.classes == CLASSES
    for split in ("train", "test"):
        assert np.array_equal(a.images[split], b.images[split]) and np.array_equal(a.labels[split], b.labels[split])
    assert "test-* shards" in a.test_from


def test_without_classes_txt_classes_are_numbers_and_validation_shards_are_the_test_split(cut, tmp_path, caplog):
    shards = tmp_path / "shards"
    write_shards(shards, "train", images_of(cut, "train"), per_shard=25)
    write_shards(shards, "validation", images_of(cut, "test"), per_shard=25)
    data = load_data(str(shards))
    assert data.classes == [str(i) for i in range(10)] and len(data.labels["test"]) == 20
    assert "validation-* shards" in data.test_from
    # test-* and validation-* both: test is the test split, and the unused validation shards are said
    write_shards(shards, "test", images_of(cut, "test")[:10], per_shard=25)
    with caplog.at_level(logging.WARNING):
        data = load_data(str(shards))
    assert len(data.labels["test"]) == 10 and "validation-* shard(s) are not used" in caplog.text


def test_damaged_shards_and_bad_samples_are_skipped_by_kind_and_named_and_the_rest_is_read(cut, tmp_path, caplog):
    """Planted: a shard cut off mid-member, a .cls that is not an integer, a class past classes.txt, a negative
    class, a sample without .cls, one without an image, a link member and an image that does not decode."""
    train = images_of(cut, "train")
    shards = tmp_path / "shards"
    write_shards(shards, "train", train[:40], per_shard=20)
    bad = [(b"cat", train[40][1]), (b"10", train[41][1]), (b"-1", train[42][1]), (3, b"not a jpeg at all")]
    write_shards(shards, "train-bad", bad + train[44:48], per_shard=20)  # 8 samples, 4 usable (one won't decode)
    with tarfile.open(shards / "train-odd-00000.tar", "w") as tar:
        add(tar, "lone.jpg", train[48][1])  # no .cls
        add(tar, "lonely.cls", b"1")  # no image
        link = tarfile.TarInfo("x.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    # A shard cut off in the middle of its 7th member (the 4th sample's image): 3 samples kept
    whole = write_shards(tmp_path / "whole", "train-cut", train[50:60], per_shard=10)[0].read_bytes()
    with tarfile.open(fileobj=io.BytesIO(whole)) as tar:
        offsets = [m.offset_data for m in tar.getmembers()]
    (shards / "train-cut-00000.tar").write_bytes(whole[:offsets[6] + 100])
    write_shards(shards, "test", images_of(cut, "test"), per_shard=20)
    (shards / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    with caplog.at_level(logging.WARNING):
        data = load_data(str(shards))
    assert len(data.labels["train"]) == 40 + 4 + 3 and len(data.labels["test"]) == 20
    text = caplog.text
    assert "train-cut-00000.tar could not be read to its end (cut short" in text
    cut_short = data.loss.to_dict()["sources"][0]  # its lost samples estimated from the shards read whole
    assert cut_short["samples_read"] == 3 and cut_short["samples_lost"] >= 1 and data.loss.lost == 7 + cut_short["samples_lost"]
    assert data.loss.to_dict()["skipped"]["image(s) that could not be decoded"] == 1
    for kind in ("1 sample(s) whose .cls is not an integer", "2 sample(s) with a class outside 0..9", "1 sample(s) without a .cls",
                 "1 sample(s) without an image", "1 link or special member(s)", "(not an image)"):
        assert kind in text, (kind, text)


@pytest.mark.parametrize("case,needle", [
    ("no-test", "no test-*.tar or validation-*.tar shards"),
    ("classes-twice", "names a class twice ('cat')"),
])
def test_a_shard_folder_that_cannot_be_a_data_set_is_one_line(cut, tmp_path, case, needle):
    shards = tmp_path / "shards"
    write_shards(shards, "train", images_of(cut, "train")[:10], per_shard=10)
    if case == "classes-twice":
        write_shards(shards, "test", images_of(cut, "test")[:5], per_shard=10)
        (shards / "classes.txt").write_text("cat\ndog\ncat\n")
    line = one_error_line(run_cli("data", shards))
    assert needle in line


def test_a_run_trains_on_shards_and_its_record_names_their_classes(cut, tmp_path):
    shards = tmp_path / "shards"
    write_shards(shards, "train", images_of(cut, "train"), per_shard=32)
    write_shards(shards, "test", images_of(cut, "test"), per_shard=32)
    (shards / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    out = run_cli("finetune", "--dataset", shards, "--steps", 2, "--batch", 8, "--warmup", 0, "--eval-every", 0,
                  "--output-dir", tmp_path / "run", "--set", f'results_dir="{tmp_path / "results"}"', "--set", 'name="wds"',
                  *TINY, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    record = json.loads((tmp_path / "results" / "wds.json").read_text())
    assert record["classes"] == CLASSES and record["test_images"] == 20
