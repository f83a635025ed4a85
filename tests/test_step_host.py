"""The host side of a training step: data prepared ahead, the multi-tensor bf16-momentum update, the
loss watched without waiting for the device. Each is faster only if it computes exactly what the
plain way computes: these tests hold them to that, bit for bit on the CPU."""

import re

import numpy as np
import pytest
import torch

from conftest import _reset_accelerate, run_cli
from mixer_ft.train.bf16_momentum import BF16MomentumSGD
from mixer_ft.train.feed import TrainFeed
from mixer_ft.train.loop import setup
from mixer_ft.train.recipe import Recipe

TINY = {"model": "custom", "upstream": "none", "architecture": {
    "patch_size": 8, "hidden_dim": 32, "num_blocks": 2, "tokens_mlp_dim": 16, "channels_mlp_dim": 64, "img_size": 32}}


def per_tensor_reference(params, grads, bufs, lr, momentum, weight_decay=0.0):
    """vit_jax's update written out for one tensor at a time: t = g + m * t_prev (float32, m as bfloat16
    types it), p -= lr * t, the buffer keeps t rounded to bfloat16."""
    m = float(torch.tensor(momentum, dtype=torch.bfloat16))
    for i, (p, g) in enumerate(zip(params, grads)):
        g = g + weight_decay * p if weight_decay else g
        t = g if bufs[i] is None else g + bufs[i].float() * m
        p.add_(t, alpha=-lr)
        bufs[i] = t.to(torch.bfloat16)


def make_params(seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(*shape, generator=gen)) for shape in ((7,), (33, 5), (2, 3, 4), (1000,))]


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_the_multi_tensor_bf16_momentum_update_equals_the_per_tensor_definition_bit_for_bit(weight_decay):
    ours, ref = make_params(0), make_params(0)
    opt = BF16MomentumSGD([{"params": ours, "weight_decay": weight_decay}], lr=0.03, momentum=0.9)
    bufs = [None] * len(ref)
    gen = torch.Generator().manual_seed(1)
    for step in range(6):
        grads = [torch.randn(p.shape, generator=gen) for p in ref]
        late = step < 2  # the last parameter gets its first gradient at step 2: a mixed first/later update
        for i, (p, g) in enumerate(zip(ours, grads)):
            p.grad = None if late and i == 3 else g.clone()
        opt.step()
        with torch.no_grad():
            keep = [i for i in range(len(ref)) if not (late and i == 3)]
            sub = [bufs[i] for i in keep]
            per_tensor_reference([ref[i] for i in keep], [grads[i] for i in keep], sub, 0.03, 0.9, weight_decay)
            for i, b in zip(keep, sub):
                bufs[i] = b
        for i, (a, b) in enumerate(zip(ours, ref)):
            assert torch.equal(a, b), (step, i)
            if bufs[i] is not None:
                buf = opt.state[a]["momentum_buffer"]
                assert buf.dtype == torch.bfloat16 and torch.equal(buf, bufs[i]), (step, i)


def test_a_resumed_bf16_momentum_update_keeps_its_bfloat16_buffers_and_continues_bit_for_bit():
    whole, resumed = make_params(2), make_params(2)
    opt_a = BF16MomentumSGD([{"params": whole, "weight_decay": 0.0}], lr=0.05, momentum=0.9)
    opt_b = BF16MomentumSGD([{"params": resumed, "weight_decay": 0.0}], lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(3)
    grads = [[torch.randn(p.shape, generator=gen) for p in whole] for _ in range(6)]
    for step, gs in enumerate(grads):
        if step == 3:  # a checkpoint and a resume: torch's load_state_dict casts the buffers to float32
            saved = opt_b.state_dict()
            opt_b = BF16MomentumSGD([{"params": resumed, "weight_decay": 0.0}], lr=0.05, momentum=0.9)
            opt_b.load_state_dict(saved)
            assert all(s["momentum_buffer"].dtype == torch.bfloat16 for s in opt_b.state.values())
        for opt, params in ((opt_a, whole), (opt_b, resumed)):
            for p, g in zip(params, gs):
                p.grad = g.clone()
            opt.step()
    assert all(torch.equal(a, b) for a, b in zip(whole, resumed))


@pytest.fixture
def tiny_run(tmp_path, cifar_subset):
    """A real run's setup (data, model, Accelerate) on 1,000 CIFAR-10 images, global batch 64: 15 steps an epoch."""
    recipe = Recipe(dataset=str(cifar_subset(train=100, test=20)), steps=40, global_batch=64, warmup_steps=2,
                    eval_every=0, checkpoint_every=0, output_dir=str(tmp_path / "run"),
                    results_dir=str(tmp_path / "results"), crop_area_min=0.3, **TINY)
    try:
        yield setup(recipe)
    finally:
        _reset_accelerate()


def test_data_prepared_ahead_or_from_the_device_copy_is_the_data_of_the_step(tiny_run):
    """The feed's three ways (the memory map read when the step starts; prepared a step ahead in its thread;
    gathered from the images' device copy) give every step the same images, labels, boxes and flips,
    across an epoch's end and from a resume mid-epoch."""
    run, data = tiny_run, tiny_run.data

    def feed(**how):
        return TrainFeed(data, run.splits["train"][1], run.pre, seed=run.recipe.seed, global_batch=run.recipe.global_batch,
                         steps_per_epoch=run.steps_per_epoch, total=run.total, device=run.device, **how)

    plain, ahead = feed(prefetch=False), feed(prefetch=True)
    copy = (torch.from_numpy(np.array(data.images["train"])), torch.from_numpy(np.array(data.labels["train"])))
    resident = feed(on_device=copy, prefetch=True)
    try:
        assert ahead.pool is not None and resident.on_device and not plain.on_device
        for start in (0, 9):  # 9: a resumed run, whose feed starts mid-epoch
            for step in range(start, start + 12):  # steps 14 -> 15 cross into the second epoch
                want = plain.take(step)
                for feed in (ahead, resident):
                    got = feed.take(step)
                    for a, b in ((got.images, want.images), (got.labels, want.labels), (got.boxes, want.boxes),
                                 (got.flips, want.flips)):
                        assert torch.equal(torch.as_tensor(a), torch.as_tensor(b)), (step, feed)
            assert ahead.pending is not None and ahead.pending[0] == start + 12  # the next step was under way
        epoch0, epoch1 = plain.take(0), plain.take(15)
        assert not torch.equal(epoch0.labels, epoch1.labels)  # a new epoch is a new order
    finally:
        for feed in (plain, ahead, resident):
            feed.close()


def test_a_resumed_runs_read_only_cache_is_copied_to_the_device_in_chunks_without_torchs_warning(tmp_path):
    """A resumed run reads its cache as a read-only memory map; the device copy of its images goes through
    writable chunks, so torch never warns that it shares a read-only array (the 2026-12-04 GPU soak printed
    that warning on resume), and the copy holds every row. torch warns once per process: a fresh one runs it."""
    import subprocess
    import sys
    rows = np.random.default_rng(0).integers(0, 255, (37, 4, 4, 3), dtype=np.uint8)
    np.save(tmp_path / "rows.npy", rows)
    code = ("import numpy as np, torch; from mixer_ft.train.feed import copy_rows; "
            f"a = np.load({str(tmp_path / 'rows.npy')!r}, mmap_mode='r'); assert not a.flags.writeable; "
            "t = copy_rows(a, torch.device('cpu'), chunk_bytes=5 * 48); "
            "assert torch.equal(t, torch.from_numpy(np.array(a))), 'rows differ'")
    done = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_loss_that_turns_non_finite_between_log_lines_is_named_by_its_step_and_never_checkpointed(tmp_path,
                                                                                                  cifar_subset):
    """The loss is read only at log lines and checkpoints, not every step; the step where it first became
    non-finite is still the one named, and no checkpoint is written from that step on."""
    cut = cifar_subset(train=100, test=20)
    args = ["finetune", "--dataset", cut, "--steps", 30, "--batch", 16, "--lr", 1e30, "--warmup", 0,
            "--eval-every", 0, "--set", "grad_clip=0", "--set", "checkpoint_every=2", "--set", "log_every=25",
            "--output-dir", tmp_path / "nan", "--set", f'results_dir="{tmp_path / "results"}"', "--set", 'name="nan"']
    for key, value in TINY["architecture"].items():
        args += ["--set", f"architecture.{key}={value}"]
    out = run_cli(*args, "--set", 'model="custom"', "--set", 'upstream="none"')
    assert out.returncode == 2 and "training diverged" in out.stderr and "Traceback" not in out.stderr
    bad = int(re.search(r"at step (\d+): training diverged", out.stderr).group(1))
    kept = [int(p.stem.split("_")[1]) for p in (tmp_path / "nan" / "checkpoints").glob("step_*.pt")]
    assert all(k < bad for k in kept), (bad, kept)
    assert not (tmp_path / "results" / "nan.json").exists()


@pytest.mark.parametrize("value,ok", [(True, True), (False, True), ("reduce-overhead", True), ("default", True),
                                      ("max-autotune-no-cudagraphs", True), ("cudagraphs", False), ("", False)])
def test_compile_takes_true_false_or_one_of_torch_compiles_modes(value, ok):
    from mixer_ft.errors import ConfigError

    if ok:
        assert Recipe(compile=value).compile == value
    else:
        with pytest.raises(ConfigError, match="compile must be true, false or one of"):
            Recipe(compile=value)


def test_images_of_several_sizes_or_kept_encoded_are_never_copied_to_the_device_whole():
    """Only one array of one size goes to the GPU whole; photos of several sizes (RaggedImages, which has no
    nbytes: the check itself failed at the start of every GPU run on such a folder) and the encoded store are
    gathered and decoded on the host. torch.device("cuda") is a plain value: no GPU is needed to ask."""
    from mixer_ft.data.cache import RaggedImages
    from mixer_ft.data.encoded import EncodedImages
    from mixer_ft.train.feed import fits_on_device

    shapes = np.array([[2, 3], [4, 1]])
    ragged = RaggedImages(np.zeros(2 * 3 * 3 + 4 * 1 * 3, np.uint8), shapes)
    encoded = EncodedImages(np.zeros(10, np.uint8), np.array([0, 5, 10]), shapes, 512, "train")
    for images in (ragged, encoded):
        assert fits_on_device(images, torch.device("cuda")) is False
