"""The invariants that keep whole classes of bad input out, each enforced in one place (issue 33), tested by
the cases an adversary found and by generated ones:

1. Files we read are files (mixer_ft/gate.py).          4. Nothing finished is ever lost.
2. Layout rules know real-world archives (data/folder). 5. Numbers are finite.
3. A run knows its data.                                 6. Any class name prints safely.
"""

import ast
import contextlib
import json
import os
import signal
import tarfile
import unicodedata
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file, save_file

from conftest import REPO, run_cli

TINY = ["--set", "architecture.patch_size=8", "--set", "architecture.hidden_dim=16", "--set", "architecture.num_blocks=1",
        "--set", "architecture.tokens_mlp_dim=8", "--set", "architecture.channels_mlp_dim=32",
        "--set", "architecture.img_size=32", "--set", 'model="custom"', "--set", 'upstream="none"']


@contextlib.contextmanager
def within(seconds: int):
    """Fail, rather than hang the suite, if the block blocks (a FIFO read would wait forever)."""
    def late(*_):
        raise TimeoutError(f"blocked for {seconds} s")
    old = signal.signal(signal.SIGALRM, late)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def jpeg(path: Path, seed: int = 0, size: int = 16) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path, format="JPEG")
    return path


def photo_folder(root: Path, classes=("cat", "dog"), per_class: int = 5) -> Path:
    for c in classes:
        for i in range(per_class):
            jpeg(root / c / f"{i}.jpg", seed=hash((c, i)) % 1000)
    return root


def one_error_line(out) -> str:
    lines = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert out.returncode == 2 and len(lines) == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    return lines[0]


def finetune(tmp, data, name, *extra, steps=3):
    return run_cli("finetune", "--dataset", data, "--steps", steps, "--batch", 4, "--warmup", 0, "--eval-every", 0,
                   "--set", "checkpoint_every=1", "--set", f'results_dir="{tmp / "results"}"', "--set", f'name="{name}"',
                   *TINY, *extra, cwd=REPO)


# --------------------------------------------------------------------------- 1. files we read are files


@pytest.mark.parametrize("flag", ["--dataset", "--recipe", "--upstream"])
def test_a_fifo_where_a_file_is_expected_is_one_line_at_once(tmp_path, flag):
    fifo = tmp_path / ("weights.npz" if flag == "--upstream" else "in.toml" if flag == "--recipe" else "data")
    os.mkfifo(fifo)
    args = ["finetune", flag, fifo] + ([] if flag == "--dataset" else ["--dataset", photo_folder(tmp_path / "p")])
    with within(30):
        line = one_error_line(run_cli(*args, "--output-dir", tmp_path / "run", cwd=tmp_path))
    assert "FIFO" in line and str(fifo) in line


@pytest.mark.parametrize("flag", ["--dataset", "--recipe"])
def test_dev_zero_is_refused_before_a_byte_is_read(tmp_path, flag):
    args = ["finetune", flag, "/dev/zero"] + ([] if flag == "--dataset" else ["--dataset", photo_folder(tmp_path / "p")])
    with within(30):
        assert "character device" in one_error_line(run_cli(*args, "--output-dir", tmp_path / "run", cwd=tmp_path))


def test_an_npz_that_declares_more_than_any_mixer_is_refused_from_its_headers(tmp_path):
    import io

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (2**34,)})
    with zipfile.ZipFile(tmp_path / "bomb.npz", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("stem/kernel.npy", header.getvalue() + b"\0" * 64)  # declares 64 GiB, holds 64 bytes
    line = one_error_line(run_cli("inspect", tmp_path / "bomb.npz"))
    assert "declares arrays of more than" in line and "stem/kernel.npy" in line


@pytest.mark.parametrize("flag", ["--dataset", "--output-dir"])
def test_a_name_longer_than_a_file_system_holds_is_one_line(tmp_path, flag):
    long = tmp_path / ("x" * 300)
    args = {"--dataset": ["--dataset", long, "--output-dir", tmp_path / "run"],
            "--output-dir": ["--dataset", photo_folder(tmp_path / "p"), "--output-dir", long]}[flag]
    assert "300 bytes" in one_error_line(run_cli("finetune", *args, *TINY, cwd=tmp_path))


# --------------------------------------------------------------------------- 2. layouts of real archives


def test_a_finder_zip_with_macos_litter_keeps_its_classes(tmp_path):
    """macOS Finder adds __MACOSX/<top>/<class>/._x.jpg entries: they broke the shared top folder rule, and
    every image landed in one class named after the top folder (100% accuracy)."""
    src = photo_folder(tmp_path / "src" / "pets")
    with zipfile.ZipFile(tmp_path / "pets.zip", "w") as zf:
        for f in sorted(src.rglob("*.jpg")):
            rel = f.relative_to(src.parent)
            zf.write(f, str(rel))
            zf.writestr(f"__MACOSX/{rel.parent}/._{rel.name}", b"\0\5\26\7 Mac OS X resource fork")
        zf.writestr("pets/.DS_Store", b"\0\0\0\1Bud1")
        zf.writestr("pets/cat/Thumbs.db", b"\xd0\xcf\x11\xe0")
    info = json.loads(run_cli("data", tmp_path / "pets.zip", "--json").stdout)
    assert info["classes"] == ["cat", "dog"] and info["skipped"] == 0
    assert sum(info["splits"].values()) == 10


def test_links_are_followed_inside_the_data_folder_and_named_when_they_leave_it(tmp_path):
    root = photo_folder(tmp_path / "photos")
    jpeg(tmp_path / "elsewhere" / "secret.jpg")
    photo_folder(tmp_path / "raw", classes=("bird",))
    (root / "bird").symlink_to(tmp_path / "raw" / "bird")  # a class folder that leaves the folder
    (root / "cat" / "linked.jpg").symlink_to(root / "dog" / "0.jpg")  # a file link inside it: followed
    (root / "dog" / "secret.jpg").symlink_to(tmp_path / "elsewhere" / "secret.jpg")  # leaves it: named
    (root / "cats").symlink_to(root / "cat")  # a class folder linked inside: the same folder, read once
    out = run_cli("data", root, "--json")
    info = json.loads(out.stdout)
    assert info["classes"] == ["cat", "dog"] and sum(info["splits"].values()) == 11, info
    assert "links that lead outside the folder are not used" in out.stderr
    assert "bird/" in out.stderr and "dog/secret.jpg" in out.stderr


def test_class_names_are_nfc_and_nfc_nfd_twins_are_refused(tmp_path):
    nfd = unicodedata.normalize("NFD", "café")
    photo_folder(tmp_path / "one", classes=(nfd, "tea"))
    info = json.loads(run_cli("data", tmp_path / "one", "--json").stdout)
    assert info["classes"] == ["café", "tea"] and unicodedata.is_normalized("NFC", info["classes"][0])
    photo_folder(tmp_path / "two", classes=(nfd, "café"))
    if len({p.name for p in (tmp_path / "two").iterdir()}) == 2:  # (a file system that normalises makes them one)
        assert "Unicode normalisation" in one_error_line(run_cli("data", tmp_path / "two"))


def test_special_files_in_a_folder_and_links_in_an_archive_are_named(tmp_path):
    root = photo_folder(tmp_path / "photos")
    os.mkfifo(root / "cat" / "pipe.jpg")
    with within(30):
        out = run_cli("data", root, "--json")
    assert out.returncode == 0 and "cat/pipe.jpg (a FIFO" in out.stderr
    with tarfile.open(tmp_path / "photos.tar", "w") as tar:
        tar.add(root / "dog", "photos/dog")
        tar.add(root / "cat" / "0.jpg", "photos/cat/0.jpg")
        link = tarfile.TarInfo("photos/cat/passwd.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    out = run_cli("data", tmp_path / "photos.tar", "--json")
    assert out.returncode == 0 and "photos/cat/passwd.jpg (a link)" in out.stderr


# --------------------------------------------------------------------------- 3. a run knows its data


@pytest.mark.parametrize("change", ["rename", "add", "remove"])
def test_resuming_on_other_classes_is_one_line_and_trains_nothing(tmp_path, change):
    data = photo_folder(tmp_path / "photos", classes=("cat", "dog", "eel"))
    assert finetune(tmp_path, data, "pets", "--output-dir", tmp_path / "run", steps=2).returncode == 0
    ckpt = tmp_path / "run" / "checkpoints" / "step_00000002.pt"
    (tmp_path / "run" / "model").rename(tmp_path / "model_kept")  # so that the run is taken for unfinished
    before = ckpt.read_bytes()
    if change == "rename":
        (data / "cat").rename(data / "zcat")
    elif change == "add":
        photo_folder(data, classes=("fox",))
    else:
        import shutil

        shutil.rmtree(data / "eel")
    line = one_error_line(finetune(tmp_path, data, "pets", "--output-dir", tmp_path / "run", steps=2))
    assert "trained on other classes" in line and "--fresh" in line
    assert {"rename": "removed ['cat']; added ['zcat']", "add": "added ['fox']", "remove": "removed ['eel']"}[change] in line
    assert ckpt.read_bytes() == before and not (tmp_path / "run" / "model").exists()


def test_a_changed_file_with_the_same_classes_resumes_with_a_warning(tmp_path):
    data = photo_folder(tmp_path / "photos")
    assert finetune(tmp_path, data, "pets", "--output-dir", tmp_path / "run", steps=2).returncode == 0
    (tmp_path / "run" / "model").rename(tmp_path / "model_kept")
    jpeg(data / "cat" / "new.jpg", seed=99)
    out = finetune(tmp_path, data, "pets", "--output-dir", tmp_path / "run", steps=2)
    assert out.returncode == 0 and "the data set's files changed since the checkpoint" in out.stderr


@pytest.mark.parametrize("where", ["output", "results", "plot"])
def test_nothing_is_written_inside_the_data_folder(tmp_path, where, smoke_run):
    data = photo_folder(tmp_path / "photos")
    listing = sorted(data.rglob("*"))
    if where == "plot":
        out = run_cli("evaluate", smoke_run[0] / "model", "--dataset", data, "--plot", data / "cm.png")
    else:
        inside = {"output": ["--output-dir", data / "run"], "results": ["--set", f'results_dir="{data / "res"}"']}[where]
        out = run_cli("finetune", "--dataset", data, "--steps", 1, "--batch", 4, *TINY, *inside,
                      *(["--output-dir", tmp_path / "run"] if where == "results" else []), cwd=tmp_path)
    assert "inside the data folder" in one_error_line(out)
    assert sorted(data.rglob("*")) == listing


# --------------------------------------------------------------------------- 4. nothing finished is lost


def test_two_runs_of_one_name_that_overlapped_keep_both_records_and_the_table_shows_both(tmp_path):
    from mixer_ft.train.records import write_record

    first = {"name": "pets", "run_id": "aaaa", "model_dir": str(tmp_path / "a" / "model"), "test_accuracy": 0.5}
    second = {"name": "pets", "run_id": "bbbb", "model_dir": str(tmp_path / "b" / "model"), "test_accuracy": 0.6}
    assert write_record(tmp_path, first) == tmp_path / "pets.json"
    assert write_record(tmp_path, second) == tmp_path / "pets.bbbb.json"  # beside it: the first stays
    assert json.loads((tmp_path / "pets.json").read_text())["run_id"] == "aaaa"
    assert write_record(tmp_path, first | {"test_accuracy": 0.7}) == tmp_path / "pets.json"  # its own: replaced


def test_fresh_never_deletes_an_input_of_its_own_command(tmp_path):
    data = photo_folder(tmp_path / "photos")
    assert finetune(tmp_path, data, "first", "--output-dir", tmp_path / "run", steps=2).returncode == 0
    weights = (tmp_path / "run" / "model" / "model.safetensors").read_bytes()
    out = run_cli("finetune", "--dataset", data, "--upstream", tmp_path / "run", "--output-dir", tmp_path / "run",
                  "--fresh", "--steps", 2, "--batch", 4, "--set", f'results_dir="{tmp_path / "results"}"', cwd=REPO)
    assert "--fresh would delete the upstream weights" in one_error_line(out)
    assert (tmp_path / "run" / "model" / "model.safetensors").read_bytes() == weights


def test_a_file_in_checkpoints_that_is_not_a_checkpoint_is_left_alone_with_a_warning(tmp_path):
    data = photo_folder(tmp_path / "photos")
    assert finetune(tmp_path, data, "pets", "--output-dir", tmp_path / "run", steps=2).returncode == 0
    best = tmp_path / "run" / "checkpoints" / "step_best.pt"
    best.write_bytes((tmp_path / "run" / "checkpoints" / "step_00000002.pt").read_bytes())
    out = finetune(tmp_path, data, "pets", "--output-dir", tmp_path / "run", steps=2)
    assert out.returncode == 0 and "ignoring step_best.pt" in out.stderr and best.exists()
    assert run_cli("predict", tmp_path / "run", data / "cat" / "0.jpg").returncode == 0


# --------------------------------------------------------------------------- 5. numbers are finite


@pytest.mark.parametrize("damage,needle", [
    ("nan", "blocks.0.mlp_channels.fc1.weight holds"), ("int", "head.weight is a int64 tensor"),
    ("std", "std non-zero"), ("nan_std", "must be finite numbers"),
])
def test_a_model_folder_with_numbers_that_are_not_finite_is_refused_naming_them(tmp_path, smoke_run, damage, needle):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(smoke_run[0] / "model", folder)
    sd = load_file(folder / "model.safetensors")
    config = json.loads((folder / "config.json").read_text())
    if damage == "nan":
        sd["blocks.0.mlp_channels.fc1.weight"][0, 0] = float("nan")
    elif damage == "int":
        sd["head.weight"] = sd["head.weight"].long()
    else:
        config["mixer_ft"]["config"]["std"] = [0.5, 0.0, 0.5] if damage == "std" else [0.5, float("nan"), 0.5]
        (folder / "config.json").write_text(json.dumps(config))
    save_file(sd, folder / "model.safetensors")
    image = next((REPO / "examples" / "photos").rglob("*.jpg"))
    assert needle in one_error_line(run_cli("predict", folder, image, "--json"))


def test_every_json_the_package_writes_or_prints_goes_through_the_strict_writer():
    """json.dumps is called in one place, atomic.json_text, which refuses NaN and infinities."""
    calls = []
    for path in sorted((REPO / "mixer_ft").rglob("*.py")):
        if "remote_code" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("dumps", "dump") \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "json":
                calls.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert calls == [f"mixer_ft/atomic.py:{_line_of('json.dumps(obj, allow_nan=False')}"], calls
    from mixer_ft.atomic import json_text
    from mixer_ft.errors import DataError

    with pytest.raises(DataError, match="not finite"):
        json_text({"probability": float("nan")})


def _line_of(text: str) -> int:
    lines = (REPO / "mixer_ft" / "atomic.py").read_text().splitlines()
    return next(i + 1 for i, line in enumerate(lines) if text in line)


# --------------------------------------------------------------------------- 6. any class name prints safely


def test_a_class_named_with_a_newline_and_a_pipe_stays_on_one_line_everywhere(tmp_path):
    data = photo_folder(tmp_path / "photos", classes=("a\nb|c", "dog"))
    out = run_cli("data", data)
    assert out.returncode == 0 and "a\\nb|c" in out.stdout and not any(line.strip() == "b|c" for line in out.stdout.splitlines())
    assert finetune(tmp_path, data, "odd", "--output-dir", tmp_path / "run", steps=2).returncode == 0
    card = (tmp_path / "run" / "model" / "README.md").read_text()
    row = next(line for line in card.splitlines() if line.startswith("| classes |"))
    assert row.count(" | ") == 1 and "a\\\\nb\\|c" in row  # two cells, the newline and pipe escaped
    lines = run_cli("predict", tmp_path / "run", data / "dog", "--top-k", 2).stdout.splitlines()
    assert len(lines) == 5 and all("a\\nb|c" in line for line in lines)
    csv_rows = run_cli("predict", tmp_path / "run", data / "dog", "--top-k", 2, "--csv").stdout.splitlines()
    assert len(csv_rows) == 1 + 10  # a header, then one line per image and rank


def test_two_long_run_names_that_differ_past_the_cut_stay_two_names():
    from mixer_ft.train.recipe import safe_name

    a, b = safe_name("sweep_" + "x" * 130 + "_lr0.001"), safe_name("sweep_" + "x" * 130 + "_lr0.003")
    assert a != b and len(a) <= 120 and len(b) <= 120 and safe_name(a) == a


def test_push_refuses_a_model_folder_with_a_link_leading_outside_it(tmp_path, smoke_run):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(smoke_run[0] / "model", folder)
    (tmp_path / "secret.txt").write_text("not for the Hub")
    (folder / "notes.txt").symlink_to(tmp_path / "secret.txt")
    line = one_error_line(run_cli("push", folder, "someone/model", env={"HF_HUB_OFFLINE": "0"}))
    assert "must not upload" in line and "notes.txt (a link to" in line


@pytest.mark.slow
def test_a_run_started_with_fresh_and_stopped_says_to_resume_without_fresh(tmp_path):
    import subprocess
    import sys
    import time

    data = photo_folder(tmp_path / "photos", per_class=10)
    cmd = [sys.executable, "-m", "mixer_ft", "finetune", "--dataset", data, "--steps", 100000, "--batch", 4, "--warmup", 0,
           "--eval-every", 0, "--set", "checkpoint_every=5", "--output-dir", tmp_path / "run", "--set",
           f'results_dir="{tmp_path / "results"}"', "--fresh", *TINY]
    proc = subprocess.Popen(list(map(str, cmd)), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=REPO)
    deadline = time.time() + 300
    while not list((tmp_path / "run" / "checkpoints").glob("step_*.pt")) and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "run the same command without --fresh to resume" in err, err[-2000:]
