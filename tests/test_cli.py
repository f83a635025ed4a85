"""The `mixer-ft` command: output, JSON, and user errors as one message with exit status 2."""

import json
import os
import subprocess
import sys

import pytest
from safetensors.torch import save_file

from conftest import REPO, randomize_, run_cli
from mixer_ft import create_model


def run(*args):
    return run_cli(*args)


def test_inspect_variant_text_and_json():
    out = run("inspect", "mixer_b16_224")
    assert out.returncode == 0, out.stderr
    assert "Mixer-B/16" in out.stdout and "59,880,472" in out.stdout and "gelu          tanh" in out.stdout
    info = json.loads(run("inspect", "H/14", "--json").stdout)
    assert (info["variant"], info["num_params"], info["num_tokens"]) == ("H/14", 432_350_952, 256)


def test_inspect_checkpoint_reads_its_architecture(tmp_path):
    model = randomize_(create_model("S/16", num_classes=37, gelu="exact"))
    save_file(model.state_dict(), tmp_path / "w.safetensors")
    info = json.loads(run("inspect", str(tmp_path / "w.safetensors"), "--json").stdout)
    assert (info["variant"], info["num_classes"], info["gelu"], info["path"]) == (
        "S/16", 37, "exact", str(tmp_path / "w.safetensors"))
    assert info["num_params"] == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("args,needle", [
    (["inspect", "X/16"], "S/32, S/16, B/32, B/16, L/32, L/16, H/14"),
    (["inspect", "in21k"], "needs a model variant"),
    (["inspect", "in21k", "--model", "S/32"], "B/16 and L/16 only"),
    (["inspect", "in21k", "--model", "L/16"], "Mixer-L_16.npz on a machine with internet and put it at /"),
    (["inspect", "hf-hub:timm/mixer_b16_224.goog_in21k"], "HF_HUB_OFFLINE=1 forbids downloading"),
])
def test_user_errors_are_one_message_and_exit_2(args, needle):
    out = run(*args)
    assert out.returncode == 2
    assert needle in out.stderr and out.stderr.startswith("error: ")
    assert "Traceback" not in out.stderr


def test_truncated_checkpoint_on_the_command_line(tmp_path):
    save_file(create_model("S/32").state_dict(), tmp_path / "w.safetensors")
    data = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "w.safetensors").write_bytes(data[:1000])
    out = run("inspect", str(tmp_path / "w.safetensors"))
    assert out.returncode == 2 and "truncated, corrupt" in out.stderr and "Traceback" not in out.stderr


def test_console_script_is_the_same_app():
    exe = os.path.join(os.path.dirname(sys.executable), "mixer-ft")
    out = subprocess.run([exe, "inspect", "S/32", "--json"], capture_output=True, text=True, timeout=300)
    assert json.loads(out.stdout)["num_params"] == 19_104_624


def test_installed_with_pip_the_records_still_name_the_commit(tmp_path):
    # `pip install .` copies the package out of the checkout; the commit is read where pip took it from.
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target",
                          str(tmp_path / "site"), str(REPO)], capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stderr[-2000:]
    code = "import mixer_ft.train.records as r; print(r.__file__); print(r.git_commit())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60,
                         env=os.environ | {"PYTHONPATH": str(tmp_path / "site")}).stdout.splitlines()
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip()
    assert out[0].startswith(str(tmp_path / "site")) and out[1].removesuffix("+dirty") == head


def test_results_are_written_with_the_users_usual_file_mode(tmp_path):
    from mixer_ft.atomic import atomic_write_text

    old = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "record.json", "{}")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644  # not mkstemp's private 0600


@pytest.mark.parametrize("args,needle", [
    (["data", "cifar10"], "Could not load uoft-cs/cifar10"),
    (["data", "hf:uoft-cs/cifar100"], "Could not load uoft-cs/cifar100"),
    (["inspect", "hf-hub:timm/mixer_b16_224.goog_in21k"], "cannot be reached"),
    (["predict", "in1k", "--model", "B/16", str(REPO / "README.md")], "hf download timm/mixer_b16_224.goog_in21k_ft_in1k"),
])
def test_with_no_network_and_no_offline_setting_commands_fail_at_once_saying_what_to_fetch(args, needle):
    import socket
    import time

    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # the Hub's address refuses connections, as on a machine with no network
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "mixer_ft", *args], capture_output=True, text=True, timeout=120,
                         env=env | {"HF_ENDPOINT": f"http://127.0.0.1:{port}"})
    took = time.perf_counter() - t0  # 1-3 s here; a Hub client's retries took 25 s
    assert out.returncode == 2 and needle in out.stderr and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert out.stderr.startswith("error: ") and "Retrying" not in out.stderr and took < 20, took


def test_help_screens_are_plain_and_whole():
    root = run("--help").stdout
    commands = root.split("Commands:")[1].strip().splitlines()
    assert len(commands) == 15 and not any(line.rstrip().endswith("...") for line in commands)
    for name in (line.split()[0] for line in commands):
        text = run(name, "--help").stdout
        assert "<bool>" not in text and "Usage:" in text, name
