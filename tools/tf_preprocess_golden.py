"""Golden values for the input pipeline, made by TensorFlow itself (vit_jax's input_pipeline semantics).

    pip install tensorflow-cpu numpy      # a tool dependency: never needed by the tests or CI
    python tools/tf_preprocess_golden.py  # writes tests/fixtures/tf_preprocess.npz

vit_jax trains on ``tf.slice(im, begin, size)`` of the box ``tf.image.sample_distorted_bounding_box``
draws, then ``tf.image.resize(im, [S, S])`` (bilinear, half-pixel centres, no antialias), a random
``flip_left_right``, then ``(im - 127.5) / 127.5``; evaluation resizes the whole image. This script
applies exactly those ops to fixed images and boxes, and draws boxes from TF's sampler for the
distribution test. tests/test_fidelity.py compares the project's `mixer_ft.data.preprocess` with them.
"""

from pathlib import Path

import numpy as np
import tensorflow as tf

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "tf_preprocess.npz"
SAMPLED = 2000  # output pixels kept per image at 224 (the whole output is 150,528 values an image)


def train_view(im: np.ndarray, box: tuple[int, int, int, int], size: int, flip: bool) -> np.ndarray:
    x0, y0, w, h = box
    out = tf.image.resize(tf.slice(tf.constant(im), [y0, x0, 0], [h, w, -1]), [size, size])
    if flip:
        out = tf.image.flip_left_right(out)
    return ((out - 127.5) / 127.5).numpy()


def eval_view(im: np.ndarray, size: int) -> np.ndarray:
    return ((tf.image.resize(tf.constant(im), [size, size]) - 127.5) / 127.5).numpy()


def sampled_boxes(shape: tuple[int, int], n: int, seed: int) -> np.ndarray:
    """(n, 4) boxes as (x0, y0, w, h) from vit_jax's call of TF's sampler."""
    tf.random.set_seed(seed)
    boxes = []
    for _ in range(n):
        begin, size, _ = tf.image.sample_distorted_bounding_box(
            [shape[0], shape[1], 3], tf.zeros([0, 0, 4], tf.float32), area_range=(0.05, 1.0),
            min_object_covered=0, use_image_if_no_bounding_boxes=True)
        boxes.append([int(begin[1]), int(begin[0]), int(size[1]), int(size[0])])
    return np.array(boxes, np.int64)


def main() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    # Whole image, edge-touching boxes, small upsampled boxes, a thin one; flipped and not.
    boxes = np.array([[0, 0, 32, 32], [0, 0, 13, 17], [19, 15, 13, 17], [5, 9, 7, 6], [30, 0, 2, 32],
                      [11, 3, 20, 25]], np.int64)
    flips = np.array([False, True, False, True, False, True])
    fields = {"images": images, "boxes": boxes, "flips": flips}
    for size in (32, 224):
        views = np.stack([[train_view(im, tuple(b), size, f) for b, f in zip(boxes, flips)] for im in images])
        if size == 32:
            fields["train_32"] = views.astype(np.float32)
        else:  # a fixed sample of positions, each image's edges included
            flat = views.reshape(len(images), len(boxes), -1)
            pos = np.unique(np.concatenate([rng.choice(flat.shape[-1], SAMPLED, replace=False),
                                            np.arange(224 * 3 * 2), flat.shape[-1] - 1 - np.arange(224 * 3 * 2)]))
            fields["train_224_positions"] = pos
            fields["train_224"] = flat[..., pos].astype(np.float32)
    fields["eval_224"] = np.stack([eval_view(im, 224).reshape(-1)[fields["train_224_positions"]] for im in images])  # same positions
    for name, shape in (("boxes_32", (32, 32)), ("boxes_375x500", (375, 500))):
        fields[name] = sampled_boxes(shape, 4000, seed=0).astype(np.int16)
    fields["tf_version"] = np.array(tf.__version__)
    np.savez_compressed(OUT, **fields)
    print(f"wrote {OUT} ({OUT.stat().st_size:,} bytes) with TensorFlow {tf.__version__}")


if __name__ == "__main__":
    main()
