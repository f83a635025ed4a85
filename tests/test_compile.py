"""The CUDA path rehearsed on the CPU: torch.compile through `mixer-ft finetune` (1 and 2 processes),
`--micro-batch auto` with an injected out-of-memory, bf16 autocast through the fast path."""

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, randomize_, run_cli
from mixer_ft.model.mixer import MixerConfig, MlpMixer
from mixer_ft.train.build import build_model
from mixer_ft.train.devices import probe_micro_batch
from mixer_ft.train.hardware import cpu_native_bf16
from mixer_ft.train.recipe import Recipe

TINY = ["--set", "architecture.patch_size=8", "--set", "architecture.hidden_dim=32", "--set", "architecture.num_blocks=2",
        "--set", "architecture.tokens_mlp_dim=16", "--set", "architecture.channels_mlp_dim=64",
        "--set", "architecture.img_size=32", "--set", 'model="custom"', "--set", 'upstream="none"']
ARCH = {"patch_size": 8, "hidden_dim": 32, "num_blocks": 2, "tokens_mlp_dim": 16, "channels_mlp_dim": 64, "img_size": 32}


@contextlib.contextmanager
def oom_above(limit):
    """A global forward pre-hook (a torch API) that raises torch's out-of-memory error for any
    training forward pass of a Mixer above ``limit`` images: an OOM injected into torch, at a chosen
    size, with our code untouched."""
    def hook(module, args):
        if type(module).__name__ == "MlpMixer" and torch.is_grad_enabled() and args[0].shape[0] > limit:
            raise torch.OutOfMemoryError(f"injected: {args[0].shape[0]} images > {limit}")

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@pytest.fixture(scope="module")
def cut(cifar_subset):
    return cifar_subset(train=100, test=20)


def run(cmd, check=True):
    out = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, env=os.environ.copy(), timeout=900,
                         cwd=REPO)
    if check:
        assert out.returncode == 0, out.stderr[-3000:]
    return out


def args(tmp, cut, name, *extra):
    return ["finetune", "--dataset", cut, "--output-dir", tmp / name, "--set", f'results_dir="{tmp / "results"}"',
            "--set", f'name="{name}"', *TINY, *extra]


def record(tmp, name):
    return json.loads((tmp / "results" / f"{name}.json").read_text())


@pytest.mark.parametrize("fast", [True, False], ids=["fast-path", "plain"])
def test_the_model_compiles_to_one_graph_without_breaks(fast):
    model = MlpMixer(MixerConfig(**ARCH, num_classes=10)).set_fast_path(fast).train()
    explained = torch._dynamo.explain(model)(torch.randn(4, 3, 32, 32))
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


@pytest.mark.slow
def test_compiled_finetune_follows_the_eager_loss_curve_on_one_and_two_processes(tmp_path, cut):
    common = ["--steps", 6, "--batch", 16, "--lr", 0.05, "--warmup", 2, "--eval-every", 0, "--mixed-precision", "no",
              "--set", "log_every=1"]
    assert run_cli(*args(tmp_path, cut, "eager", *common, "--set", "compile=false"), cwd=REPO).returncode == 0
    # Compiled runs in processes of their own: torch.compile's caches and graph-break counters are per process.
    run([sys.executable, "-m", "mixer_ft", *args(tmp_path, cut, "compiled", *common, "--set", "compile=true")])
    # `accelerate launch --cpu` starts one process (its multi-CPU mode wants MPI); --multi_gpu starts
    # two with torchrun, which on a machine without GPUs talk over gloo (see devices.use_cpu).
    launch = [Path(sys.executable).parent / "accelerate", "launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "-m", "mixer_ft"]
    run([*launch, *args(tmp_path, cut, "compiled2", *common, "--set", "compile=true")])
    eager, one, two = (record(tmp_path, n) for n in ("eager", "compiled", "compiled2"))
    assert (eager["compiled"], one["compiled"], two["compiled"]) == (False, True, True)
    # No graph break in our model or loop. Under DDP, torch's own wrapper (DistributedDataParallel.forward,
    # which dynamo does not trace) adds a few of its own at the first compile.
    assert one["graph_breaks"] == 0 and isinstance(two["graph_breaks"], int) and eager["graph_breaks"] is None
    assert two["hardware"]["count"] == 2
    curve = [e["loss"] for e in eager["history"]["loss"]]
    assert len(curve) == 6 and curve[-1] < curve[0]
    for other in (one, two):
        np.testing.assert_allclose([e["loss"] for e in other["history"]["loss"]], curve, atol=1e-4)
        assert other["test_accuracy"] == pytest.approx(eager["test_accuracy"], abs=0.02)
    # What a compiled run saves is the plain model (no "_orig_mod." names): it loads, and equals the eager run's.
    want = load_file(tmp_path / "eager" / "model" / "model.safetensors")
    for name in ("compiled", "compiled2"):
        got = load_file(tmp_path / name / "model" / "model.safetensors")
        assert got.keys() == want.keys()
        for k in want:
            torch.testing.assert_close(got[k], want[k], atol=1e-4, rtol=1e-3)
        last = torch.load(sorted((tmp_path / name / "checkpoints").glob("*.pt"))[-1], weights_only=False)
        assert set(last["model"]) == set(want)


def test_auto_micro_batch_backs_off_an_injected_oom_and_leaves_the_model_untouched():
    recipe = Recipe(upstream="none", model="custom", architecture=ARCH)
    torch.manual_seed(0)
    model, _ = build_model(recipe, [str(i) for i in range(10)])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()

    def oom_above_10(module, inputs):
        if inputs[0].shape[0] > 10:
            raise torch.OutOfMemoryError("injected")

    handle = model.register_forward_pre_hook(oom_above_10)
    try:
        assert probe_micro_batch(model, 32, torch.device("cpu"), "no") == 8  # 32 and 16 do not fit; 8 does
        assert probe_micro_batch(model, 30, torch.device("cpu"), "no") == 10
    finally:
        handle.remove()
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())


def test_auto_micro_batch_trains_as_the_explicit_micro_batch_it_picks(tmp_path, cut):
    common = ["--steps", 4, "--batch", 32, "--lr", 0.05, "--warmup", 1, "--eval-every", 0]
    with oom_above(10):
        assert run_cli(*args(tmp_path, cut, "auto", *common, "--micro-batch", "auto"), cwd=REPO).returncode == 0
    assert run_cli(*args(tmp_path, cut, "explicit", *common, "--micro-batch", 8), cwd=REPO).returncode == 0
    auto = record(tmp_path, "auto")
    assert (auto["micro_batch"], auto["accumulation"]) == (8, 4)
    a = load_file(tmp_path / "auto" / "model" / "model.safetensors")
    b = load_file(tmp_path / "explicit" / "model" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    with oom_above(0):
        out = run_cli(*args(tmp_path, cut, "none", *common, "--micro-batch", "auto"), cwd=REPO)
    assert out.returncode == 2 and "Not even a micro-batch of 1 fits" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.skipif(not cpu_native_bf16(), reason="this CPU has no native bf16 (AVX512-BF16, AMX): torch would "
                    "emulate it about a hundred times slower")
def test_bf16_autocast_through_the_fast_path_is_close_to_fp32():
    torch.manual_seed(0)
    model = randomize_(MlpMixer(MixerConfig(**ARCH, num_classes=10)))
    x = torch.randn(16, 3, 32, 32)

    def forward_backward(bf16):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(x).float()
        out.square().mean().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    out32, grads32 = forward_backward(False)
    out16, grads16 = forward_backward(True)
    assert not torch.equal(out16, out32)  # bf16 did run
    assert (out16 - out32).norm() / out32.norm() < 2e-2
    flat = torch.cat([g.flatten() for g in grads32.values()])
    assert torch.cat([g.flatten() for g in grads16.values()]).sub(flat).norm() / flat.norm() < 5e-2
    for name, g in grads32.items():  # each weight matrix too (some biases' true gradient is ~0: noise only)
        if g.ndim >= 2:
            assert (grads16[name] - g).norm() / g.norm() < 5e-2, name
