"""Google .npz checkpoints: layout mapping, architecture inference, refusal of unsafe files.

The reference forward pass below is written in the Flax layout itself (HWIO stem kernel,
(in, out) Dense kernels, tanh GELU), independently of the loader's mapping.
"""

import math

import numpy as np
import pytest
import torch

from mixer_ft import CheckpointError, create_model, load_checkpoint


def flax_mixer_params(rng, patch, hidden, blocks, tokens_mlp, channels_mlp, img, classes):
    """A random parameter tree in Google's Mixer layout, keys joined by '/'."""
    def w(*shape):
        return (rng.standard_normal(shape) / math.sqrt(shape[-2] if len(shape) > 1 else 1)).astype(np.float32)

    def b(n):
        return (0.1 * rng.standard_normal(n)).astype(np.float32)

    tokens = (img // patch) ** 2
    p = {"stem/kernel": (rng.standard_normal((patch, patch, 3, hidden)) / math.sqrt(patch * patch * 3)).astype(np.float32),
         "stem/bias": b(hidden)}
    for i in range(blocks):
        pre = f"MixerBlock_{i}"
        for ln in ("LayerNorm_0", "LayerNorm_1"):
            p[f"{pre}/{ln}/scale"], p[f"{pre}/{ln}/bias"] = 1 + b(hidden), b(hidden)
        for name, dims in (("token_mixing", (tokens, tokens_mlp)), ("channel_mixing", (hidden, channels_mlp))):
            p[f"{pre}/{name}/Dense_0/kernel"], p[f"{pre}/{name}/Dense_0/bias"] = w(*dims), b(dims[1])
            p[f"{pre}/{name}/Dense_1/kernel"], p[f"{pre}/{name}/Dense_1/bias"] = w(*dims[::-1]), b(dims[0])
    p["pre_head_layer_norm/scale"], p["pre_head_layer_norm/bias"] = 1 + b(hidden), b(hidden)
    p["head/kernel"], p["head/bias"] = w(hidden, classes), b(classes)
    return p


def flax_reference_forward(p, x_nhwc):
    """Mixer forward in float64 numpy, Flax conventions: NHWC, (in, out) kernels, tanh GELU."""
    x = x_nhwc.astype(np.float64)
    k = p["stem/kernel"].astype(np.float64)
    ph = k.shape[0]
    n, h, w_, c = x.shape
    patches = x.reshape(n, h // ph, ph, w_ // ph, ph, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, -1, ph * ph * c)
    x = patches @ k.reshape(ph * ph * c, -1) + p["stem/bias"]  # 'n h w c -> n (h w) c'

    def ln(v, pre):
        mu, var = v.mean(-1, keepdims=True), v.var(-1, keepdims=True)
        return (v - mu) / np.sqrt(var + 1e-6) * p[f"{pre}/scale"] + p[f"{pre}/bias"]

    def gelu_tanh(v):
        return 0.5 * v * (1 + np.tanh(np.sqrt(2 / np.pi) * (v + 0.044715 * v**3)))

    def mlp(v, pre):
        v = gelu_tanh(v @ p[f"{pre}/Dense_0/kernel"] + p[f"{pre}/Dense_0/bias"])
        return v @ p[f"{pre}/Dense_1/kernel"] + p[f"{pre}/Dense_1/bias"]

    i = 0
    while f"MixerBlock_{i}/LayerNorm_0/scale" in p:
        pre = f"MixerBlock_{i}"
        y = ln(x, f"{pre}/LayerNorm_0").swapaxes(1, 2)
        x = x + mlp(y, f"{pre}/token_mixing").swapaxes(1, 2)
        x = x + mlp(ln(x, f"{pre}/LayerNorm_1"), f"{pre}/channel_mixing")
        i += 1
    x = ln(x, "pre_head_layer_norm").mean(axis=1)
    return x @ p["head/kernel"] + p["head/bias"]


# (variant, patch, hidden, blocks, token MLP, channel MLP, image size, classes)
CASES = [
    ("S/32", 32, 512, 8, 256, 2048, 224, 1000),
    ("S/16", 16, 512, 8, 256, 2048, 224, 10),
    ("B/32", 32, 768, 12, 384, 3072, 384, 100),
    (None, 8, 64, 3, 32, 128, 48, 7),  # a custom Mixer: nothing is assumed from a variant table
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] or "custom" for c in CASES])
def test_google_npz_loads_to_the_reference_logits(tmp_path, case):
    variant, patch, hidden, blocks, tok, ch, img, classes = case
    params = flax_mixer_params(np.random.default_rng(0), patch, hidden, blocks, tok, ch, img, classes)
    path = tmp_path / "Mixer.npz"
    np.savez(path, **params)

    model = create_model(pretrained=str(path)).eval()
    cfg = model.config
    assert (cfg.variant, cfg.patch_size, cfg.hidden_dim, cfg.num_blocks, cfg.tokens_mlp_dim,
            cfg.channels_mlp_dim, cfg.img_size, cfg.num_classes) == case
    assert cfg.gelu == "tanh", "Google's weights were trained with Flax's tanh GELU"

    x = np.random.default_rng(1).uniform(-1, 1, (2, img, img, 3)).astype(np.float32)
    expected = flax_reference_forward(params, x)
    with torch.no_grad():
        got = model(torch.from_numpy(x).permute(0, 3, 1, 2)).double().numpy()
    assert np.abs(expected).max() > 0.1
    np.testing.assert_allclose(got, expected, atol=2e-4 * np.abs(expected).max(), rtol=0)


def test_npz_with_a_named_variant_and_new_head(tmp_path):
    params = flax_mixer_params(np.random.default_rng(0), 32, 512, 8, 256, 2048, 224, 1000)
    np.savez(tmp_path / "s32.npz", **params)
    model = create_model("S/32", pretrained=str(tmp_path / "s32.npz"), num_classes=10)
    assert model.config.num_classes == 10 and model.head.weight.abs().sum() == 0
    torch.testing.assert_close(model.norm.weight, torch.from_numpy(params["pre_head_layer_norm/scale"]))
    with pytest.raises(CheckpointError) as e:
        create_model("B/32", pretrained=str(tmp_path / "s32.npz"))
    assert "Mixer-S/32" in str(e.value) and "mis-shaped: stem.proj.weight" in str(e.value)


def test_npz_holding_pickles_is_refused(tmp_path):
    params = flax_mixer_params(np.random.default_rng(0), 8, 16, 1, 8, 32, 16, 2)
    params["extra"] = np.array([{"a": 1}], dtype=object)
    np.savez(tmp_path / "pickled.npz", **params)
    with pytest.raises(CheckpointError, match="pickled Python objects"):
        load_checkpoint(str(tmp_path / "pickled.npz"))


def test_truncated_npz_is_refused(tmp_path):
    params = flax_mixer_params(np.random.default_rng(0), 8, 16, 1, 8, 32, 16, 2)
    np.savez(tmp_path / "whole.npz", **params)
    data = (tmp_path / "whole.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated, corrupt"):
        load_checkpoint(str(tmp_path / "cut.npz"))


def test_non_mixer_npz_is_named_as_such(tmp_path):
    np.savez(tmp_path / "vit.npz", **{"Transformer/encoder_norm/scale": np.ones(4, np.float32)})
    with pytest.raises(CheckpointError, match="not a Mixer in Google's layout"):
        load_checkpoint(str(tmp_path / "vit.npz"))


def test_npz_missing_a_block_array_lists_it(tmp_path):
    params = flax_mixer_params(np.random.default_rng(0), 8, 16, 2, 8, 32, 16, 2)
    del params["MixerBlock_1/channel_mixing/Dense_1/bias"]
    np.savez(tmp_path / "partial.npz", **params)
    with pytest.raises(CheckpointError, match="Missing: MixerBlock_1/channel_mixing/Dense_1/bias"):
        load_checkpoint(str(tmp_path / "partial.npz"))


def _npz_with(tmp_path, change):
    params = flax_mixer_params(np.random.default_rng(0), 8, 16, 2, 8, 32, 16, 3)
    change(params)
    np.savez(tmp_path / "bad.npz", **params)
    return str(tmp_path / "bad.npz")


@pytest.mark.parametrize("change,needle", [
    (lambda p: p.update({"MixerBlock_1/channel_mixing/Dense_0/kernel": np.ones((16, 31), np.float32)}),
     "blocks.1.mlp_channels.fc1: (16, 31) and bias (32,) do not fit together"),
    (lambda p: p.update({"MixerBlock_0/LayerNorm_1/scale": np.ones((16, 1), np.float32)}),
     "MixerBlock_0/LayerNorm_1/scale is float32 (16, 1), expected a 1-d float array"),
    (lambda p: p.update({"head/bias": np.ones(4, np.float32)}), "head: (16, 3) and bias (4,) do not fit together"),
    (lambda p: p.update({"stem/kernel": np.ones((8, 4, 3, 16), np.float32)}), "stem.proj: (8, 4, 3, 16)"),
    (lambda p: p.update({"pre_head_layer_norm/bias": np.array(["a"] * 16)}),
     "pre_head_layer_norm/bias is <U1 (16,)"),
    (lambda p: p.pop("head/kernel"), "Missing: head/kernel."),
], ids=["channel-kernel", "norm-2d", "head-bias", "stem-not-square", "strings", "head-kernel-missing"])
def test_malformed_npz_arrays_are_named_not_asserted(tmp_path, change, needle):
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(_npz_with(tmp_path, change))
    assert needle in str(e.value), str(e.value)
