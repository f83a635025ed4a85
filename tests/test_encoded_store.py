"""The compact store (issue 35): photo-size sets kept encoded in the cache and decoded per batch. It must give the
pixels the decoded store gives, take a fraction of its disk, and treat damaged files as the decoded store does."""

import io
import logging

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from PIL import Image
from test_data import phone_photos  # noqa: F401 - the fixture: 12-MP photos, EXIF rotations
from test_invariants import TINY

from conftest import REPO, run_cli, signal_once_written
from mixer_ft.data.cache import load_data
from mixer_ft.data.encoded import EncodedImages
from mixer_ft.errors import ConfigError


def camera_like(rng, h=480, w=640):
    """A smooth picture with a little noise: compresses as photos do (noise alone would not)."""
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([(x * 255 // w), (y * 255 // h), ((x + y) * 255 // (w + h))], -1)
    return np.clip(base + rng.normal(0, 6, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def photos_640(tmp_path_factory):
    """train/ and test/ of 640x480 JPEGs (quality 90) in two classes, one of them portrait."""
    root, rng = tmp_path_factory.mktemp("p640") / "photos", np.random.default_rng(0)
    for split, n in (("train", 12), ("test", 4)):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                img = camera_like(rng) if i % 3 else camera_like(rng).transpose(1, 0, 2).copy()
                Image.fromarray(img).save(root / split / cls / f"{i:03d}.jpg", quality=90)
    return root


def decoded_store(source, monkeypatch):
    """The same set through the decoded store (MIXER_FT_STORE=decoded), in a cache of its own."""
    with monkeypatch.context() as m:
        m.setenv("MIXER_FT_STORE", "decoded")
        return load_data(str(source))


def test_the_store_is_the_datas_choice_unless_mixer_ft_store_says_decoded(photos_640, monkeypatch):
    assert isinstance(load_data(str(photos_640)).images["train"], EncodedImages)
    monkeypatch.setenv("MIXER_FT_STORE", "decoded")  # a cache entry of its own: the compact one is not reused
    assert not isinstance(load_data(str(photos_640)).images["train"], EncodedImages)
    monkeypatch.setenv("MIXER_FT_STORE", "compact")
    with pytest.raises(ConfigError, match="MIXER_FT_STORE=.compact. is not auto or decoded"):
        load_data(str(photos_640))


@pytest.mark.parametrize("which", ["photos_640", "phone_photos"])
def test_the_encoded_store_gives_the_decoded_stores_pixels_and_sizes(which, request, tmp_path, monkeypatch):
    source = request.getfixturevalue(which)
    enc, dec = load_data(str(source)), decoded_store(source, monkeypatch)
    assert isinstance(enc.images["train"], EncodedImages) and not isinstance(dec.images["train"], EncodedImages)
    assert enc.manifest == dec.manifest and enc.classes == dec.classes
    for split in ("train", "test"):
        assert np.array_equal(enc.labels[split], dec.labels[split])
        a, b = enc.extents[split], dec.extents[split]
        assert (a is None and b is None) or np.array_equal(a, b)
        every = np.arange(len(enc.labels[split]))
        got, want = enc.images[split][every], dec.images[split][every]
        if which == "photos_640":  # files within their decoded size: kept as they are, decoded as before
            assert np.array_equal(got, want)
        else:  # the 12-MP photos are kept re-encoded at 512 px: within JPEG quality 95's error
            diff = np.abs(got.astype(int) - want.astype(int))
            assert diff.mean() < 1.5, diff.mean()


def test_photo_size_sets_take_at_most_a_fifth_of_the_decoded_stores_disk(photos_640, tmp_path, monkeypatch):
    enc, dec = load_data(str(photos_640)), decoded_store(photos_640, monkeypatch)
    for split in ("train", "test"):
        encoded = enc.images[split].nbytes
        decoded = int((dec.extents[split][:, 0] * dec.extents[split][:, 1] * 3).sum()) if dec.extents[split] is not None \
            else dec.images[split].nbytes
        assert encoded <= 0.2 * decoded, (split, encoded, decoded)


def test_small_one_size_sets_keep_the_decoded_store(cifar_subset):
    data = load_data(str(cifar_subset(train=2, test=1)))
    assert type(data.images["train"]) is np.memmap and data.images["train"].shape[1:] == (32, 32, 3)


def test_a_jpeg_cut_short_is_skipped_and_named_and_nothing_else_is_lost(photos_640, tmp_path, caplog):
    import shutil
    root = tmp_path / "photos"
    shutil.copytree(photos_640, root)
    victim = root / "train" / "a" / "005.jpg"
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    with caplog.at_level(logging.WARNING):
        data = load_data(str(root))
    assert len(data.labels["train"]) == 23 and "005.jpg (cut short)" in caplog.text
    assert data.images["train"][np.arange(23)].shape[0] == 23  # every kept image decodes


def test_a_run_trains_and_evaluates_on_the_encoded_store(photos_640, tmp_path):
    out = run_cli("finetune", "--dataset", photos_640, "--steps", 2, "--batch", 4, "--warmup", 0, "--eval-every", 0,
                  "--output-dir", tmp_path / "run", "--set", f'results_dir="{tmp_path / "results"}"', "--set", 'name="enc"',
                  *TINY, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    out = run_cli("evaluate", tmp_path / "run" / "model", "--dataset", photos_640, "--json", cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]


def test_an_index_image_of_a_png_within_its_size_keeps_its_bytes():
    """A PNG is kept as it came; decoded per batch it is the decoded store's array."""
    from mixer_ft.data.encoded import index_image
    from mixer_ft.data.images import to_rgb_array

    arr = camera_like(np.random.default_rng(1), 60, 80)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    h, w, kept = index_image((buf.getvalue(), 512))
    assert (h, w) == (60, 80) and kept is None  # None: the file's own bytes, which the caller keeps
    kept = buf.getvalue()
    assert np.array_equal(to_rgb_array(("", lambda: kept), None, 512), arr)


def training_crops(data, seed):
    """The compact store's training inputs for every train image (cropped where decoded), and the same boxes and
    flips through the batch path: the images decoded at their kept size, padded, then cropped."""
    import torch

    from mixer_ft.data.preprocess import Preprocess

    images, pre = data.images["train"], Preprocess(224)
    every = np.arange(len(images))
    own = torch.from_numpy(images.shapes[every])
    boxes, flips = pre.sample(len(every), own[:, 0], own[:, 1], torch.Generator().manual_seed(seed))
    (ours, used), threads = images.crops(every, boxes, flips, pre), torch.get_num_threads()
    assert np.array_equal(used, every)  # every image decoded: none stood in for
    torch.set_num_threads(1)  # as the decode threads resize: torch's vector loops split rows by thread
    try:
        return ours, pre.train(torch.from_numpy(images[every]), boxes, flips, own)
    finally:
        torch.set_num_threads(threads)


def test_training_crops_made_where_images_decode_equal_the_batch_path_for_images_within_their_kept_size(tmp_path):
    """Images no larger than the size kept: the crop made in the decode thread is the batch path's, bit for bit."""
    import torch

    rng = np.random.default_rng(3)
    for i in range(8):
        (tmp_path / "p" / ("train" if i < 6 else "test") / "ab"[i % 2]).mkdir(parents=True, exist_ok=True)
        picture = camera_like(rng, 150, 200) if i % 2 else camera_like(rng, 200, 150)
        Image.fromarray(picture).save(tmp_path / "p" / ("train" if i < 6 else "test") / "ab"[i % 2] / f"{i}.jpg")
    data = load_data(str(tmp_path / "p"))
    assert isinstance(data.images["train"], EncodedImages)
    for seed in range(3):
        ours, batch_path = training_crops(data, seed)
        assert ours.shape == (6, 3, 224, 224) and torch.equal(ours, batch_path)


def test_training_crops_of_larger_images_are_cut_from_the_image_as_decoded_within_two_levels_on_average(photos_640):
    """640x480 photos, kept at 512x384: each box, drawn on the kept size, is scaled to the image as decoded and cut
    from it, as vit_jax cuts its crops (one bilinear resize, not two). docs/data.md gives the bound: within 2 levels
    of 255 on average of the batch path's crop of the image first scaled down, on these noisy photos."""
    import torch

    from mixer_ft.data.images import to_rgb_array
    from mixer_ft.data.preprocess import Preprocess

    data = load_data(str(photos_640))
    for seed in range(2):
        ours, batch_path = training_crops(data, seed)
        levels = (ours - batch_path).abs() * 127.5  # Google's normalisation: 255 levels span 2
        assert 0.2 < levels.mean() < 2.0, levels.mean()
    # A box over the whole kept image is the whole image as decoded, resized once.
    photo = next((photos_640 / "train").rglob("*.jpg")).read_bytes()
    full = to_rgb_array(("", lambda: photo), None, 512, resized=False)
    assert full.shape in ((480, 640, 3), (640, 480, 3))  # not scaled down to the 512 px kept
    pre = Preprocess(224)
    kept = (384, 512) if full.shape[0] == 480 else (512, 384)
    whole = pre.crop_one(full, kept, [0, 0, kept[1], kept[0]], False)
    once = torch.nn.functional.interpolate(torch.from_numpy(full.copy()).permute(2, 0, 1)[None].float(), size=(224, 224),
                                           mode="bilinear", align_corners=False)[0]
    assert torch.equal(whole, (once - 127.5) / 127.5)  # Google's mean and std of 0.5, in levels


@pytest.mark.slow
def test_a_run_killed_and_resumed_on_the_compact_store_ends_with_the_uninterrupted_weights(photos_640, tmp_path):
    """Each batch is decoded when it is read: the same (seed, step) gives the same images after a SIGKILL and a
    resume, so the weights equal the uninterrupted run's bit for bit (on a CPU)."""
    import signal
    import sys

    import torch
    from safetensors.torch import load_file

    def args(name):
        return ["finetune", "--dataset", photos_640, "--steps", 12, "--batch", 8, "--lr", 0.05, "--warmup", 2,
                "--eval-every", 0, "--set", "checkpoint_every=4", "--output-dir", tmp_path / name,
                "--set", f'results_dir="{tmp_path / "results"}"', "--set", f'name="{name}"', *TINY]

    assert run_cli(*args("whole"), cwd=REPO).returncode == 0
    ckpt = tmp_path / "killed" / "checkpoints" / "step_00000004.pt"
    signal_once_written([sys.executable, "-m", "mixer_ft", *args("killed")], ckpt, signal.SIGKILL)
    assert ckpt.exists() and not (tmp_path / "killed" / "model").exists(), "killed before the end"
    out = run_cli(*args("killed"), cwd=REPO)
    assert out.returncode == 0 and "resuming" in out.stdout + out.stderr, out.stderr[-2000:]
    a, b = (load_file(tmp_path / n / "model" / "model.safetensors") for n in ("whole", "killed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("src,dst", [((480, 640), (384, 512)), ((3024, 4032), (384, 512)), ((300, 200), (512, 341)),
                                     ((97, 131), (64, 86))])
def test_images_are_scaled_down_as_pils_bilinear_filter_scales_them_to_within_two_levels(src, dst):
    """The kept size is reached by torch's antialiased uint8 kernel (3.5x PIL's speed); PIL's own BILINEAR resize,
    the reference it replaced, differs by at most 2 levels and by a few hundredths on average."""
    from mixer_ft.data.images import resize

    picture = camera_like(np.random.default_rng(sum(src)), *src)
    ours = resize(picture, dst).astype(int)
    pil = np.asarray(Image.fromarray(picture).resize(dst[::-1], Image.BILINEAR)).astype(int)
    assert ours.shape == pil.shape == (*dst, 3)
    assert np.abs(ours - pil).max() <= 2 and np.abs(ours - pil).mean() < 0.1


FORK_WHILE_DECODING = """
import os, shutil, sys, threading
from mixer_ft.data.cache import load_data
from mixer_ft.data.images import to_rgb_array

data = open(sys.argv[2], "rb").read()
stop = False
def busy():  # other threads decoding (and, on their first image, importing torch) while a cache is built
    while not stop:
        to_rgb_array(("x", lambda: data), None, 512)
threads = [threading.Thread(target=busy) for _ in range(2)]
for t in threads:
    t.start()
try:
    for _ in range(3):
        load_data(sys.argv[1])  # MIXER_FT_STORE=decoded, a fresh cache each time: forked decode workers
        shutil.rmtree(os.path.join(os.environ["MIXER_FT_CACHE"], "data"))
finally:
    stop = True
    for t in threads:
        t.join()
print("built")
"""


def test_the_cache_builds_while_other_threads_decode_and_import(photos_640, tmp_path):
    """A fork taken while another thread was importing torch left the decode workers waiting on its import lock
    for good; what the workers use is imported whole before the fork."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "MIXER_FT_CACHE": str(tmp_path / "cache"), "MIXER_FT_STORE": "decoded", "MIXER_FT_WORKERS": "2"}
    photo = next(photos_640.rglob("*.jpg"))
    out = subprocess.run([sys.executable, "-c", FORK_WHILE_DECODING, str(photos_640), str(photo)], capture_output=True,
                         text=True, env=env, cwd=REPO, timeout=300)
    assert out.returncode == 0 and "built" in out.stdout, out.stderr[-2000:]


def test_decode_threads_resize_on_one_torch_thread_and_leave_the_processs_count_as_it_was():
    """Two decode threads each with torch's own threads ran no faster than one on two cores."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from mixer_ft.data.encoded import decoding_pool

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        pool = decoding_pool()
        assert set(pool.map(lambda _: torch.get_num_threads(), range(8))) == {1}
        assert torch.get_num_threads() == 2  # this thread's
        with ThreadPoolExecutor(1) as later:  # a thread started afterwards (the feed's) starts with the process's
            assert later.submit(torch.get_num_threads).result() == 2
        pool.shutdown()
    finally:
        torch.set_num_threads(before)


def test_a_steps_inputs_cropped_ahead_stay_as_they_were_while_the_next_two_steps_are_prepared(photos_640):
    """The feed writes batches into buffers used in turn: the step being trained on and the one prepared ahead
    never share one, and each step gets the inputs a feed without read-ahead gives it."""
    import torch

    from mixer_ft.data.preprocess import Preprocess
    from mixer_ft.train.feed import TrainFeed

    data, pre = load_data(str(photos_640)), Preprocess(224)

    def feed(prefetch):
        return TrainFeed(data, np.arange(24), pre, seed=1, global_batch=6, steps_per_epoch=4, total=8,
                         device=torch.device("cpu"), prefetch=prefetch)

    ahead, plain = feed(True), feed(False)
    taken = [ahead.take(0)]
    kept = taken[0].images.clone()
    for step in range(1, 6):
        taken.append(ahead.take(step))
        ahead.pending[1].result()  # step + 1 prepared meanwhile, as while step trains
        assert taken[step].cropped and torch.equal(taken[step - 1].images, kept), f"step {step - 1} overwritten"
        kept = taken[step].images.clone()
        assert torch.equal(kept, plain.take(step).images)
    ahead.close()


def damaged_pixels(picture) -> bytes:
    """A JPEG whose header and end marker are whole (it indexes) but whose scan names a component it has not: its
    pixels do not decode."""
    buf = io.BytesIO()
    Image.fromarray(picture).save(buf, "JPEG", quality=90)
    data = bytearray(buf.getvalue())
    data[data.index(b"\xff\xda") + 5] = 0x7F
    return bytes(data)


def test_a_photo_whose_pixels_do_not_decode_is_named_and_stood_in_for_by_its_batch_neighbour_with_its_label(
        photos_640, tmp_path, caplog):
    """Indexing reads headers only, so damaged pixels are found when a batch decodes the photo: it is named once, and
    the batch's nearest photo that decodes takes its place with that photo's label; the run goes on."""
    import shutil

    import torch

    from mixer_ft.data.preprocess import Preprocess

    root = tmp_path / "photos"
    shutil.copytree(photos_640, root)
    (root / "train" / "a" / "004.jpg").write_bytes(damaged_pixels(camera_like(np.random.default_rng(9))))
    data = load_data(str(root))
    images, pre = data.images["train"], Preprocess(224)
    assert len(images) == 24  # indexed: its header is whole
    damaged = next(i for i in range(24) if images.name(i).endswith("004.jpg") and "/a/" in images.name(i))
    index = np.array([damaged - 1, damaged, damaged + 1])
    boxes, flips = pre.sample(3, torch.from_numpy(images.shapes[index, 0]), torch.from_numpy(images.shapes[index, 1]),
                              torch.Generator().manual_seed(0))
    with caplog.at_level(logging.WARNING):
        out, used = images.crops(index, boxes, flips, pre)
        images.crops(index, boxes, flips, pre)
    assert used.tolist() == [damaged - 1, damaged - 1, damaged + 1] and torch.equal(out[1], out[0])
    assert caplog.text.count("004.jpg does not decode") == 1, caplog.text  # named once
    # A run over it trains to the end and names it.
    got = run_cli("finetune", "--dataset", root, "--steps", 3, "--batch", 8, "--warmup", 0, "--eval-every", 0,
                  "--output-dir", tmp_path / "run", "--set", f'results_dir="{tmp_path / "results"}"', "--set",
                  'name="damaged"', *TINY, cwd=REPO)
    assert got.returncode == 0 and "004.jpg does not decode" in got.stderr, got.stderr[-2000:]


def test_small_images_whose_pixels_do_not_decode_are_skipped_and_named_while_the_cache_is_built(tmp_path, caplog):
    """CIFAR-size files go to the decoded store: they are decoded while indexing, so a damaged one is skipped there,
    as the decoded store skips it, never a failed build."""
    rng = np.random.default_rng(4)
    for split, n in (("train", 6), ("test", 2)):
        for cls in "ab":
            (tmp_path / "s" / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(camera_like(rng, 32, 32)).save(tmp_path / "s" / split / cls / f"{i}.jpg")
    (tmp_path / "s" / "train" / "b" / "3.jpg").write_bytes(damaged_pixels(camera_like(rng, 32, 32)))
    with caplog.at_level(logging.WARNING):
        data = load_data(str(tmp_path / "s"))
    assert type(data.images["train"]) is np.memmap and len(data.labels["train"]) == 11
    assert "3.jpg" in caplog.text and data.skipped == 1


@settings(max_examples=40, deadline=None)
@example(fmt="JPEG", h=32, w=32, orientation=1, noise=6, cut=None, damaged=True, max_side=512)  # decoded to be checked
@example(fmt="PNG", h=300, w=300, orientation=1, noise=80, cut=None, damaged=False, max_side=96)  # re-encoded
@given(fmt=st.sampled_from(["JPEG", "PNG", "WEBP", "BMP", "GIF"]), h=st.one_of(st.integers(8, 64), st.integers(65, 700)),
       w=st.one_of(st.integers(8, 64), st.integers(65, 700)),
       orientation=st.sampled_from([1, 3, 6, 8]), noise=st.sampled_from([0, 6, 80]),
       cut=st.sampled_from([None, 0.5, 0.99]), damaged=st.booleans(), max_side=st.sampled_from([0, 96, 512]))
def test_an_image_indexed_from_its_header_alone_is_indexed_as_a_worker_indexes_it(fmt, h, w, orientation, noise, cut,
                                                                                   damaged, max_side):
    """Indexing reads most files' headers where their bytes are and sends only the rest to worker processes: for any
    file, what the header gives (when it gives anything) is what the worker's full indexing gives."""
    from mixer_ft.data.encoded import index_from_header, index_image

    rng = np.random.default_rng(h * 1000 + w)
    picture = np.clip(camera_like(rng, h, w).astype(int) + rng.integers(-noise, noise + 1, (h, w, 3)), 0, 255)
    picture = picture.astype(np.uint8)
    if damaged and fmt == "JPEG":
        data = damaged_pixels(picture)
    else:
        buf, exif = io.BytesIO(), Image.Exif()
        exif[0x0112] = orientation
        Image.fromarray(picture).save(buf, fmt, **({"exif": exif} if fmt in ("JPEG", "PNG", "WEBP") else {}))
        data = buf.getvalue()
    if cut:
        data = data[:int(len(data) * cut)]
    quick = index_from_header(data, max_side)
    full = index_image((data, max_side))
    assert quick is None or quick == full, (quick, full)
    if quick is None:  # what only a worker does: decode a small image, or re-encode a file larger than its pixels
        assert isinstance(full, str) or max(full[:2]) <= 64 or full[2] is not None or len(data) > full[0] * full[1] * 3 \
            or fmt not in ("JPEG", "PNG", "WEBP")
