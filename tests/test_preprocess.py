"""Upstream preprocessing on the device: Inception crop, resize, flip, scaling; batching."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mixer_ft import create_model
from mixer_ft.data.preprocess import Preprocess, crop_resize, inception_boxes, iterate_batches


def images(n=8, size=32, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8))


def test_eval_is_a_plain_bilinear_resize_to_the_models_size_in_minus_one_to_one():
    x = images()
    pre = Preprocess.for_model(create_model("S/32", img_size=96).config)
    out = pre.eval(x)
    assert out.shape == (8, 3, 96, 96) and out.dtype == torch.float32
    # TF's bilinear resize uses half-pixel centres: torch's interpolate with align_corners=False.
    ref = F.interpolate(x.permute(0, 3, 1, 2).float(), size=96, mode="bilinear", align_corners=False) / 127.5 - 1
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=0)
    assert out.min() >= -1 and out.max() <= 1


def test_flip_mirrors_and_boxes_crop():
    x = images(4)
    boxes = torch.tensor([[4, 6, 10, 20]] * 4)
    plain = crop_resize(x, boxes, 40)
    flipped = crop_resize(x, boxes, 40, flip=torch.tensor([True, False, True, False]))
    torch.testing.assert_close(flipped[0], plain[0].flip(-1))
    torch.testing.assert_close(flipped[1], plain[1])
    # The box selects exactly its pixels: a box-sized output is the crop itself.
    direct = x[:, 6:16, 4:14].permute(0, 3, 1, 2).float()
    torch.testing.assert_close(crop_resize(x, torch.tensor([[4, 6, 10, 10]] * 4), 10), direct)


def test_inception_boxes_follow_the_upstream_ranges():
    g = torch.Generator().manual_seed(0)
    b = inception_boxes(20_000, 32, 32, g)
    x0, y0, w, h = b.T
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x0 + w <= 32).all() and (y0 + h <= 32).all()
    area = (w * h).float() / 1024
    assert area.min() >= 0.04 and area.max() <= 1.0  # 5%..100%, up to integer rounding
    ratio = (w / h).float()
    cropped = area < 0.9  # small boxes are not clipped, so their aspect is in range (up to rounding)
    assert ratio[cropped].min() > 0.6 and ratio[cropped].max() < 1.6
    assert 0.35 < area.mean() < 0.65  # the area fraction is uniform on [0.05, 1] when the box fits


def test_train_augmentation_is_deterministic_per_seed_and_random_across_seeds():
    pre, x = Preprocess(64), images()
    a, b, c = (pre.train(x, *pre.sample(8, 32, 32, torch.Generator().manual_seed(s))) for s in (7, 7, 8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (8, 3, 64, 64) and a.min() >= -1 and a.max() <= 1


def test_batches_cover_each_index_once_and_shards_partition_them():
    imgs = np.arange(10 * 2 * 2 * 3, dtype=np.uint8).reshape(10, 2, 2, 3)
    labels = np.arange(10)
    idx = np.array([0, 2, 3, 5, 6, 7, 8, 9])
    seen = [int(v) for _, _, y in iterate_batches(imgs, labels, idx, 3, shuffle=True, seed=1) for v in y]
    assert sorted(seen) == idx.tolist()
    full = [set(y.tolist()) for _, _, y in iterate_batches(imgs, labels, idx, 4, shuffle=True, seed=1)]
    shards = [[set(y.tolist()) for _, _, y in iterate_batches(imgs, labels, idx, 4, shuffle=True, seed=1,
                                                             num_shards=2, shard=s)] for s in range(2)]
    assert [a | b for a, b in zip(*shards)] == full and all(not a & b for a, b in zip(*shards))
    later = [b for b, _, _ in iterate_batches(imgs, labels, idx, 3, shuffle=True, seed=1, start=2)]
    assert later == [2]
    for _, x, y in iterate_batches(imgs, labels, idx, 3, shuffle=False):
        assert torch.equal(x, torch.from_numpy(imgs[y.numpy()]))  # images travel with their labels


@pytest.mark.parametrize("size", [32, 48])
def test_eval_at_native_size_is_only_scaling(size):
    x = images(2, size)
    out = Preprocess(size).eval(x)
    torch.testing.assert_close(out, x.permute(0, 3, 1, 2).float() / 127.5 - 1)
    assert math.isclose(float(out.max()), float(x.max()) / 127.5 - 1, rel_tol=1e-6)


def test_random_crops_and_flips_match_an_independent_grid_sample_of_the_sliced_box():
    x = images(16)
    g = torch.Generator().manual_seed(3)
    boxes = inception_boxes(16, 32, 32, g)
    flip = torch.rand(16, generator=g) < 0.5
    out = crop_resize(x, boxes, 56, flip)
    # Reference: slice each box out (as tf.slice), then sample each output pixel centre inside the
    # slice with grid_sample (border padding: the slice's own edge, never pixels beyond the box).
    t = (torch.arange(56) + 0.5) / 56 * 2 - 1
    for i, (x0, y0, w, h) in enumerate(boxes.tolist()):
        crop = x[i:i + 1, y0:y0 + h, x0:x0 + w].permute(0, 3, 1, 2).float()
        gx = t.flip(0) if flip[i] else t
        grid = torch.stack(torch.broadcast_tensors(gx[None, :], t[:, None]), dim=-1)[None]
        ref = F.grid_sample(crop, grid, mode="bilinear", padding_mode="border", align_corners=False)
        torch.testing.assert_close(out[i:i + 1], ref, atol=2e-3, rtol=0)


def test_translate_shifts_the_image_by_whole_pixels_repeating_its_border():
    pre, x = Preprocess(32, crop_area_min=1.0, translate=3), images(64)
    boxes, _ = pre.sample(64, 32, 32, torch.Generator().manual_seed(1))
    shift = boxes[:, :2]
    assert shift.abs().max() == 3 and (shift < 0).any() and (shift > 0).any()
    assert (boxes[:, 2:] == 32).all()  # only shifted, never scaled
    out, ref = pre.train(x, boxes, torch.zeros(64, dtype=torch.bool)), pre.eval(x)
    for i, (dx, dy) in enumerate(shift.tolist()):
        rows, cols = (torch.arange(32) + dy).clamp(0, 31), (torch.arange(32) + dx).clamp(0, 31)
        torch.testing.assert_close(out[i], ref[i][:, rows][:, :, cols])


def test_translate_zero_draws_exactly_the_upstream_augmentation():
    a = Preprocess(32).sample(16, 32, 32, torch.Generator().manual_seed(3))
    b = Preprocess(32, translate=0).sample(16, 32, 32, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    assert torch.equal(a[0], b[0]) and torch.equal(a[0], inception_boxes(16, 32, 32, g))


def test_a_cpu_batch_cropped_in_chunks_equals_each_image_cropped_alone():
    """On a CPU crop_resize takes a large batch CPU_CHUNK images at a time; every image comes out exactly as it
    does alone, padded photos of several sizes and flips included."""
    from mixer_ft.data.preprocess import CPU_CHUNK

    n = 3 * CPU_CHUNK + 5
    g = torch.Generator().manual_seed(7)
    x = torch.randint(0, 256, (n, 40, 52, 3), generator=g, dtype=torch.uint8)
    extents = torch.stack([torch.randint(20, 41, (n,), generator=g), torch.randint(20, 53, (n,), generator=g)], 1)
    boxes = inception_boxes(n, extents[:, 0], extents[:, 1], g)
    flip = torch.rand(n, generator=g) < 0.5
    batch = crop_resize(x, boxes, 24, flip, extents=extents)
    for i in range(n):
        alone = crop_resize(x[i:i + 1], boxes[i:i + 1], 24, flip[i:i + 1], extents=extents[i:i + 1])
        assert torch.equal(batch[i:i + 1], alone), i
