"""decode = "device": a batch's JPEGs decoded, turned upright, cropped and resized on the training device, giving the
host path's inputs. Here on the CPU (one libjpeg-turbo decodes for both paths, so most inputs are equal bit for bit);
benchmarks/gpu_check.sh runs this file on a GPU with MIXER_FT_TEST_DEVICE=cuda, where nvJPEG decodes."""

import io
import logging
import os
import shutil

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from test_encoded_store import camera_like, damaged_pixels, photos_640  # noqa: F401, F811 - photos_640: the fixture
from test_invariants import TINY

from conftest import REPO, run_cli
from mixer_ft.data.cache import load_data
from mixer_ft.data.device_decode import JPEG_DECODERS, device_crops, draft_scale, jpeg_decoder, jpeg_header, upright
from mixer_ft.data.encoded import EncodedImages
from mixer_ft.data.preprocess import Preprocess

DEVICE = torch.device(os.environ.get("MIXER_FT_TEST_DEVICE", "cpu"))
# Mean difference from the host path's inputs, in levels of 255 (Google's normalisation: 255 levels span 2), allowed
# for images PIL decodes at a reduced scale (its draft mode: a scaled inverse DCT; the device path averages pixels):
# on the camera-like photos of `mixed`, 0.19-0.24 measured (0.58-1.7 without the average); on generated JPEGs of any
# size from 32 px, noise up to 6 levels, any quality and subsampling, a median of 0.31 and at most 1.34 in 516 cases.
# Plus, on a GPU, for any image: nvJPEG's inverse DCT and colour conversion are not libjpeg-turbo's. docs/data.md.
DRAFT_LEVELS = 0.5
DRAFT_LEVELS_ANY = 2.0  # 1.50 the most seen in 1,000 more generated cases, on another CPU (2026-12-07)
# Slivers, kept under SLIVER_SIDE px on their short side (a 807x188 grey JPEG kept at 96x22, a 938x362 one at 96x37):
# the two ways to shrink differ most at the edges, which are much of a sliver: up to 2.6 levels in 1,000 generated
# cases (2026-12-07); those kept at least SLIVER_SIDE px thick, under DRAFT_LEVELS_ANY.
SLIVER_SIDE, SLIVER_LEVELS = 48, 6.0
GPU_LEVELS = 1.5
# Every installed decoder of the registry (CI installs TorchCodec beside torchvision's: both are tested)
DECODERS = [d() for d in JPEG_DECODERS.values() if d.available()]


def jpeg(picture: np.ndarray, orientation: int = 1, **save) -> bytes:
    """``picture`` stored as a JPEG turned so that EXIF ``orientation`` turns it back upright."""
    img, exif = Image.fromarray(picture), Image.Exif()
    if orientation != 1:
        undo = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
                5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
                8: Image.Transpose.ROTATE_270}[orientation]
        img, exif[0x0112] = img.transpose(undo), orientation
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif, **({"quality": 90} | save))
    return buf.getvalue()


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """A photo set of every case the device path sorts: each EXIF orientation; JPEGs PIL decodes at 1/2 and 1/4
    (draft); grey and CMYK JPEGs; a PNG; and one JPEG whose pixels do not decode. All in train/a, so a batch of
    the whole split holds them all."""
    root, rng = tmp_path_factory.mktemp("mixed") / "photos", np.random.default_rng(5)
    files = {f"o{o}.jpg": jpeg(camera_like(rng, 300, 420), o) for o in range(1, 9)}
    files["half.jpg"] = jpeg(camera_like(rng, 1100, 820) // 4 * 4, 6, quality=75)  # kept 382x512: PIL decodes 1/2
    files["quarter.jpg"] = jpeg(np.kron(camera_like(rng, 140, 105), np.ones((16, 16, 1), np.uint8)), 1, quality=75)
    files["grey.jpg"] = jpeg(camera_like(rng, 240, 320)[..., 0])
    cmyk = io.BytesIO()
    Image.fromarray(camera_like(rng, 240, 320)).convert("CMYK").save(cmyk, "JPEG")
    files["cmyk.jpg"] = cmyk.getvalue()
    png = io.BytesIO()
    Image.fromarray(camera_like(rng, 200, 300)).save(png, "PNG")
    files["p.png"] = png.getvalue()
    files["zz_damaged.jpg"] = damaged_pixels(camera_like(rng, 240, 320))
    for split, cls in (("train", "a"), ("train", "b"), ("test", "a"), ("test", "b")):
        (root / split / cls).mkdir(parents=True)
    for name, data in files.items():
        (root / "train" / "a" / name).write_bytes(data)
    for split, cls in (("train", "b"), ("test", "a"), ("test", "b")):
        Image.fromarray(camera_like(rng, 240, 320)).save(root / split / cls / "x.jpg")
    return root


def both_paths(images: EncodedImages, index: np.ndarray, seed: int, decoder):
    """(host inputs, host images used), (device inputs on the CPU, device images used), for one batch's boxes."""
    pre = Preprocess(224)
    own = torch.from_numpy(images.shapes[index])
    boxes, flips = pre.sample(len(index), own[:, 0], own[:, 1], torch.Generator().manual_seed(seed))
    host = images.crops(index, boxes, flips, pre)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the host's decode threads resize: torch's vector loops split rows by thread
    try:
        out, used = device_crops(images, index, boxes, flips, pre, DEVICE, decoder)
    finally:
        torch.set_num_threads(threads)
    return host, (out.cpu(), used)


def levels(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().mean() * 127.5)


@pytest.mark.parametrize("decoder", DECODERS, ids=lambda d: d.name)
@pytest.mark.parametrize("orientation", range(1, 9))
def test_each_exif_orientation_is_turned_upright_as_pil_turns_it(orientation, decoder):
    picture = camera_like(np.random.default_rng(orientation), 60, 90)
    picture[:20, :30] = 255  # a corner no turn or mirror leaves where it was
    data = jpeg(picture, orientation)
    header = jpeg_header(data, 512)
    assert header is not None and header.orientation == orientation and header.scale == 1
    got = decoder.decode([torch.frombuffer(bytearray(data), dtype=torch.uint8)], DEVICE)[0]
    got = (got if decoder.turns_upright(DEVICE) else upright(got, orientation)).permute(1, 2, 0).cpu().numpy()
    from PIL import ImageOps

    pil = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    assert got.shape == pil.shape == (60, 90, 3)
    assert np.abs(got.astype(int) - pil).mean() < (0.01 if DEVICE.type == "cpu" else 2.0)
    assert np.abs(got.astype(int) - picture).mean() < 8  # and it is the picture, the right way up


@pytest.mark.parametrize("size,max_side,scale", [((640, 480), 512, 1), ((1100, 820), 512, 2), ((1600, 1200), 512, 2),
                                                 ((2240, 1680), 512, 4), ((4032, 3024), 448, 8), ((4032, 3024), 0, 1)])
def test_the_draft_scale_is_the_one_pil_decodes_at(size, max_side, scale):
    from mixer_ft.data.images import to_rgb_array

    buf = io.BytesIO()
    Image.new("RGB", size, (90, 120, 30)).save(buf, "JPEG")
    img = Image.open(io.BytesIO(buf.getvalue()))
    assert draft_scale(img, max_side) == scale
    decoded = to_rgb_array(("", lambda: buf.getvalue()), None, max_side, resized=False)
    assert decoded.shape[:2] == (-(-size[1] // scale), -(-size[0] // scale))  # PIL's own size at that scale


@pytest.mark.parametrize("decoder", DECODERS, ids=lambda d: d.name)
def test_the_device_path_gives_the_host_paths_inputs_and_stands_in_for_the_same_images(mixed, decoder, caplog):
    """Every kind of file in one batch, three draws of boxes: the same images used (the damaged one stood in for by
    its neighbour, with its label), and the same inputs: equal bit for bit on a CPU where PIL decodes at full scale
    (the same decoder, the same crop), within the bound where PIL's draft scales, or on a GPU."""
    from mixer_ft.data import device_decode

    device_decode._told_host[0] = False  # said once a process: this test's damaged file is said
    data = load_data(str(mixed))
    images = data.images["train"]
    assert isinstance(images, EncodedImages) and len(images) == 15
    names = [images.name(i).rsplit("/", 1)[-1] for i in range(len(images))]
    index = np.array([i for i, n in enumerate(names) if n != "x.jpg"])
    by_name = {names[i]: k for k, i in enumerate(index)}
    files = {names[i]: bytes(images.flat[images.offsets[i]:images.offsets[i + 1]]) for i in index}
    assert jpeg_header(files["p.png"], 512) is None and jpeg_header(files["cmyk.jpg"], 512) is None
    scales = {n: jpeg_header(f, 512).scale for n, f in files.items() if jpeg_header(f, 512)}
    assert scales["half.jpg"] == 2 and scales["quarter.jpg"] == 4 and scales["o6.jpg"] == 1  # the cases are covered
    drafted = {by_name["half.jpg"], by_name["quarter.jpg"]}
    for seed in range(3):
        with caplog.at_level(logging.WARNING):
            (host, host_used), (dev, dev_used) = both_paths(images, index, seed, decoder)
        assert dev_used.tolist() == host_used.tolist() and (dev_used != index).sum() == 1
        assert dev_used[by_name["zz_damaged.jpg"]] == index[by_name["zz_damaged.jpg"] - 1]
        for k in range(len(index)):
            # PIL's draft scaled it (or the image standing in for it); a GPU decoded it
            bound = DRAFT_LEVELS * (by_name[names[dev_used[k]]] in drafted) + GPU_LEVELS * (DEVICE.type != "cpu")
            if bound:
                assert levels(dev[k], host[k]) < bound, (seed, names[index[k]], levels(dev[k], host[k]))
            else:
                assert torch.equal(dev[k], host[k]), (seed, names[index[k]], levels(dev[k], host[k]))
    assert "zz_damaged.jpg does not decode" in caplog.text
    assert caplog.text.count(f"a JPEG did not decode on {DEVICE}") == 1  # tried on the host after the device


def test_every_installed_decoder_gives_the_same_pixels():
    """The registry's decoders (TorchCodec first, torchvision's deprecated one after it) are one libjpeg-turbo on a
    CPU: a run's inputs do not depend on which is installed."""
    installed = [d() for d in JPEG_DECODERS.values() if d.available()]
    assert installed, "torchvision is installed with timm"
    data = jpeg(camera_like(np.random.default_rng(1), 120, 160), 6)  # stored turned: each decoder, turned upright
    decoded = [d.decode([torch.frombuffer(bytearray(data), dtype=torch.uint8)], DEVICE)[0] for d in installed]
    decoded = [(x if d.turns_upright(DEVICE) else upright(x, 6)).cpu() for d, x in zip(installed, decoded)]
    assert all(d.shape == (3, 120, 160) and d.dtype == torch.uint8 for d in decoded)
    assert all(levels(d.float(), decoded[0].float()) == 0 for d in decoded)
    assert jpeg_decoder().name == next(d.name for d in installed)


def test_the_decoder_chosen_is_the_first_that_decodes_on_the_device_and_none_is_one_line(monkeypatch):
    """A decoder that is installed but cannot decode on the device (TorchCodec without CUDA, say) gives way to the
    next; when none can, the run stops with one line naming each and why."""
    from mixer_ft.data import device_decode

    class NoDevice(device_decode.JpegDecoder):
        name = "broken"

        @staticmethod
        def available():
            return True

        def decode(self, files, device):
            raise RuntimeError("no decoder for this device\nmore lines")

    monkeypatch.setattr(device_decode, "JPEG_DECODERS", {"broken": NoDevice, **JPEG_DECODERS})
    assert jpeg_decoder(DEVICE).name == DECODERS[0].name
    monkeypatch.setattr(device_decode, "JPEG_DECODERS", {"broken": NoDevice})
    with pytest.raises(device_decode.ConfigError, match=f"works on {DEVICE} \\(broken: RuntimeError: no decoder for "
                                                        "this device\\): pip install torchcodec"):
        jpeg_decoder(DEVICE)


def test_a_feed_that_decodes_on_the_device_serves_the_host_feeds_steps(photos_640):  # noqa: F811
    """The train feed with a decoder: each step's inputs and labels as the host feed's, on the device."""
    from mixer_ft.train.feed import TrainFeed

    data = load_data(str(photos_640))
    pre, train = Preprocess(224), np.arange(len(data.labels["train"]))
    kw = dict(seed=3, global_batch=8, steps_per_epoch=3, total=4, device=DEVICE)
    host, dev = TrainFeed(data, train, pre, **kw), TrainFeed(data, train, pre, decoder=jpeg_decoder(), **kw)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for step in range(4):
            a, b = host.take(step), dev.take(step)
            assert b.cropped and b.images.device.type == DEVICE.type and b.images.shape == (8, 3, 224, 224)
            assert torch.equal(a.labels.cpu(), b.labels.cpu())
            if DEVICE.type == "cpu":
                assert torch.equal(a.images, b.images), step
            else:
                assert levels(a.images, b.images.cpu()) < GPU_LEVELS
    finally:
        torch.set_num_threads(threads)
        host.close()
        dev.close()


def test_a_run_that_decodes_on_the_device_trains_as_one_that_decodes_on_the_host(photos_640, tmp_path):  # noqa: F811
    """End to end: `--set decode="device"` is recorded, says where it decodes, and trains as the host path does;
    on a set stored decoded (CIFAR-size images) it says it does not apply, and the run goes on."""
    from safetensors.torch import load_file

    def finetune(name, *extra, data=photos_640):
        got = run_cli("finetune", "--dataset", data, "--steps", 3, "--batch", 8, "--warmup", 0, "--eval-every", 0,
                      "--output-dir", tmp_path / name, "--set", f'results_dir="{tmp_path / "results"}"', "--set",
                      f'name="{name}"', *TINY, *extra, cwd=REPO)
        assert got.returncode == 0, got.stderr[-3000:]
        return got, load_file(tmp_path / name / "model" / "model.safetensors")

    host = finetune("host")[1]
    got, dev = finetune("dev", "--set", "decode=device")  # as docs/data.md writes it
    assert f"decoded on cpu by {jpeg_decoder().name}" in got.stdout
    import json

    record = json.loads((tmp_path / "results" / "dev.json").read_text())
    assert record["config"]["decode"] == "device"
    assert host.keys() == dev.keys()
    assert all(torch.allclose(host[k], dev[k], atol=1e-5) for k in host)
    small = tmp_path / "small_photos"
    shutil.copytree(photos_640, small)
    for path in small.rglob("*.jpg"):
        Image.open(path).resize((32, 32)).save(path)
    got, _ = finetune("small", "--set", 'decode="device"', data=small)
    assert 'decode = "device" does not apply: this set\'s cache holds its images decoded already' in got.stderr


@settings(max_examples=int(os.environ.get("MIXER_FT_DECODE_EXAMPLES", "30")), deadline=None)
@given(h=st.integers(32, 1300), w=st.integers(32, 1300), orientation=st.integers(1, 8), noise=st.sampled_from([0, 6]),
       quality=st.sampled_from([60, 90, 98]), subsampling=st.sampled_from([0, 1, 2]), progressive=st.booleans(),
       grey=st.booleans(), max_side=st.sampled_from([96, 512]), seed=st.integers(0, 3))
def test_any_jpeg_gives_the_host_paths_input_on_the_device(h, w, orientation, noise, quality, subsampling, progressive,
                                                           grey, max_side, seed):
    """Generated JPEGs (any size from 32 to 1,300 px, each EXIF orientation, noise, quality, chroma subsampling,
    progressive or not, grey or colour; kept at 96 or 512 px), indexed as the store indexes them (re-encoded where
    the file is larger than its pixels): the device path's input is the host path's, bit for bit on a CPU where PIL
    decodes at full scale, within DRAFT_LEVELS_ANY where it decodes at 1/2-1/8, SLIVER_LEVELS for slivers kept
    under SLIVER_SIDE px thick. (Heavier noise, 30 levels, reached 5.6 levels: docs/data.md says so.)"""
    from mixer_ft.data.encoded import index_image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    picture = np.stack([x * 255 // w, y * 255 // h, (x + y) * 255 // (w + h)], -1) + rng.normal(0, noise + 1e-9, (h, w, 3))
    picture = np.clip(picture, 0, 255).astype(np.uint8)
    data = jpeg(picture[..., 0] if grey else picture, orientation, quality=quality, subsampling=subsampling,
                progressive=progressive)
    got = index_image((data, max_side))
    assert not isinstance(got, str), got
    kept_h, kept_w, own = got
    stored = data if own is None else own
    images = EncodedImages(np.frombuffer(stored, np.uint8), np.array([0, len(stored)]), np.array([[kept_h, kept_w]]),
                           max_side, "train")
    header = jpeg_header(stored, max_side)
    assert header is not None and header.orientation == (orientation if own is None else 1)
    for decoder in DECODERS:
        (host, host_used), (dev, dev_used) = both_paths(images, np.array([0]), seed, decoder)
        assert host_used.tolist() == dev_used.tolist() == [0]
        draft = SLIVER_LEVELS if min(kept_h, kept_w) < SLIVER_SIDE else DRAFT_LEVELS_ANY
        bound = draft * (header.scale > 1) + GPU_LEVELS * (DEVICE.type != "cpu")
        if bound:
            assert levels(dev[0], host[0]) < bound, (decoder.name, header, levels(dev[0], host[0]))
        else:
            assert torch.equal(dev[0], host[0]), (decoder.name, levels(dev[0], host[0]))
