"""The speed benchmark's arithmetic and output, and that the fast path computes the same thing."""

import json

import pytest
import torch
import torch.nn.functional as F

from conftest import randomize_, run_cli
from mixer_ft import MixerConfig, create_model
from mixer_ft.model.mixer import MlpMixer
from mixer_ft.report.bench import forward_flops


@pytest.mark.parametrize("variant,gflop", [("B/16", 25.2), ("L/16", 89.2)])
def test_forward_flops_match_the_published_cost(variant, gflop):
    assert forward_flops(MixerConfig.from_variant(variant)) / 1e9 == pytest.approx(gflop, rel=0.01)


@pytest.mark.parametrize("variant", ["S/32", "B/16"])
def test_fast_and_plain_paths_agree_on_outputs_and_gradients(variant):
    model = randomize_(create_model(variant, gelu="exact", num_classes=10), seed=6)
    x = torch.randn(3, 3, 224, 224)
    y = torch.tensor([1, 4, 7])
    results = []
    for fast in (True, False):
        model.set_fast_path(fast).zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (la, ga), (lb, gb) = results
    torch.testing.assert_close(la, lb, rtol=1e-5, atol=1e-6)
    for name in ga:
        torch.testing.assert_close(ga[name], gb[name], rtol=1e-4, atol=1e-6, msg=name)


def test_bench_command_prints_the_documented_json():
    out = run_cli("bench", "--model", "S/32", "--batch", "16", "--device", "cpu", "--json", "--steps", "2")
    assert out.returncode == 0, out.stderr
    rec = json.loads(out.stdout)
    assert list(rec) == ["model", "batch", "device", "ours_images_per_s", "timm_images_per_s", "ratio",
                         "timm_compiled_images_per_s", "ratio_vs_timm_compiled", "peak_memory_bytes", "mfu"]
    assert rec["model"] == "S/32" and rec["batch"] == 16 and rec["mfu"] is None and rec["device"].startswith("CPU")
    assert rec["timm_compiled_images_per_s"] is None and rec["ratio_vs_timm_compiled"] is None  # ours eager on a CPU
    assert rec["ours_images_per_s"] > 0 and rec["timm_images_per_s"] > 0
    assert rec["ratio"] == pytest.approx(rec["ours_images_per_s"] / rec["timm_images_per_s"], rel=0.01)


def test_where_ours_is_compiled_timm_is_timed_compiled_too_and_each_ratio_names_its_peer(monkeypatch):
    """--compile max-autotune on the CPU: three steps timed in alternation, timm's compiled in the same mode as
    ours. (torch.compile itself is left out here, its inductor build takes a minute a model on this CPU: the
    compiled step is tested in tests/test_compile.py; here, what is compiled and how, and what is recorded.)"""
    from mixer_ft.report.bench import run_bench, summary_text

    compiled = []
    monkeypatch.setattr(torch, "compile", lambda model, mode=None: compiled.append((type(model).__module__, mode)) or model)
    rec = run_bench("S/32", 2, "cpu", img_size=64, steps=2, warmup=1, compile_mode="max-autotune")
    assert compiled == [("mixer_ft.model.mixer", "max-autotune"), ("timm.models.mlp_mixer", "max-autotune")]
    assert rec["ours_compiled"] and rec["timm_compiled_images_per_s"] > 0
    assert rec["ratio_vs_timm_compiled"] == pytest.approx(rec["ours_images_per_s"] / rec["timm_compiled_images_per_s"],
                                                          rel=0.01)
    text = summary_text(rec)
    assert "ours (compiled)" in text and "timm eager" in text and "timm compiled" in text
    assert "--compile must be auto, eager or one of" in one_line_error(run_cli("bench", "--compile", "fast"))


def one_line_error(out):
    lines = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert out.returncode == 2 and len(lines) == 1, out.stderr[-2000:]
    return lines[0]


def test_bench_refuses_a_missing_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    out = run_cli("bench", "--device", "cuda")
    assert out.returncode == 2 and "no CUDA device" in out.stderr


@pytest.mark.parametrize("size", [32, 36])  # 36: the conv drops a ragged 4-pixel edge, still 4x4 patches
def test_token_major_stem_equals_the_conv_stem(size):
    cfg = MixerConfig(patch_size=8, hidden_dim=16, num_blocks=2, tokens_mlp_dim=8, channels_mlp_dim=32,
                      img_size=32, num_classes=5)
    model = randomize_(MlpMixer(cfg), seed=2)
    x = torch.randn(2, 3, size, size)
    fast = model.stem.forward_token_major(x)
    assert fast.shape == (16, 2, 16)
    torch.testing.assert_close(fast, model.stem(x).transpose(0, 1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.set_fast_path(True)(x), model.set_fast_path(False)(x), rtol=1e-5, atol=1e-5)


def test_bench_at_448_times_the_tiled_architecture_against_a_timm_mixer_of_the_same_widths(tmp_path):
    from mixer_ft.model.mixer import num_params
    from mixer_ft.model.resolution import resized_config
    from mixer_ft.report.bench import _timm_model, save

    cfg = resized_config(MixerConfig.from_variant("S/32"), 448, "tile")
    assert cfg.tokens_mlp_dim == 4 * 256 and cfg.num_tokens == 196
    with torch.device("meta"):
        assert num_params(_timm_model("S/32", cfg)) == num_params(MlpMixer(cfg))
    # A record at 448 does not overwrite the one at 224.
    rec = {"device": "CPU (x)", "model": "S/32", "batch": 4, "precision": "fp32"}
    assert save(rec | {"img_size": 224}, tmp_path).name == "cpu_S32_b4_fp32.json"
    assert save(rec | {"img_size": 448}, tmp_path).name == "cpu_S32_448px_b4_fp32.json"


def test_the_data_scale_benchmark_measures_the_five_ways_on_a_small_set(tmp_path):
    """benchmarks/data_scale.py as docs/speed.md runs it, on 60 images: every way delivers, and the compact store
    takes less disk than the decoded store (the record's own comparison)."""
    import subprocess
    import sys

    from conftest import REPO

    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "data_scale.py"), "--images", "60", "--batches", "1",
                          "--batch", "8", "--workers", "1", "--out", str(tmp_path)], capture_output=True, text=True,
                         cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    record = json.loads((tmp_path / "data_scale_cpu_60.json").read_text())
    ways = record["results"]
    assert set(ways) == {"decoded", "encoded", "shards", "stream", "timm"}
    assert all(ways[w]["images_per_s"]["1"] > 0 and ways[w]["first_batch_s"] > 0 for w in ways)
    assert 0 < ways["encoded"]["cache_bytes"] < ways["decoded"]["cache_bytes"] and ways["timm"]["cache_bytes"] == 0
    assert ways["stream"]["cache_bytes"] == 0  # nothing cached
    assert record["encoded_cache_share"] == round(ways["encoded"]["cache_bytes"] / ways["decoded"]["cache_bytes"], 4)
