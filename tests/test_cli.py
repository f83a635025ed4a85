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
    code = "import mixer_ft.records as r; print(r.__file__); print(r.git_commit())"
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
