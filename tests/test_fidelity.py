"""Fidelity to Google's own code, checked against golden values its code made.

tests/fixtures/tf_preprocess.npz comes from TensorFlow running vit_jax's input pipeline ops
(tools/tf_preprocess_golden.py); tests/fixtures/vit_jax_trace.npz from vit_jax's own model, loss,
schedule, accumulation, clipping and optimizer on a tiny Google-format Mixer (tools/vit_jax_trace.py).
Neither TensorFlow nor JAX is needed here: only the scripts that regenerate the fixtures need them.
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from mixer_ft.data.preprocess import Preprocess, crop_resize, inception_boxes

FIXTURES = Path(__file__).parent / "fixtures"
TF = np.load(FIXTURES / "tf_preprocess.npz")


def ours_train(size: int) -> np.ndarray:
    """Our training view of every (image, box, flip) of the fixture, NHWC like TF's."""
    images = torch.from_numpy(TF["images"])
    pre = Preprocess(size)
    views = []
    for im in images:
        n = len(TF["boxes"])
        out = pre.train(im[None].expand(n, -1, -1, -1), torch.from_numpy(TF["boxes"]), torch.from_numpy(TF["flips"]))
        views.append(out.permute(0, 2, 3, 1).numpy())
    return np.stack(views)


def test_training_crops_at_32_px_equal_tf_slice_then_resize():
    np.testing.assert_allclose(ours_train(32), TF["train_32"], atol=1e-5, rtol=0)


def test_training_crops_at_224_px_equal_tf_slice_then_resize():
    ours = ours_train(224).reshape(*TF["train_224"].shape[:2], -1)[..., TF["train_224_positions"]]
    np.testing.assert_allclose(ours, TF["train_224"], atol=1e-5, rtol=0)


def test_evaluation_resize_equals_tf_resize_of_the_whole_image():
    ours = Preprocess(224).eval(torch.from_numpy(TF["images"])).permute(0, 2, 3, 1).numpy()
    ours = ours.reshape(len(ours), -1)[:, TF["train_224_positions"]]
    np.testing.assert_allclose(ours, TF["eval_224"], atol=1e-5, rtol=0)


def test_a_crop_never_takes_pixels_from_outside_its_box():
    # Everything outside the box is changed: the crop must not notice.
    x = torch.from_numpy(TF["images"][:1]).expand(6, -1, -1, -1).clone()
    boxes = torch.from_numpy(TF["boxes"])
    a = crop_resize(x, boxes, 224)
    for i, (x0, y0, w, h) in enumerate(boxes.tolist()):
        keep = x[i, y0:y0 + h, x0:x0 + w].clone()
        x[i] = 255 - x[i]
        x[i, y0:y0 + h, x0:x0 + w] = keep
    assert torch.equal(a, crop_resize(x, boxes, 224))


def _ks(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the two empirical CDFs."""
    a, b = np.sort(a), np.sort(b)
    at = np.concatenate([a, b])
    return float(np.max(np.abs(np.searchsorted(a, at, "right") / len(a) - np.searchsorted(b, at, "right") / len(b))))


@pytest.mark.parametrize("key,height,width", [("boxes_32", 32, 32), ("boxes_375x500", 375, 500)])
def test_crop_boxes_follow_tfs_sample_distorted_bounding_box(key, height, width):
    tf = TF[key].astype(np.int64)  # 4,000 boxes from TF's own sampler, as vit_jax calls it
    ours = inception_boxes(20_000, height, width, torch.Generator().manual_seed(0)).numpy()
    assert (ours[:, 0] + ours[:, 2] <= width).all() and (ours[:, 1] + ours[:, 3] <= height).all()
    # The KS statistic's critical value at alpha = 0.001 for 4,000 against 20,000 draws is 0.034.
    # (The sampler before 0.2, area uniform and aspect log-uniform, was 0.1 and more off on area.)
    features = {"area": lambda b: b[:, 2] * b[:, 3] / (height * width), "aspect": lambda b: b[:, 2] / b[:, 3],
                "x0": lambda b: b[:, 0] / np.maximum(width - b[:, 2], 1),
                "y0": lambda b: b[:, 1] / np.maximum(height - b[:, 3], 1)}
    for name, f in features.items():
        assert _ks(f(tf), f(ours)) < 0.034, name
    # TF's offset is uniform in [0, W - w): a box smaller than the image never touches the far edge.
    smaller = ours[:, 2] < width
    assert not (ours[smaller, 0] + ours[smaller, 2] == width).any()
    assert (tf[:, 2] == width).mean() == pytest.approx((ours[:, 2] == width).mean(), abs=0.01)


# --------------------------------------------------------------------------- the training step

TRACE = np.load(FIXTURES / "vit_jax_trace.npz")


def _to_ours(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    from mixer_ft.weights.google_npz import npz_to_state_dict

    return npz_to_state_dict(arrays, "trace")


def _google_names() -> dict[str, str]:
    """Our state-dict name of each Google parameter name (the .npz layout's own mapping)."""
    from mixer_ft.weights.google_npz import _NPZ_PARAMS, _npz_layers

    upstream = {k.removeprefix("upstream/"): TRACE[k] for k in TRACE.files if k.startswith("upstream/")}
    ours = {"kernel": "weight", "bias": "bias", "scale": "weight"}
    return {f"{src}/{name}": f"{dst}.{ours[name]}" for src, dst, kind in _npz_layers(upstream)
            for name, _ in _NPZ_PARAMS[kind]}


@pytest.mark.parametrize("momentum", ["bf16", "fp32"])
def test_fine_tuning_follows_vit_jax_step_by_step(tmp_path, cifar_subset, momentum):
    """vit_jax's own code (tools/vit_jax_trace.py) against ours on the same checkpoint and batches:
    the run's real setup and optimizer step (Accelerate, micro-batches of 16 accumulated to 64,
    clipping after accumulation, the schedule, SGD's momentum in the trace's dtype)."""
    from conftest import _reset_accelerate
    from mixer_ft.train.loop import optimizer_step, setup
    from mixer_ft.train.recipe import Recipe

    size, batch, accum, steps, warmup, lr = TRACE["config"]
    upstream = {k.removeprefix("upstream/"): TRACE[k] for k in TRACE.files if k.startswith("upstream/")}
    np.savez(tmp_path / "upstream.npz", **upstream)  # a 10-class Google checkpoint, head included
    recipe = Recipe(upstream=str(tmp_path / "upstream.npz"), dataset=str(cifar_subset(train=100, test=20)),
                    steps=int(steps), global_batch=int(batch), micro_batch=int(batch // accum), lr=float(lr),
                    warmup_steps=int(warmup), mixed_precision="no", eval_every=0, checkpoint_every=0,
                    momentum_dtype={"bf16": "bfloat16", "fp32": "float32"}[momentum],
                    output_dir=str(tmp_path / "run"), results_dir=str(tmp_path / "results"))
    try:
        run = setup(recipe)
        assert run.accum == accum and run.head.startswith("new zero head")  # as load_pretrained: always new
        images, labels, names = TRACE["images"], TRACE["labels"], _google_names()
        losses, lrs = [], []
        for step in range(int(steps)):
            idx = TRACE["batches"][step]
            x = run.pre.eval(torch.from_numpy(images[idx]))  # (x - 127.5) / 127.5, NCHW
            y = torch.from_numpy(labels[idx])
            m = len(idx) // run.accum
            loss, _, _ = optimizer_step(run, [(x[i * m:(i + 1) * m], y[i * m:(i + 1) * m]) for i in range(run.accum)])
            losses.append(float(loss))
            lrs.append(run.lr)
            if step + 1 in (1, 10):
                sd = run.net.state_dict()
                ours = np.array([[sd[names[k]].sum().item(), sd[names[k]].double().square().sum().item()]
                                 for k in sorted(names)])
                np.testing.assert_allclose(ours, TRACE[f"{momentum}/digest_{step + 1}"], rtol=1e-4, atol=1e-5)
    finally:
        _reset_accelerate()
    assert losses[0] == pytest.approx(np.log(10), abs=1e-6)  # a zero head: every class equally likely
    np.testing.assert_allclose(lrs, TRACE[f"{momentum}/lr"], rtol=1e-6, atol=1e-9)  # the first update's is 0
    np.testing.assert_allclose(losses, TRACE[f"{momentum}/loss"], atol=1e-5, rtol=0)
    final = _to_ours({k.split("/final/", 1)[1]: TRACE[k] for k in TRACE.files if k.startswith(f"{momentum}/final/")})
    sd = run.net.state_dict()
    # A bfloat16 buffer rounds: a last-bit difference in a float32 gradient can move an entry by one
    # bfloat16 step (2^-8 of it), so its parameters get a wider bound (measured here: 6.7e-6; fp32 1.2e-7).
    tol = 1e-5 if momentum == "fp32" else 5e-5
    for k, v in final.items():
        torch.testing.assert_close(sd[k], v, atol=tol, rtol=0, msg=k)
