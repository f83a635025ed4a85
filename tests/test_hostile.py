"""Hostile and unlucky input: nothing lost, nothing written outside the run's folders, nothing
mislabelled, memory bounded. Each case ends in exit 0 with the right result, or one `error:` line
and exit 2."""

import json
import os
import struct
import zipfile
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, run_cli

TINY = ["--set", "architecture.patch_size=8", "--set", "architecture.hidden_dim=16", "--set", "architecture.num_blocks=1",
        "--set", "architecture.tokens_mlp_dim=8", "--set", "architecture.channels_mlp_dim=32",
        "--set", "architecture.img_size=32", "--set", 'model="custom"', "--set", 'upstream="none"']


def bomb_png(width: int = 50_000, height: int = 50_000) -> bytes:
    """A valid PNG header declaring ``width`` x ``height`` pixels, with almost no data behind it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def photos(root, per_class=6, classes=("cat", "dog"), name=lambda i: f"{i:03d}.jpg"):
    rng = np.random.default_rng(0)
    for c in classes:
        folder = root / c if isinstance(root, os.PathLike) else os.path.join(root, c)
        os.makedirs(folder, exist_ok=True)
        for i in range(per_class):
            img = Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
            img.save(os.path.join(folder, name(i)), format="JPEG")
    return root


def finetune(*args):
    return run_cli("finetune", "--steps", 2, "--batch", 4, "--warmup", 0, "--eval-every", 0, *TINY, *map(str, args),
                   cwd=REPO)


def test_file_and_folder_names_that_are_not_utf8_work_end_to_end(tmp_path):
    root = os.fsencode(tmp_path / "photos")
    photos(root, classes=(b"caf\xe9", b"th\xe9"), name=lambda i: b"\xff%d.jpg" % i)
    info = run_cli("data", os.fsdecode(root), "--json")
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["classes"] == ["caf\\xe9", "th\\xe9"]  # printable, and one class each
    out = finetune("--dataset", os.fsdecode(root), "--output-dir", tmp_path / "run",
                   "--set", f'results_dir="{tmp_path / "results"}"', "--set", 'name="bytes"')
    assert out.returncode == 0, out.stderr[-2000:]
    card = (tmp_path / "run" / "model" / "README.md").read_text()
    assert "caf\\\\xe9" in card  # markdown source: the backslash escaped, so the page shows caf\xe9
    text = run_cli("predict", tmp_path / "run" / "model", os.fsdecode(root))
    assert text.returncode == 0 and "\\xff0.jpg" in text.stdout, text.stderr
    rows = [json.loads(line) for line in run_cli("predict", tmp_path / "run" / "model", os.fsdecode(root),
                                                   "--json").stdout.splitlines()]
    assert len(rows) == 12 and all(os.path.exists(os.fsencode(r["path"])) for r in rows)  # the exact names


def test_a_decompression_bomb_is_skipped_and_named_and_the_other_images_are_labelled(tmp_path, smoke_run):
    run, _, cut = smoke_run
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "bomb.png").write_bytes(bomb_png())
    for f in sorted((cut / "test" / "cat").iterdir())[:3]:
        (tmp_path / "in" / f.name).write_bytes(f.read_bytes())
    out = run_cli("predict", run / "model", tmp_path / "in", "--json")
    assert out.returncode == 0 and "Traceback" not in out.stderr
    assert len(out.stdout.splitlines()) == 3 and "bomb.png (too large" in out.stderr
    # In a data set, a bomb is one more unreadable image: skipped, named and counted.
    data = photos(tmp_path / "data")
    (data / "cat" / "bomb.png").write_bytes(bomb_png())
    info = run_cli("data", data, "--json")
    assert info.returncode == 0 and json.loads(info.stdout)["skipped"] == 1 and "bomb.png (too large" in info.stderr


def test_an_archive_member_larger_than_an_image_may_be_is_skipped_unread_in_bounded_memory(tmp_path):
    import subprocess
    import sys

    data = photos(tmp_path / "data")
    with zipfile.ZipFile(tmp_path / "data.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(data.rglob("*.jpg")):
            zf.write(f, f.relative_to(data))
        with zf.open("dog/huge.jpg", "w", force_zip64=True) as member:  # 1 GiB of zeros: about 1 MB compressed
            for _ in range(1024):
                member.write(bytes(1 << 20))
    # `mixer-ft data` in a process of its own, which reports its peak memory (its decode workers included).
    code = ("import resource, sys\nfrom mixer_ft.cli import main\nsys.argv = ['mixer-ft', 'data', sys.argv[1], '--json']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            # VmHWM: this process's own peak (ru_maxrss would carry over the peak of the pytest process it was
            # forked from); its decode workers, forked from it, report theirs as RUSAGE_CHILDREN.
            "hwm = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM'))\n"
            "print(max(hwm, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) * 1024, file=sys.stderr)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "data.zip")], capture_output=True, text=True,
                         timeout=600, cwd=REPO)
    assert json.loads(out.stdout)["skipped"] == 1, out.stderr[-2000:]
    assert "huge.jpg (unreadable:" in out.stderr and "MiB an image file may have" in out.stderr
    assert int(out.stderr.strip().splitlines()[-1]) < 1.5 * 2**30  # the 4.7 GB case, bounded


@pytest.mark.parametrize("name", ["../../../x", "a/b", ".hidden", "/etc/passwd"])
def test_a_name_is_never_a_path(tmp_path, cifar_subset, name):
    out = finetune("--dataset", cifar_subset(train=100, test=20), "--set", f"name={json.dumps(name)}",
                   "--set", f'results_dir="{tmp_path / "results"}"')
    assert out.returncode == 2 and "is used as a file and folder name" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "results").exists() and not (REPO / "runs" / name.lstrip("/")).exists()


def test_a_run_never_replaces_another_runs_record(tmp_path, cifar_subset):
    cut = cifar_subset(train=100, test=20)
    common = ["--dataset", cut, "--set", f'results_dir="{tmp_path / "results"}"', "--set", 'name="same"']
    assert finetune(*common, "--output-dir", tmp_path / "first").returncode == 0
    record = (tmp_path / "results" / "same.json").read_text()
    # Another run under the same name (here: the same recipe on other data) is refused before it trains.
    out = finetune(*common, "--output-dir", tmp_path / "second")
    assert out.returncode == 2 and "holds the record of the run in" in out.stderr and str(tmp_path / "first") in out.stderr
    assert (tmp_path / "results" / "same.json").read_text() == record and not (tmp_path / "second" / "model").exists()
    # The run itself, again (it re-evaluates) or started over with --fresh, may write its own record.
    assert finetune(*common, "--output-dir", tmp_path / "first").returncode == 0
    assert finetune(*common, "--output-dir", tmp_path / "first", "--fresh").returncode == 0


def test_fewshot_records_of_different_weights_never_share_a_file(tmp_path, smoke_run):
    run, _, cut = smoke_run
    first = run_cli("fewshot", "--upstream", run / "model", "--dataset", cut, "--shots", "1", "--seeds", 1,
                    "--results", tmp_path, "--json")
    from mixer_ft import create_model, save_pretrained

    model = create_model(pretrained=str(run / "model"))  # the same model at another path, one weight changed
    with torch.no_grad():
        model.head.bias[0] += 1
    other = save_pretrained(model, tmp_path / "other")
    second = run_cli("fewshot", "--upstream", other, "--dataset", cut, "--shots", "1", "--seeds", 1,
                     "--results", tmp_path, "--json")
    assert first.returncode == second.returncode == 0, second.stderr[-2000:]
    assert len(list(tmp_path.glob("fewshot_*.json"))) == 2  # each weights' record in a file of its own


def small_run(tmp_path, cut, name, *extra):
    return ["--dataset", cut, "--output-dir", tmp_path / name, "--set", f'results_dir="{tmp_path / "results"}"',
            "--set", "checkpoint_every=2", *extra]


def test_a_damaged_newest_checkpoint_is_skipped_and_never_outranks_a_new_one(tmp_path, cifar_subset, caplog):
    from mixer_ft.train.checkpoints import Checkpoints

    cut = cifar_subset(train=100, test=20)
    args = ["finetune", "--steps", 6, "--batch", 8, "--warmup", 0, "--eval-every", 0, *TINY,
            *map(str, small_run(tmp_path, cut, "run"))]
    assert run_cli(*args, cwd=REPO).returncode == 0
    ckpts = Checkpoints(tmp_path / "run")
    four, six = ckpts.all()
    data = bytearray(six.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped bit deep in the tensor data: torch.load would not notice
    six.write_bytes(bytes(data))
    assert not ckpts.intact(six) and ckpts.intact(four)
    assert ckpts.latest()["step"] == 4 and "does not match its digest" in caplog.text
    # Resumed from step 4, the run writes step 6 anew: the damaged one is replaced, never kept above it.
    out = run_cli(*args, cwd=REPO)
    assert out.returncode == 0 and "resuming" in out.stdout and "at step 4/6" in out.stdout
    assert [p.name for p in ckpts.all()] == ["step_00000004.pt", "step_00000006.pt"] and ckpts.intact(ckpts.all()[-1])
    # Two damaged newest ones and a restart from scratch: each new checkpoint stays; the later damaged ones go.
    for p in ckpts.all():
        p.write_bytes(b"garbage")
    out = run_cli(*args, cwd=REPO)
    assert out.returncode == 0 and [p.name for p in ckpts.all()] == ["step_00000004.pt", "step_00000006.pt"]
    assert all(ckpts.intact(p) for p in ckpts.all())


def test_a_run_folder_in_use_is_refused_and_half_written_files_are_swept(tmp_path, cifar_subset):
    from mixer_ft.atomic import locked

    cut = cifar_subset(train=100, test=20)
    args = ["finetune", "--steps", 2, "--batch", 8, "--warmup", 0, "--eval-every", 0, *TINY,
            *small_run(tmp_path, cut, "run")]
    with locked(tmp_path / "run" / ".lock", wait=False, holder="pid 12345 on elsewhere"):
        out = run_cli(*args, cwd=REPO)
    assert out.returncode == 2 and "is in use by another run (pid 12345 on elsewhere)" in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "run" / "checkpoints").exists()
    # What a killed writer leaves (atomic_write's temporary files) is removed by the next run there; a user's
    # own .tmp files, even ones named much like ours, stay.
    from mixer_ft.atomic import TMP_SUFFIX

    (tmp_path / "run" / "checkpoints").mkdir()
    orphan = tmp_path / "run" / "checkpoints" / f".step_00000002.pt.abc123_x{TMP_SUFFIX}"
    orphan.write_bytes(b"\0" * 1000)
    mine = [tmp_path / "run" / ".notes.tmp", tmp_path / "run" / "checkpoints" / ".draft.abc123_x.tmp",
            tmp_path / "run" / f".x{TMP_SUFFIX}"]
    for path in mine:
        path.write_text("mine")
    assert run_cli(*args, cwd=REPO).returncode == 0 and not orphan.exists()
    assert all(path.read_text() == "mine" for path in mine)


def test_a_full_disk_while_checkpointing_is_one_line_and_loses_nothing(tmp_path, cifar_subset):
    import resource
    import subprocess
    import sys

    cut = cifar_subset(train=100, test=20)
    args = ["finetune", "--steps", 4, "--batch", 8, "--warmup", 0, "--eval-every", 0, *TINY,
            *map(str, small_run(tmp_path, cut, "run"))]
    assert run_cli("data", cut).returncode == 0  # the data cache exists before the limit
    limit = 8 << 10  # far below a checkpoint's size: the OS refuses the write (EFBIG), as a full disk would

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    out = subprocess.run([sys.executable, "-m", "mixer_ft", *map(str, args)], capture_output=True, text=True,
                         preexec_fn=cap, cwd=REPO, timeout=600)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert "error: Could not write" in out.stderr and "step_00000002.pt" in out.stderr and "File too large" in out.stderr
    assert not list((tmp_path / "run" / "checkpoints").glob("*.pt"))  # nothing half-written was kept


def test_a_model_folder_names_no_local_path_and_every_file_has_the_users_mode(smoke_run):
    run, _, _ = smoke_run  # made from ../shared/data/cifar10-jpeg.tar.gz in a temporary work folder
    for f in (run / "model").iterdir():
        text = f.read_bytes()
        assert b"shared/data" not in text and str(run.parent.parent).encode() not in text, f.name
        assert f.stat().st_mode & 0o777 == 0o666 & ~_umask(), f.name
    provenance = json.loads((run / "model" / "config.json").read_text())["mixer_ft"]["provenance"]
    assert provenance["data_source"] == "local:cifar10-jpeg.tar.gz"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.slow
def test_ctrl_c_while_a_stalled_server_holds_the_download_says_interrupted_and_leaves_no_partial_file(tmp_path):
    """A weight URL whose server accepts and never answers, and the user presses Ctrl-C: one line, exit 130, no
    traceback, and nothing half-downloaded in the cache. The Hub is unreachable meanwhile: the URL's host decides."""
    import signal
    import socket
    import subprocess
    import sys

    server, hub = socket.socket(), socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(120)
    hub.bind(("127.0.0.1", 0))  # bound, never listening: the Hub refuses at once
    cache = tmp_path / "cache"
    env = os.environ | {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": f"http://127.0.0.1:{hub.getsockname()[1]}",
                        "MIXER_FT_CACHE": str(cache)}
    url = f"http://127.0.0.1:{server.getsockname()[1]}/w.npz"
    proc = subprocess.Popen([sys.executable, "-m", "mixer_ft", "finetune", "--upstream", url, "--model", "S/32",
                             "--dataset", str(photos(tmp_path / "photos")), "--steps", "1", "--batch", "4",
                             "--output-dir", str(tmp_path / "run")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=REPO, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        held = [server.accept()[0] for _ in range(2)]  # the reachability probe, then the download, which waits
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        server.close()
        hub.close()
    assert proc.returncode == 130 and err.strip().splitlines()[-1] == "interrupted" and "Traceback" not in err, err
    assert held and not [p for p in cache.rglob("*") if p.is_file() and "w.npz" in p.name]
