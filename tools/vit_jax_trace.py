"""A golden training trace made by Google's own fine-tuning code (vit_jax), for tests/test_fidelity.py.

    # a checkout of google-research/vision_transformer (vit_jax) at the pinned commit, and its needs:
    git clone https://github.com/google-research/vision_transformer && git -C vision_transformer checkout c6de1e5
    pip install jax flax optax ml_collections einops clu tensorflow-cpu tensorflow-datasets pandas scipy
    python tools/vit_jax_trace.py --vit-jax vision_transformer   # writes tests/fixtures/vit_jax_trace.npz

What runs is vit_jax's: `models_mixer.MlpMixer` (tanh GELU, zero-initialised head),
`checkpoint.load_pretrained` (which always puts in a new head), the optimizer of
`train.py` (`optax.chain(clip_by_global_norm(1.0), sgd(lr_fn, momentum=0.9, accumulator_dtype=...))`),
`utils.create_learning_rate_schedule` and `train.make_update_fn` (loss, `utils.accumulate_gradient`
over micro-batches, pmean, update), on the CPU in float32. The model is a tiny Google-format Mixer
(16x16 inputs, 4x4 patches, 2 blocks) whose checkpoint has a 10-class head of random values; the
data are fixed uint8 images and labels, scaled as vit_jax's input pipeline does, (x - 127.5) / 127.5.
Global batch 64 in 4 micro-batches of 16, 60 steps, 10 of warm-up, lr 0.03.

Two traces: the momentum buffer in bfloat16 (train.py as published) and in float32 (the same with
``accumulator_dtype=None``). Each holds the learning rate each update applied (optax counts from 0),
the loss of every step, the parameters after steps 1 and 10 (per tensor: sum and sum of squares) and
every parameter after step 60. JAX is a tool dependency of this script only; CI never needs it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "vit_jax_trace.npz"
PINNED = "c6de1e5"
ARCH = {"patches": 4, "num_classes": 10, "num_blocks": 2, "hidden_dim": 32, "tokens_mlp_dim": 16,
        "channels_mlp_dim": 64}
SIZE, BATCH, ACCUM, STEPS, WARMUP, LR, POOL = 16, 64, 4, 60, 10, 0.03, 96


def flat(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    out = {}
    for k, v in tree.items():
        key = f"{prefix}/{k}" if prefix else k
        out |= flat(v, key) if isinstance(v, Mapping) else {key: np.asarray(v, np.float32)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vit-jax", required=True, type=Path, help=f"checkout of vision_transformer at {PINNED}")
    args = parser.parse_args()
    sys.path.insert(0, str(args.vit_jax.resolve()))

    # train.py imports vit_jax.models for its model registry, which pulls in the LiT models and
    # tensorflow_text; make_update_fn, the part run here, never touches it.
    import types

    import flax
    import jax
    import ml_collections
    import optax

    sys.modules.setdefault("vit_jax.models", types.ModuleType("vit_jax.models"))
    from vit_jax import checkpoint, models_mixer, train, utils

    rng = np.random.default_rng(0)
    model = models_mixer.MlpMixer(patches=ml_collections.ConfigDict({"size": (ARCH["patches"],) * 2}),
                                  **{k: v for k, v in ARCH.items() if k != "patches"})
    init = flax.core.unfreeze(model.init(jax.random.PRNGKey(0), np.zeros((1, SIZE, SIZE, 3), np.float32),
                                         train=False)["params"])
    # The "pretrained" checkpoint: every tensor random, the 10-class head too (load_pretrained replaces it).
    upstream = jax.tree.map(lambda a: (rng.standard_normal(a.shape) * (0.3 if a.ndim > 1 else 0.1)
                                       + (1.0 if a.ndim == 1 and a.shape[0] == 0 else 0)).astype(np.float32), init)
    for ln in [k for k in flat(upstream) if k.endswith("/scale")]:  # LayerNorm gains near 1
        node = upstream
        *path, leaf = ln.split("/")
        for p in path:
            node = node[p]
        node[leaf] = (1 + 0.1 * rng.standard_normal(node[leaf].shape)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/upstream.npz"
        np.savez(path, **flat(upstream))  # Google's .npz layout: the tree's names joined by '/'

        params = checkpoint.load_pretrained(pretrained_path=path, init_params=init,
                                            model_config=ml_collections.ConfigDict({"representation_size": None}))
    images = rng.integers(0, 256, (POOL, SIZE, SIZE, 3), dtype=np.uint8)
    labels = rng.integers(0, ARCH["num_classes"], POOL)
    batches = np.stack([rng.permutation(POOL)[:BATCH] for _ in range(STEPS)])
    lr_fn = utils.create_learning_rate_schedule(STEPS, LR, "cosine", WARMUP)
    fields: dict[str, np.ndarray] = {f"upstream/{k}": v for k, v in flat(upstream).items()}
    fields |= {"images": images, "labels": labels, "batches": batches, "pinned_commit": np.array(PINNED),
               "config": np.array([SIZE, BATCH, ACCUM, STEPS, WARMUP, LR])}
    for name, dtype in (("bf16", "bfloat16"), ("fp32", None)):
        tx = optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(learning_rate=lr_fn, momentum=0.9,
                                                                     accumulator_dtype=dtype))
        update = train.make_update_fn(apply_fn=model.apply, accum_steps=ACCUM, tx=tx)
        p, state = flax.jax_utils.replicate((params, tx.init(params)))
        key = flax.jax_utils.replicate(jax.random.PRNGKey(0))
        losses, lrs = [], []
        for step in range(STEPS):
            idx = batches[step]
            x = ((images[idx].astype(np.float32) - 127.5) / 127.5)[None]
            y = np.eye(ARCH["num_classes"], dtype=np.float32)[labels[idx]][None]
            lrs.append(float(lr_fn(step)))  # what optax applies at this update: its count starts at 0
            p, state, loss, key = update(p, state, {"image": x, "label": y}, key)
            losses.append(float(loss[0]))
            if step + 1 in (1, 10):
                tree = flat(flax.jax_utils.unreplicate(p))
                fields[f"{name}/digest_{step + 1}"] = np.array([[v.sum(), (v.astype(np.float64) ** 2).sum()]
                                                                for _, v in sorted(tree.items())])
        fields[f"{name}/loss"], fields[f"{name}/lr"] = np.array(losses), np.array(lrs)
        fields |= {f"{name}/final/{k}": v for k, v in flat(flax.jax_utils.unreplicate(p)).items()}
        print(name, "loss", losses[0], "->", losses[-1])
    np.savez_compressed(OUT, **fields)
    print(f"wrote {OUT} ({OUT.stat().st_size:,} bytes) with jax {jax.__version__}, flax {flax.__version__}, "
          f"optax {optax.__version__}")


if __name__ == "__main__":
    main()
