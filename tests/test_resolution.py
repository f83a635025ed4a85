"""Pretrained weights at another input size (paper, Appendix C): exact K x K tiling from every weight
source, resampling for other sizes, and the errors that name the sizes that work."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from test_weights_npz import flax_mixer_params

from conftest import REPO, randomize_, run_cli
from mixer_ft import ConfigError, create_model, save_pretrained
from mixer_ft.model.mixer import MixerConfig
from mixer_ft.model.resolution import resize_state_dict


def mosaic(tiles: torch.Tensor, k: int) -> torch.Tensor:
    """k*k images (n, c, h, w) laid out as one (1, c, k*h, k*w) image, row by row."""
    rows = [torch.cat(list(tiles[r * k:(r + 1) * k]), dim=2) for r in range(k)]
    return torch.cat(rows, dim=1)[None]


def assert_tiling_is_exact(source: str, size: int, k: int) -> None:
    """At k times the size, a k x k tiling of one image gives the original logits (fp32, 1e-5), on the
    fast path and the plain one; and a mosaic of k*k images gives the mean of their pooled features."""
    small = create_model(pretrained=source).eval()
    big = create_model(pretrained=source, img_size=size * k).eval()
    assert big.config.img_size == size * k and big.config.num_tokens == k * k * small.config.num_tokens
    assert big.config.tokens_mlp_dim == k * k * small.config.tokens_mlp_dim
    x = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        for fast in (True, False):
            small.set_fast_path(fast), big.set_fast_path(fast)
            want = small(x)
            assert want.abs().max() > 0.1  # not a vacuous comparison of zeros
            assert (big(x.repeat(1, 1, k, k)) - want).abs().max() <= 1e-5
        tiles = torch.rand(k * k, 3, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1
        pooled = big.forward_features(mosaic(tiles, k))[0]
        assert (pooled - small.forward_features(tiles).mean(0)).abs().max() <= 1e-5


@pytest.mark.parametrize("k", [2, 3])
def test_google_npz_tiles_exactly(tmp_path, k):
    params = flax_mixer_params(np.random.default_rng(0), 8, 64, 3, 32, 128, 48, 7)  # a custom Mixer at 48
    np.savez(tmp_path / "Mixer.npz", **params)
    assert_tiling_is_exact(str(tmp_path / "Mixer.npz"), 48, k)


def test_hub_state_dict_tiles_exactly(hub_cache, tmp_path):
    src = randomize_(create_model("S/32", num_classes=10), seed=3)
    save_file(src.state_dict(), tmp_path / "model.safetensors")
    config = {"architecture": "mixer_s32_224", "num_classes": 10,
              "pretrained_cfg": {"mean": [0.5] * 3, "std": [0.5] * 3, "input_size": [3, 224, 224]}}
    hub_cache("someone/mixer_s32_224.tiny", {"model.safetensors": tmp_path / "model.safetensors",
                                             "config.json": json.dumps(config).encode()})
    assert_tiling_is_exact("hf-hub:someone/mixer_s32_224.tiny", 224, 2)


def test_model_folder_tiles_exactly_and_the_tiled_model_keeps_its_size(tmp_path):
    import timm

    save_pretrained(randomize_(create_model("S/32", num_classes=10, img_size=64, gelu="exact"), seed=4), tmp_path / "m")
    assert_tiling_is_exact(str(tmp_path / "m"), 64, 2)
    # Saved at 128, it loads at 128 (no img_size needed), as our model and as timm's, same logits.
    tiled = create_model(pretrained=str(tmp_path / "m"), img_size=128).eval()
    save_pretrained(tiled, tmp_path / "tiled")
    back = create_model(pretrained=str(tmp_path / "tiled")).eval()
    assert back.config == tiled.config and back.config.variant == "S/32"
    theirs = timm.create_model(f"local-dir:{tmp_path / 'tiled'}", pretrained=True).eval()
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        assert (back(x) - tiled(x)).abs().max() == 0
        assert (theirs(x) - tiled(x)).abs().max() <= 1e-5


def test_resampling_reaches_any_patch_multiple_and_tiling_refuses_other_sizes(tmp_path):
    save_pretrained(randomize_(create_model("S/32", num_classes=10), seed=5), tmp_path / "m")
    for size in (128, 320):  # smaller, and larger but not a whole multiple
        model = create_model(pretrained=str(tmp_path / "m"), img_size=size, resize="resample")
        assert model.config.img_size == size and model.config.tokens_mlp_dim == 256
        with torch.no_grad():
            assert torch.isfinite(model(torch.randn(1, 3, size, size))).all()
    with pytest.raises(ConfigError, match=r"sizes that tile: 448, 672, 896.*--resize resample"):
        create_model(pretrained=str(tmp_path / "m"), img_size=320)
    with pytest.raises(ConfigError, match="not a multiple of the patch size 32; sizes near it that work: 288, 320"):
        create_model(pretrained=str(tmp_path / "m"), img_size=300, resize="resample")


def test_resampled_token_weights_keep_what_a_token_constant_input_gives():
    """Token-mixing weights that are smooth over the grid (here: constant per row) are resampled so
    that the same value on every token gives the same hidden units and the same outputs."""
    cfg = MixerConfig(patch_size=4, hidden_dim=8, num_blocks=1, tokens_mlp_dim=6, channels_mlp_dim=8, img_size=32)
    g = torch.Generator().manual_seed(0)
    sd = {"blocks.0.mlp_tokens.fc1.weight": torch.randn(6, 1, generator=g).expand(6, 64).clone(),
          "blocks.0.mlp_tokens.fc1.bias": torch.randn(6, generator=g),
          "blocks.0.mlp_tokens.fc2.weight": torch.randn(1, 6, generator=g).expand(64, 6).clone(),
          "blocks.0.mlp_tokens.fc2.bias": torch.full((64,), 0.3)}
    x = torch.full((64,), 0.7)
    want = sd["blocks.0.mlp_tokens.fc1.weight"] @ x
    for size in (16, 48):  # fewer and more tokens
        new, new_cfg = resize_state_dict(sd, cfg, size, "resample")
        n = new_cfg.num_tokens
        assert new["blocks.0.mlp_tokens.fc1.weight"].shape == (6, n) and new["blocks.0.mlp_tokens.fc2.bias"].shape == (n,)
        torch.testing.assert_close(new["blocks.0.mlp_tokens.fc1.weight"] @ torch.full((n,), 0.7), want)
        torch.testing.assert_close(new["blocks.0.mlp_tokens.fc2.weight"],
                                   sd["blocks.0.mlp_tokens.fc2.weight"][:1].expand(n, 6))
        torch.testing.assert_close(new["blocks.0.mlp_tokens.fc2.bias"], torch.full((n,), 0.3))


def cli(*args):
    return run_cli(*args, cwd=REPO)


def test_resampled_model_fine_tunes_on_real_images(smoke_run, tmp_path):
    """The smoke run's 32-pixel model, resampled to 48 pixels, learns on real CIFAR-10 JPEGs."""
    run, _, cut = smoke_run
    out = cli("finetune", "--upstream", run / "model", "--dataset", cut, "--steps", 100, "--batch", 32, "--lr", 0.003,
              "--set", 'optimizer="adamw"', "--warmup", 5, "--eval-every", 0, "--output-dir", tmp_path / "r",
              "--mixed-precision", "no", "--set", "log_every=25",
              "--set", "architecture.img_size=48", "--set", 'architecture.resize="resample"',
              "--set", f'results_dir="{tmp_path / "results"}"', "--set", 'name="resampled"')
    assert out.returncode == 0, out.stderr[-2000:]
    rec = json.loads((tmp_path / "results" / "resampled.json").read_text())
    assert rec["model_config"]["img_size"] == 48 and rec["config"]["resize"] == "resample"  # the old spelling moved up
    losses = [e["loss"] for e in rec["history"]["loss"]]
    assert losses[-1] < losses[0] - 0.05, losses
    assert rec["test_accuracy"] > 0.2  # chance is 0.1


@pytest.mark.parametrize("size, needle", [
    (40, "sizes that tile: 64, 96, 128"),  # a patch multiple, but not a whole multiple of 32
    (50, "sizes near it that work: 48, 52"),
])
def test_finetune_at_a_size_that_does_not_fit_exits_2_naming_sizes_that_do(smoke_run, tmp_path, size, needle):
    run, _, cut = smoke_run
    out = cli("finetune", "--upstream", run / "model", "--dataset", cut, "--steps", 2, "--output-dir", tmp_path / "r",
              "--set", f"architecture.img_size={size}", "--set", f'results_dir="{tmp_path / "results"}"')
    assert out.returncode == 2 and needle in out.stderr and "Traceback" not in out.stderr, out.stderr[-2000:]
