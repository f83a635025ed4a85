"""`mixer-ft finetune` end to end on real CIFAR-10 images: learning, records, saved models,
SIGKILL and resume, two processes under `accelerate launch`, divergence and bad input."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import REPO, randomize_, run_cli, signal_once_written
from mixer_ft import create_model
from mixer_ft.data.preprocess import Preprocess
from mixer_ft.model.mixer import MixerConfig, MlpMixer
from mixer_ft.train.build import build_model
from mixer_ft.train.evaluation import predict
from mixer_ft.train.optim import make_optimizers
from mixer_ft.train.recipe import Recipe
from mixer_ft.use.infer import Classifier

BIN = Path(sys.executable).parent
TINY = ["--set", "architecture.patch_size=8", "--set", "architecture.hidden_dim=32", "--set", "architecture.num_blocks=2",
        "--set", "architecture.tokens_mlp_dim=16", "--set", "architecture.channels_mlp_dim=64",
        "--set", "architecture.img_size=32", "--set", 'model="custom"', "--set", 'upstream="none"']


@pytest.fixture(scope="module")
def cut(cifar_subset):
    return cifar_subset(train=100, test=20)  # 1,000 train and 200 test images


def finetune(*args, launcher=None, check=True, timeout=600):
    """`mixer-ft finetune ARGS`: in this process, or as its own processes under ``launcher``."""
    if launcher is None:
        out = run_cli("finetune", *args, cwd=REPO)
    else:
        out = subprocess.run([*launcher, "finetune", *map(str, args)], capture_output=True, text=True,
                             env=os.environ.copy(), timeout=timeout, cwd=REPO)
    if check:
        assert out.returncode == 0, out.stderr[-3000:]
    return out


def run_args(tmp, cut, name="run", *extra):
    return ["--dataset", cut, "--output-dir", tmp / name, "--set", f'results_dir="{tmp / "results"}"',
            "--set", f'name="{name}"', *extra]


def test_smoke_recipe_learns_and_writes_a_complete_record(smoke_run):
    run, rec, cut = smoke_run
    assert rec["test_accuracy"] > 0.25, rec["test_accuracy"]  # chance is 0.10
    assert rec["test_images"] == 200 and rec["minival_images"] == 20
    for key in ("upstream", "model", "dataset", "minival_accuracy", "steps", "global_batch", "wall_clock_s",
                "images_per_s", "hardware", "versions", "config", "git_commit"):
        assert key in rec, key
    assert rec["hardware"]["count"] == 1 and rec["hardware"]["device"].startswith("CPU")
    assert rec["versions"]["torch"] == torch.__version__ and rec["config"]["steps"] == rec["steps"] == 300
    assert 0 <= rec["minival_accuracy"] <= 1 and rec["images_per_s"] > 0
    # images/s is the steady rate: the first step (compile, warm-up) is timed apart, not averaged in.
    assert 0 <= rec["warmup_s"] < rec["wall_clock_s"]
    steady = (rec["steps"] - 1) * rec["global_batch"] / (rec["wall_clock_s"] - rec["warmup_s"])
    assert rec["images_per_s"] == pytest.approx(steady, rel=0.03)
    # The saved model is the trained one: loaded for inference and fed the test JPEGs themselves,
    # it scores the record's accuracy.
    classify = Classifier.from_pretrained(run / "model", device="cpu")
    assert classify.classes == rec["classes"]  # the folder names its classes
    files = sorted((cut / "test").rglob("*.jpg"))
    top = [r[0]["label"] for r in classify(files, top_k=1)]
    acc = np.mean([label == f.parent.name for label, f in zip(top, files)])
    assert len(files) == 200 and acc == pytest.approx(rec["test_accuracy"], abs=1e-6)


def test_pretrained_variant_fine_tunes_and_timm_loads_the_result(tmp_path, cut):
    import timm

    upstream = randomize_(create_model("S/32", img_size=64, gelu="exact"), seed=4)
    save_file(upstream.state_dict(), tmp_path / "s32.safetensors")
    finetune("--upstream", tmp_path / "s32.safetensors", "--model", "S/32", "--steps", 3, "--batch", 16,
             "--warmup", 1, "--eval-every", 0, *run_args(tmp_path, cut, "s32"))
    ours = create_model(pretrained=str(tmp_path / "s32" / "model")).eval()
    assert ours.config.num_classes == 10 and ours.config.img_size == 64
    moved = (ours.blocks[0].mlp_channels.fc1.weight - upstream.blocks[0].mlp_channels.fc1.weight).abs().max()
    assert moved > 0  # it trained from the given weights
    theirs = timm.create_model(f"local-dir:{tmp_path / 's32' / 'model'}", pretrained=True).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert (theirs(x) - ours(x)).abs().max() <= 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("optimizer,lr", [("sgd", 0.05), ("muon", 0.005)])
def test_sigkill_then_resume_ends_with_the_uninterrupted_weights(tmp_path, cut, optimizer, lr):
    common = ["--steps", 40, "--batch", 32, "--lr", lr, "--warmup", 5, "--eval-every", 0,
              "--set", "checkpoint_every=10", "--set", "log_every=5", "--set", f'optimizer="{optimizer}"', *TINY]
    finetune(*common, *run_args(tmp_path, cut, "whole"))

    cmd = [sys.executable, "-m", "mixer_ft", "finetune", *common, *run_args(tmp_path, cut, "killed")]
    ckpt = tmp_path / "killed" / "checkpoints" / "step_00000020.pt"
    signal_once_written(cmd, ckpt, signal.SIGKILL)
    assert ckpt.exists() and not (tmp_path / "killed" / "model").exists(), "killed before the end"

    out = finetune(*common, *run_args(tmp_path, cut, "killed"))
    assert "resuming" in out.stdout + out.stderr
    a = load_file(tmp_path / "whole" / "model" / "model.safetensors")
    b = load_file(tmp_path / "killed" / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "bit-for-bit equal on CPU"
    ra, rb = (json.loads((tmp_path / "results" / f"{n}.json").read_text()) for n in ("whole", "killed"))
    assert [e["loss"] for e in ra["history"]["loss"]] == [e["loss"] for e in rb["history"]["loss"]]
    assert ra["test_accuracy"] == rb["test_accuracy"]


@pytest.mark.slow
def test_two_processes_follow_the_one_process_curve_and_count_each_test_image_once(tmp_path, cut):
    common = ["--steps", 8, "--batch", 32, "--lr", 0.05, "--warmup", 2, "--eval-every", 4,
              "--mixed-precision", "no", "--set", "log_every=1", *TINY]
    finetune(*common, "--micro-batch", 16, *run_args(tmp_path, cut, "one"))  # accumulation 2
    launch = [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "mixer_ft"]
    finetune(*common, *run_args(tmp_path, cut, "two"), launcher=launch)
    one, two = (json.loads((tmp_path / "results" / f"{n}.json").read_text()) for n in ("one", "two"))
    assert (one["hardware"]["count"], two["hardware"]["count"]) == (1, 2)
    assert (one["accumulation"], two["accumulation"]) == (2, 1) and one["global_batch"] == two["global_batch"]
    np.testing.assert_allclose([e["loss"] for e in two["history"]["loss"]],
                               [e["loss"] for e in one["history"]["loss"]], atol=1e-4)
    assert two["test_images"] == one["test_images"] == 200 and two["minival_images"] == 20
    assert two["test_accuracy"] == pytest.approx(one["test_accuracy"], abs=0.01)


def test_a_diverging_run_stops_and_keeps_its_last_good_checkpoint(tmp_path, cut):
    out = finetune("--steps", 20, "--batch", 16, "--lr", 1e30, "--warmup", 0, "--eval-every", 0,
                   "--set", "grad_clip=0", "--set", "checkpoint_every=1", *TINY,
                   *run_args(tmp_path, cut, "nan"), check=False)
    assert out.returncode == 2 and "training diverged" in out.stderr and "Traceback" not in out.stderr
    kept = sorted((tmp_path / "nan" / "checkpoints").glob("step_*.pt"))
    assert kept and kept[-1].name in out.stderr
    assert not (tmp_path / "results" / "nan.json").exists()


def test_running_a_finished_run_again_only_re_evaluates(tmp_path, cut):
    args = ["--steps", 4, "--batch", 16, "--eval-every", 0, *TINY, *run_args(tmp_path, cut, "again")]
    finetune(*args)
    first = json.loads((tmp_path / "results" / "again.json").read_text())
    # The same data named by a relative path is the same recipe; another seed is not.
    out = finetune(*args, "--dataset", os.path.relpath(cut, REPO))
    assert "resuming" in out.stdout + out.stderr and "at step 4/4" in out.stdout + out.stderr
    assert json.loads((tmp_path / "results" / "again.json").read_text())["test_accuracy"] == first["test_accuracy"]
    out = finetune(*args, "--seed", 1, check=False)
    assert out.returncode == 2 and "another recipe (different seed)" in out.stderr, out.stderr


def test_tensorboard_tracker_writes_events(tmp_path, cut):
    pytest.importorskip("tensorboard")
    finetune("--steps", 4, "--batch", 16, "--eval-every", 2, "--set", "log_every=1", "--set", 'tracker="tensorboard"',
             *TINY, *run_args(tmp_path, cut, "tb"))
    assert list((tmp_path / "tb").rglob("events.out.tfevents.*"))


@pytest.mark.parametrize("extra,needle", [
    (["--set", "learning_rate=0.1"], "Unknown --set key 'learning_rate'"),
    (["--batch", 64, "--micro-batch", 48], "micro-batch 48 does not divide"),
    (["--dataset", "/no/such/data"], "No data set /no/such/data: no such file or folder"),
    (["--model", "X/99"], "Unknown Mixer variant"),
    (["--micro-batch", "lots"], "--micro-batch takes a positive integer"),
])
def test_bad_input_is_one_message_and_exit_2(tmp_path, cut, extra, needle):
    out = finetune("--upstream", "none", "--model", "S/32", "--steps", 1, "--batch", 64,
                   *run_args(tmp_path, cut, "bad"), *extra, check=False)
    assert out.returncode == 2 and needle in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_unwritable_output_folder(tmp_path, cut):
    (tmp_path / "a_file").write_text("")
    out = finetune("--steps", 1, *TINY, "--dataset", cut, "--output-dir", tmp_path / "a_file" / "run", check=False)
    assert out.returncode == 2 and "Cannot write to the output folder" in out.stderr and "Traceback" not in out.stderr


def random_small_mixer() -> MlpMixer:
    """A 2-block Mixer on 32x32 inputs with random weights (head included), in eval mode."""
    torch.manual_seed(0)
    return randomize_(MlpMixer(MixerConfig(patch_size=4, hidden_dim=32, num_blocks=2, tokens_mlp_dim=16,
                                           channels_mlp_dim=64, img_size=32, num_classes=10))).eval()


def test_mirror_evaluation_answers_the_same_for_an_image_and_its_mirror():
    net = random_small_mixer()
    x = torch.randn(256, 3, 32, 32)
    with torch.no_grad():
        assert not torch.equal(predict(net, x), predict(net, x.flip(3)))  # a plain Mixer is not mirror-symmetric
        assert torch.equal(predict(net, x, mirror=True), predict(net, x.flip(3), mirror=True))
        both = net(x) + net(x.flip(3))
        assert torch.equal(predict(net, x, mirror=True), both.argmax(1))


def test_shifted_evaluation_sums_the_views_that_translate_trains_on():
    net = random_small_mixer()
    raw = torch.randint(0, 256, (128, 32, 32, 3), dtype=torch.uint8)
    pre = Preprocess(32, crop_area_min=1.0, translate=2)
    x = pre.eval(raw)
    # The shifted views must be the images that training's `translate` makes with boxes moved by
    # (+2, +2) and (-2, -2): the same pixels, the same repeated border.
    views = [pre.train(raw, torch.tensor([[d, d, 32, 32]]).expand(128, 4), torch.full((128,), flip))
             for d in (0, 2, -2) for flip in (False, True)]
    with torch.no_grad():
        summed = sum(net(v) for v in views)
        assert torch.equal(predict(net, x, mirror=True, shift=2), summed.argmax(1))
        unmirrored = sum(net(v) for v in views[::2])
        assert torch.equal(predict(net, x, shift=2), unmirrored.argmax(1))
        assert not torch.equal(predict(net, x, shift=2), predict(net, x))  # the shifted views count


def test_muon_takes_the_blocks_weight_matrices_and_adamw_the_rest():
    arch = {"patch_size": 8, "hidden_dim": 16, "num_blocks": 2, "tokens_mlp_dim": 8, "channels_mlp_dim": 32,
            "img_size": 32}
    recipe = Recipe(upstream="none", model="custom", architecture=arch, optimizer="muon", weight_decay=0.05,
                    momentum=0.95)
    model, _ = build_model(recipe, [str(i) for i in range(10)])
    muon, adamw = make_optimizers(recipe, model)
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    name = {id(p): n for n, p in model.named_parameters()}
    owned = {opt: {name[id(p)]: g["weight_decay"] for g in opt.param_groups for p in g["params"]}
             for opt in (muon, adamw)}
    assert sorted(owned[muon]) == sorted(f"blocks.{b}.mlp_{kind}.fc{i}.weight" for b in range(2)
                                         for kind in ("tokens", "channels") for i in (1, 2))
    assert set(owned[muon].values()) == {0.05} and muon.param_groups[0]["momentum"] == 0.95
    assert owned[muon].keys().isdisjoint(owned[adamw]) and len(owned[muon]) + len(owned[adamw]) == len(name)
    # AdamW keeps the stem and head (decayed) and every bias and norm gain (never decayed).
    assert owned[adamw]["stem.proj.weight"] == owned[adamw]["head.weight"] == 0.05
    assert {d for n, d in owned[adamw].items() if n.endswith("bias") or "norm" in n} == {0.0}
    # Plain recipes keep their single optimizer.
    assert [type(o) for o in make_optimizers(recipe.replace(optimizer="adamw"), model)] == [torch.optim.AdamW]


LAUNCH2 = [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "mixer_ft"]
# The same through `mixer-ft launch`: our exit status and one message, not torch elastic's report
MIXER_FT_LAUNCH2 = [sys.executable, "-m", "mixer_ft", "launch", *LAUNCH2[2:-2]]


STEPS = 100


def stop_after_first_checkpoint(cmd, folder, sig, log):
    """Start ``cmd``; once its first checkpoint interval is done, send ``sig``; returns (exit status, stderr)."""
    with open(log, "w") as err:
        proc = signal_once_written(cmd, folder / "checkpoints" / "step_00000010.pt", sig, stderr=err)
    return proc.returncode, log.read_text()


@pytest.mark.slow
@pytest.mark.parametrize("sig,code,processes", [(signal.SIGTERM, 143, 1), (signal.SIGINT, 130, 1),
                                                (signal.SIGTERM, 143, 2)], ids=["sigterm", "ctrl-c", "sigterm-2-processes"])
def test_a_signal_stops_at_a_checkpoint_and_the_resumed_run_ends_as_the_uninterrupted_one(tmp_path, cut, sig, code,
                                                                                           processes):
    # Tens of steps: a checkpoint every 10, the signal once the first is written, 90 steps left to stop in.
    common = ["finetune", "--steps", STEPS, "--batch", 32, "--lr", 0.05, "--warmup", 5, "--eval-every", 0,
              "--mixed-precision", "no", "--set", "checkpoint_every=10", "--set", "log_every=10", *TINY]
    launcher = [sys.executable, "-m", "mixer_ft"] if processes == 1 else MIXER_FT_LAUNCH2
    if processes == 1:  # the uninterrupted run needs no process of its own
        assert run_cli(*common, *run_args(tmp_path, cut, "whole"), cwd=REPO).returncode == 0
    else:
        whole = subprocess.run([*launcher, *map(str, common), *map(str, run_args(tmp_path, cut, "whole"))],
                               capture_output=True, text=True, env=os.environ.copy(), cwd=REPO)
        assert whole.returncode == 0, whole.stderr[-3000:]
    code_, stderr = stop_after_first_checkpoint([*launcher, *common, *run_args(tmp_path, cut, "stopped")],
                                                tmp_path / "stopped", sig, tmp_path / "stderr.txt")
    steps = sorted((tmp_path / "stopped" / "checkpoints").glob("step_*.pt"))
    stopped_at = int(steps[-1].stem.split("_")[1])
    assert 10 <= stopped_at < STEPS and not (tmp_path / "stopped" / "model").exists(), stderr[-2000:]
    assert stderr.count(f"stopped at step {stopped_at} of {STEPS}; run the same command to resume") == 1, stderr[-2000:]
    assert code_ == code and "Traceback" not in stderr, stderr[-2000:]
    out = subprocess.run([*launcher, *map(str, common), *map(str, run_args(tmp_path, cut, "stopped"))],
                         capture_output=True, text=True, env=os.environ.copy(), cwd=REPO)
    assert out.returncode == 0 and f"resuming {tmp_path / 'stopped'} at step {stopped_at}/{STEPS}" in out.stdout + out.stderr
    a = load_file(tmp_path / "whole" / "model" / "model.safetensors")
    b = load_file(tmp_path / "stopped" / "model" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a), "bit-for-bit equal on CPU"


@pytest.mark.slow
def test_a_second_ctrl_c_stops_at_once_keeping_the_last_finished_step_and_the_resumed_run_is_the_uninterrupted_one(
        tmp_path, cut):
    """Steps of half a second or more (64 micro-batches a step): the first Ctrl-C is answered at once, the second, a
    moment later, lands inside the same step; the run ends there with a checkpoint of the step before (or of the step
    whose update it let finish), and resumed from it ends with the uninterrupted run's weights."""
    slow = [f"architecture.{k}={v}" for k, v in (("patch_size", 4), ("img_size", 64), ("hidden_dim", 128),
                                                  ("num_blocks", 4), ("tokens_mlp_dim", 128), ("channels_mlp_dim", 512))]
    common = ["finetune", "--upstream", "none", "--set", 'model="custom"', *(x for kv in slow for x in ("--set", kv)),
              "--steps", 8, "--batch", 64, "--micro-batch", 1, "--lr", 0.01, "--warmup", 2, "--eval-every", 0,
              "--mixed-precision", "no", "--set", "checkpoint_every=2", "--set", "val_fraction=0"]
    assert run_cli(*common, *run_args(tmp_path, cut, "whole"), cwd=REPO).returncode == 0
    cmd = [sys.executable, "-m", "mixer_ft", *map(str, common), *map(str, run_args(tmp_path, cut, "stopped"))]
    with open(tmp_path / "stderr.txt", "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, cwd=REPO)
        first = tmp_path / "stopped" / "checkpoints" / "step_00000002.pt"
        deadline = time.time() + 300
        while not first.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)  # into step 3
        proc.send_signal(signal.SIGINT)
        time.sleep(0.05)  # still in step 3
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    text = (tmp_path / "stderr.txt").read_text()
    assert proc.returncode == 130 and "Traceback" not in text, text[-2000:]
    assert text.count("Ctrl-C: stopping after this step, then writing a checkpoint") == 1
    stopped_at = int(text.split("stopped at once at step ")[1].split()[0])
    assert 2 <= stopped_at < 8 and f"the same command resumes from step {stopped_at}" in text, text[-2000:]
    saved = torch.load(tmp_path / "stopped" / "checkpoints" / f"step_{stopped_at:08d}.pt", weights_only=False)
    assert saved["step"] == stopped_at and saved["schedules"][0]["last_epoch"] == stopped_at  # step, weights, schedule agree
    assert run_cli(*common, *run_args(tmp_path, cut, "stopped"), cwd=REPO).returncode == 0
    a = load_file(tmp_path / "whole" / "model" / "model.safetensors")
    b = load_file(tmp_path / "stopped" / "model" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a), "bit-for-bit equal on CPU"


def test_offline_a_run_that_cannot_start_says_everything_it_misses_at_once(tmp_path):
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "mixer_ft", "finetune", "--upstream", "in21k", "--model", "L/16",
                          "--dataset", "cifar10"], capture_output=True, text=True, env=os.environ.copy(), cwd=tmp_path,
                         timeout=60)
    took = time.perf_counter() - t0
    assert out.returncode == 2 and "Traceback" not in out.stderr and took < 10, (took, out.stderr)
    assert "the in21k L/16 weights" in out.stderr and "Mixer-L_16.npz at " in out.stderr
    assert "the data set cifar10 (uoft-cs/cifar10)" in out.stderr
    assert list(tmp_path.iterdir()) == []  # no empty runs/ or results/ folders left behind


def test_the_record_logs_the_rate_each_step_used(tmp_path, cut):
    from mixer_ft.train.optim import lr_factor

    finetune("--steps", 6, "--batch", 16, "--lr", 0.1, "--warmup", 3, "--eval-every", 0, "--set", "log_every=1",
             *TINY, *run_args(tmp_path, cut, "lr"))
    rec = json.loads((tmp_path / "results" / "lr.json").read_text())
    logged = [(e["step"], e["lr"]) for e in rec["history"]["loss"]]
    # optax counts updates from 0: step k (from 1) applies lr_fn(k - 1), so the first step's rate is 0.
    assert logged == [(k, pytest.approx(0.1 * lr_factor(k - 1, 3, 6))) for k in range(1, 7)] and logged[0][1] == 0


def test_the_head_is_new_unless_the_checkpoint_names_the_data_sets_classes_in_order():
    from mixer_ft.train.build import head_choice

    classes = ["cat", "dog"]
    assert head_choice(Recipe(), None, classes)[0] is True  # Google's files name no classes: new, as upstream
    assert head_choice(Recipe(), ["cat", "dog"], classes)[0] is False  # our model folder continuing
    assert head_choice(Recipe(), ["dog", "cat"], classes)[0] is True  # same names, another order
    assert head_choice(Recipe(new_head=True), classes, classes)[0] is True
    assert head_choice(Recipe(new_head=False), None, classes) == (False, "the recipe says new_head = false")


def test_sweep_chooses_on_minival_only_records_every_point_and_goes_on_past_a_failure(tmp_path, cut):
    common = ["--dataset", cut, "--set", "steps=4", "--set", "global_batch=16", "--set", "warmup_steps=1",
              "--set", "eval_every=0", "--set", "grad_clip=0", "--set", f'results_dir="{tmp_path / "results"}"',
              "--set", f'output_dir="{tmp_path / "runs"}"', "--set", 'name="sw"', *TINY]
    out = run_cli("sweep", "--grid", "lr=0.001,0.01,1e30", *common, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    record = json.loads((tmp_path / "results" / "sweep_sw.json").read_text())
    points = record["points"]
    assert [p["settings"]["lr"] for p in points] == [0.001, 0.01, 1e30] and record["kind"] == "sweep"
    assert points[2]["failed"] and "training diverged" in points[2]["failed"]  # recorded; the sweep went on
    ran = [p for p in points if not p["failed"]]
    best = max(ran, key=lambda p: p["minival_accuracy"])
    assert record["chosen"] == best["settings"] and record["test_accuracy"] == best["test_accuracy"]
    for p in ran:  # each point is an ordinary run with its own record and folder
        assert json.loads((tmp_path / "results" / f"{p['name']}.json").read_text())["test_accuracy"] == p["test_accuracy"]
    assert "<- chosen on minival" in out.stdout
    table = run_cli("table", "--results", tmp_path / "results")
    assert "Sweeps (each point a run" in table.stdout and "sw" in table.stdout and "skipping" not in table.stderr
    again = run_cli("sweep", "--grid", "lr=0.001,0.01,1e30", *common, cwd=REPO)  # resumes: re-evaluates only
    assert again.returncode == 0 and again.stdout.count("resuming") == 2


@pytest.mark.slow
def test_a_sweep_under_accelerate_launch_with_two_processes_records_once_and_chooses_on_minival(tmp_path, cut):
    common = ["--dataset", cut, "--set", "steps=4", "--set", "global_batch=16", "--set", "warmup_steps=1",
              "--set", "eval_every=0", "--set", f'results_dir="{tmp_path / "results"}"',
              "--set", f'output_dir="{tmp_path / "runs"}"', "--set", 'name="sw2"', *TINY]
    out = subprocess.run([*LAUNCH2, "sweep", "--grid", "lr=0.001,0.01", *map(str, common)], capture_output=True,
                         text=True, env=os.environ.copy(), cwd=REPO, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    record = json.loads((tmp_path / "results" / "sweep_sw2.json").read_text())
    assert [p["settings"]["lr"] for p in record["points"]] == [0.001, 0.01] and not any(p["failed"] for p in record["points"])
    best = max(record["points"], key=lambda p: p["minival_accuracy"])
    assert record["chosen"] == best["settings"] and out.stdout.count("<- chosen on minival") == 1  # the main process reports
    for p in record["points"]:  # each point trained on both processes and wrote one record
        point = json.loads((tmp_path / "results" / f"{p['name']}.json").read_text())
        assert point["hardware"]["count"] == 2 and point["test_accuracy"] == p["test_accuracy"]


@pytest.mark.parametrize("grid,needle", [(["--grid", "dataset=a,b"], "cannot vary dataset"),
                                         (["--grid", "lr="], "takes key=v1,v2"),
                                         (["--grid", "lr=0.1", "--grid", "lr=0.2"], "names lr twice")])
def test_a_sweep_that_cannot_run_is_one_message(grid, needle, cut):
    out = run_cli("sweep", *grid, "--dataset", cut)
    assert out.returncode == 2 and needle in out.stderr and "Traceback" not in out.stderr, out.stderr
