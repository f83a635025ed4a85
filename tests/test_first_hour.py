"""The first hour on a laptop (issue 34): a run that fits the machine or says why, short runs that make sense,
one accuracy that clients get, messages that point at the fix."""

import json
import os
import resource
import signal
import subprocess
import sys
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_invariants import TINY, one_error_line, photo_folder

from conftest import REPO, run_cli

# The peak RSS of this process alone: VmHWM (ru_maxrss survives exec, so it holds the parent's), reset once the
# model, its input and its gradients exist (writing 5 to clear_refs resets it).
MEASURE = """
import sys, torch, torch.nn.functional as F
from mixer_ft.model.config import MixerConfig
from mixer_ft.model.mixer import MlpMixer
from mixer_ft.train.devices import activation_bytes
def hwm():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) * 1024
cfg = MixerConfig.from_variant(sys.argv[1], num_classes=10)
model, b = MlpMixer(cfg), int(sys.argv[2])
x, y = torch.randn(b, 3, cfg.img_size, cfg.img_size), torch.randint(0, 10, (b,))
F.cross_entropy(model(x[:1]), y[:1]).backward()  # gradients exist before the peak is read
open("/proc/self/clear_refs", "w").write("5")
base = hwm()
F.cross_entropy(model(x), y).backward()
print((hwm() - base) / b / activation_bytes(cfg))
"""


@pytest.mark.parametrize("variant,batch", [("S/32", 32), ("S/16", 16)])
def test_the_activation_count_with_its_slack_bounds_the_measured_peak(variant, batch):
    """What a step takes per image, measured in a fresh process (its peak RSS), against the count the CPU
    micro-batch is sized by: the count times ACTIVATION_SLACK is never under it, and the count not far over."""
    from mixer_ft.train.devices import ACTIVATION_SLACK

    out = subprocess.run([sys.executable, "-c", MEASURE, variant, str(batch)], capture_output=True, text=True, cwd=REPO,
                         env=os.environ | {"OMP_NUM_THREADS": "1"})
    ratio = float(out.stdout.strip().splitlines()[-1])
    assert 0.7 < ratio < ACTIVATION_SLACK, ratio


def limited(megabytes: int):
    """A subprocess's preexec: its data segment (heap and private mappings) limited, as `ulimit -d` does, to
    what a fresh process with torch and mixer_ft loaded takes, plus ``megabytes``."""
    code = ("import torch, accelerate, mixer_ft.train.loop; "
            "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmData')))")
    base = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO).stdout) * 1024
    limit = base + (300 << 20) + (megabytes << 20)  # (the preexec runs before exec: its own VmData is this process's)

    def apply():
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    return apply


@pytest.mark.slow
def test_a_cpu_batch_past_the_memory_limit_is_split_into_micro_batches_not_killed(tmp_path, cifar_subset):
    """A global batch of 128 at 224 px needs about 2.5 GB on a CPU: under a limit of 0.9 GB more than a run
    needs to start, the run sizes micro-batches to it, says so, and trains; before, the allocation failed (or
    the kernel killed it)."""
    cut = cifar_subset(train=100, test=20)
    cmd = [sys.executable, "-m", "mixer_ft", "finetune", "--upstream", "none", "--model", "S/32", "--dataset", cut,
           "--steps", "1", "--batch", "128", "--eval-every", "0", "--mixed-precision", "no", "--output-dir",
           tmp_path / "run", "--set", f'results_dir="{tmp_path / "results"}"', "--set", "checkpoint_every=0"]
    out = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, cwd=REPO, preexec_fn=limited(900),
                         timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "128 images a step do not fit this machine's memory at once" in out.stderr and "ulimit -d" in out.stderr
    record = json.loads((tmp_path / "results" / "run.json").read_text())
    assert 128 % record["micro_batch"] == 0 and record["micro_batch"] * record["accumulation"] == 128
    assert record["accumulation"] > 1


@pytest.mark.slow
def test_not_even_one_image_fitting_is_one_line_saying_what_would(tmp_path, cifar_subset):
    cut = cifar_subset(train=100, test=20)
    cmd = [sys.executable, "-m", "mixer_ft", "finetune", "--upstream", "none", "--model", "B/16", "--dataset", cut,
           "--steps", "1", "--batch", "8", "--mixed-precision", "no", "--output-dir", tmp_path / "run"]
    out = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, cwd=REPO, preexec_fn=limited(300),
                         timeout=600)
    line = one_error_line(out)
    assert "for even one image" in line and "S/32" in line and "ulimit -d" in line


def test_a_short_run_scales_its_warm_up_and_says_when_minival_is_scored(tmp_path):
    data = photo_folder(tmp_path / "photos", per_class=10)
    out = run_cli("finetune", "--dataset", data, "--steps", 20, "--batch", 4, "--output-dir", tmp_path / "run",
                  "--set", f'results_dir="{tmp_path / "results"}"', "--set", "log_every=1", *TINY, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout + out.stderr
    assert "warm-up 2: the default 500 is not shorter than the 20-step run" in text
    assert "eval_every 1,000 is not shorter than the run's 20 steps: minival is scored at the end" in text
    record = json.loads((tmp_path / "results" / "run.json").read_text())
    assert record["config"]["warmup_steps"] == 2 and max(e["lr"] for e in record["history"]["loss"]) > 0.02


def test_a_long_cpu_run_tells_its_time_left_and_what_would_be_faster(tmp_path):
    data = photo_folder(tmp_path / "photos", per_class=10)
    cmd = [sys.executable, "-m", "mixer_ft", "finetune", "--dataset", data, "--steps", "10000000", "--batch", "4",
           "--output-dir", tmp_path / "run", "--set", f'results_dir="{tmp_path / "results"}"', "--set",
           "checkpoint_every=100000", *TINY]
    proc = subprocess.Popen(list(map(str, cmd)), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=REPO)
    lines, deadline = [], time.time() + 300
    for line in proc.stderr:
        lines.append(line)
        if "that is long for a CPU" in line or time.time() > deadline:
            break
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    text = "".join(lines)
    # Told after the first step (an eager run's first is timed: no compile to leave out), not after four
    assert "the 9,999,999 steps left take about" in text and " h" in text, text[-2000:]
    # A custom model has no smaller variant to name: never "the model you use" as the faster choice
    assert "that is long for a CPU: fewer steps (--steps) or a GPU shortens it" in text and "--model" not in text


def test_the_time_left_suggests_only_a_model_faster_than_the_one_in_use():
    from mixer_ft.model.config import VARIANTS
    from mixer_ft.train.progress import SMALLER

    assert "S/32" not in SMALLER  # the smallest: a run of S/32 is never told to try S/32
    def cost(name):  # a forward's multiply-adds at 224: tokens x (channel MLP) + channels x (token MLP), per block
        patch, width, blocks, tokens_mlp, channels_mlp = VARIANTS[name]
        tokens = (224 // patch) ** 2
        return blocks * (tokens * width * channels_mlp * 2 + width * tokens * tokens_mlp * 2)

    assert all(cost(small) < cost(big) / 2 for big, small in SMALLER.items())  # each suggestion at least halves it


def test_predict_evaluate_and_the_card_score_the_image_alone_as_the_pipeline_does(tmp_path, cifar_subset):
    """A model trained with test-time views (eval_flip): its record and card give the single-view accuracy
    first, the views' beside it; predict agrees with transformers' pipeline image for image, and says so."""
    from transformers import pipeline

    cut = cifar_subset(train=100, test=20)
    out = run_cli("finetune", "--dataset", cut, "--steps", 30, "--batch", 32, "--lr", 0.01, "--eval-every", 0,
                  "--output-dir", tmp_path / "run", "--set", f'results_dir="{tmp_path / "results"}"', "--set",
                  "eval_flip=true", "--set", 'optimizer="adamw"', "--mixed-precision", "no", *TINY, cwd=tmp_path)
    # fp32, as transformers' pipeline computes: on a CPU with native bf16, "auto" would score in bf16, where two
    # classes of this barely trained model can tie exactly and the pipeline's fp32 then picks the other
    assert out.returncode == 0, out.stderr[-2000:]
    record = json.loads((tmp_path / "results" / "run.json").read_text())
    assert "test_accuracy_views" in record
    scored = json.loads(run_cli("evaluate", tmp_path / "run", "--dataset", cut, "--json").stdout)
    assert scored["accuracy"] == pytest.approx(record["test_accuracy"], abs=1e-9)  # the image alone, by default
    with_flip = json.loads(run_cli("evaluate", tmp_path / "run", "--dataset", cut, "--flip", "--json").stdout)
    assert with_flip["accuracy"] == pytest.approx(record["test_accuracy_views"], abs=1e-9)
    card = (tmp_path / "run" / "model" / "README.md").read_text()
    assert f"| test accuracy | {100 * record['test_accuracy']:.2f}%" in card and "with the evaluation views" in card
    files = sorted(str(f) for f in (cut / "test").rglob("*.jpg"))[::5]
    out = run_cli("predict", tmp_path / "run" / "model", *files, "--json")
    assert out.returncode == 0 and "views: the image alone" in out.stderr and "--flip adds them" in out.stderr
    ours = [json.loads(line)["label"] for line in out.stdout.splitlines()]
    classify = pipeline("image-classification", model=str(tmp_path / "run" / "model"), device="cpu",
                        trust_remote_code=True)
    assert [r[0]["label"] for r in classify(files, top_k=1)] == ours


@pytest.mark.parametrize("args,needle", [
    (["finetune", "--dataset", "photo/", "--upstream", "none"], "No data set photo/: no such file or folder; did you mean photos/?"),
    (["finetune", "--dataset", "photos/", "--upstream", "weigths.npz"], "No weights weigths.npz: no such file or folder; "
                                                                        "did you mean weights.npz?"),
    (["finetune", "--recipe", "recipes/smok.toml"], "did you mean recipes/smoke.toml? The recipes: recipes/"),
])
def test_a_mistyped_path_is_named_with_the_nearest_existing_one_not_blamed_on_the_network(tmp_path, args, needle):
    photo_folder(tmp_path / "photos")
    (tmp_path / "weights.npz").write_bytes(b"")
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "smoke.toml").write_text('steps = 1\n')
    line = one_error_line(run_cli(*args, cwd=tmp_path))
    assert needle in line and "offline" not in line


def test_version():
    from mixer_ft import __version__

    out = subprocess.run([sys.executable, "-m", "mixer_ft", "--version"], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0 and out.stdout.strip() == f"mixer-ft {__version__}"


def test_pyproject_leaves_torch_free_to_be_the_cpu_build_the_user_installed():
    """No pin of torch or torchvision tighter than the code needs: a lower bound at most, so that a CPU build
    installed first is kept (a pinned torchvision pulled in the newest torch, the 5.8 GB CUDA build)."""
    import tomllib

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        name = dep.split(">")[0].split("=")[0].split("<")[0].split("[")[0].strip()
        if name in ("torch", "torchvision"):
            assert "<" not in dep and "==" not in dep and "~=" not in dep, dep


# Two processes on a machine without a GPU, over gloo (Accelerate runs several CPU processes only through MPI)
TWO = ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]


@pytest.mark.parametrize("launcher", [TWO, []], ids=["two-processes", "one-process"])
def test_under_mixer_ft_launch_a_user_error_is_one_line_with_exit_2_and_no_launcher_traceback(tmp_path, launcher):
    """Plain `accelerate launch` exits 1 with torch elastic's report (or the single-process launcher's
    CalledProcessError) after our line, which a process killed by the others may not even print."""
    out = subprocess.run([sys.executable, "-m", "mixer_ft", "launch", *launcher, "finetune", "--recipe", "no_such.toml"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    line = one_error_line(out)
    assert "No recipe no_such.toml" in line
    for launcher_words in ("ChildFailedError", "CalledProcessError", "RuntimeError", "exitcode", "\x1e"):
        assert launcher_words not in out.stderr, out.stderr[-2000:]
    assert not list(tmp_path.iterdir())  # nothing written where it ran


@pytest.mark.parametrize("program", [["-m", "mixer_ft"], ["mixer_ft"], ["mixer-ft"]])
def test_the_program_named_before_its_command_is_not_run_as_the_launchers_script(program):
    """`mixer-ft launch --cpu mixer_ft finetune` (copied from `accelerate launch -m mixer_ft`) ran `python mixer_ft`,
    a file that is not there, and showed accelerate's traceback: the program's name is the same as none."""
    from mixer_ft.launch import command_line

    commands = {"finetune", "launch"}
    plain = command_line(["--num_processes", "2", "--cpu", "finetune", "--steps", "3"], commands)
    assert command_line(["--num_processes", "2", "--cpu", *program, "finetune", "--steps", "3"], commands) == plain
    assert plain[plain.index("-m", 2):] == ["-m", "mixer_ft", "finetune", "--steps", "3"]


@pytest.mark.parametrize("args", [[], ["--num_processes", "2"], ["launch", "finetune"]])
def test_mixer_ft_launch_without_a_command_of_its_own_is_one_line_with_the_usage(args):
    line = one_error_line(run_cli("launch", *args, "--steps", "3") if args else run_cli("launch", "--steps", "3"))
    assert "Usage: mixer-ft launch" in line


@given(st.lists(st.integers(min_value=0, max_value=400), max_size=8), st.binary(max_size=200), st.binary(max_size=200))
def test_the_launcher_output_is_shown_up_to_the_first_mark_however_the_pipe_cuts_it(cuts, before, after):
    """Generated streams (progress-bar carriage returns and partial lines included) cut into generated chunks:
    what is shown is exactly the bytes before the first mark, whether or not a cut falls inside the mark."""
    from mixer_ft.launch import MARK, LauncherOutput

    before = before.replace(b"\x1e", b"")  # the mark's first byte never occurs in text
    stream = before + MARK + after
    bounds = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    shown = LauncherOutput()
    got = b"".join(shown.feed(stream[a:b]) for a, b in zip(bounds, bounds[1:])) + shown.flush()
    assert got == before
    plain = LauncherOutput()  # no process ended with a status: all of it, nothing held back at the end
    assert b"".join(plain.feed(before[a:b]) for a, b in zip(bounds, bounds[1:]) if a < len(before)) + plain.flush() == before


def test_a_minival_of_no_images_shows_no_accuracy(cifar_subset, tmp_path):
    """20 train images leave minival empty (the run warns at the start): 0 of 0 is not an accuracy of 0."""
    out = run_cli("finetune", "--dataset", cifar_subset(train=2, test=1), "--steps", 2, "--batch", 4, "--warmup", 0,
                  "--eval-every", 1, "--output-dir", tmp_path / "run", "--set", f'results_dir="{tmp_path / "results"}"',
                  *TINY, cwd=tmp_path)
    text = out.stdout + out.stderr
    assert out.returncode == 0 and "the minival split has 0 images" in text, text[-2000:]
    assert "no minival images" in text and "minival accuracy" not in text and "minival 0.0000" not in text
