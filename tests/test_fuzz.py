"""Damaged input never gives a traceback: seeded corruptions of every kind of file a user hands us
(weights as .npz, .safetensors and .pth; image archives; CIFAR python archives; recipes) and of the
flags, each through the real `mixer-ft` entry point, must end with exit 0 or 2."""

import io
import pickle
import sys
import tarfile

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from test_weights_npz import flax_mixer_params

from conftest import REPO
from mixer_ft.cli import main

CASES = 12  # seeded corruptions per kind


def run_cli(*args, capsys):
    """`mixer-ft ARGS` in this process: (exit status, stderr). Any exception but SystemExit fails the test."""
    old = sys.argv
    sys.argv = ["mixer-ft", *map(str, args)]
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = old
    return code, capsys.readouterr().err


def corrupt_bytes(data: bytes, rng: np.random.Generator) -> bytes:
    """Truncated, or a few bytes flipped, or both."""
    data = bytearray(data)
    kind = rng.integers(3)
    if kind in (0, 2):
        data = data[: int(rng.integers(1, len(data)))]
    if kind in (1, 2):
        for i in rng.integers(0, len(data), size=int(rng.integers(1, 8))):
            data[i] ^= int(rng.integers(1, 256))
    return bytes(data)


def small_state_dict():
    from mixer_ft import create_model

    torch.manual_seed(0)
    return create_model("S/32", img_size=64, num_classes=3, gelu="exact").state_dict()


def corrupt_mapping(d: dict, rng: np.random.Generator, make) -> dict:
    """Wrong shape, wrong dtype, a key missing or an unexpected one."""
    d = dict(d)
    key = sorted(d)[int(rng.integers(len(d)))]
    kind = rng.integers(4)
    if kind == 0:
        d[key] = make(np.zeros((3, 5), np.float32))
    elif kind == 1:
        d[key] = make(np.zeros(np.shape(d[key]), np.int64 if rng.integers(2) else np.bool_))
    elif kind == 2:
        del d[key]
    else:
        d["extra/thing" if "/" in key else "extra.thing"] = make(np.ones(4, np.float32))
    return d


def assert_clean(code, err, what, path=None):
    assert code in (0, 2), (what, code, err[-2000:])
    assert "Traceback" not in err, (what, err[-2000:])
    if code == 2:
        assert err.startswith("error: ") or "Usage:" in err, (what, err[-500:])
        assert path is None or path.name in err, (what, "the message must name the file", err[-500:])


@pytest.mark.parametrize("fmt", ["npz", "safetensors", "pth"])
def test_damaged_weight_files(tmp_path, capsys, fmt):
    rng = np.random.default_rng(["npz", "safetensors", "pth"].index(fmt))
    if fmt == "npz":
        arrays = flax_mixer_params(np.random.default_rng(0), 8, 16, 2, 8, 32, 16, 3)

        def write(d, path):
            np.savez(path, **d)
        make = np.asarray
    else:
        arrays = small_state_dict()

        def write(d, path):
            save_file(d, path) if fmt == "safetensors" else torch.save(d, path)

        def make(a):
            return torch.from_numpy(np.ascontiguousarray(a))
    whole = tmp_path / f"whole.{fmt}"
    write(arrays, whole)
    for i in range(CASES):
        path = tmp_path / f"bad{i}.{fmt}"
        if i % 2:
            path.write_bytes(corrupt_bytes(whole.read_bytes(), rng))
        else:
            write(corrupt_mapping(arrays, rng, make), path)
        assert_clean(*run_cli("inspect", path, capsys=capsys), f"{fmt} case {i}", path)


def _image_archive(cifar: "Path") -> bytes:  # noqa: F821
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for split in ("train", "test"):
            for cls in ("cat", "dog"):
                for f in sorted((cifar / split / cls).iterdir())[:4]:
                    tar.add(f, arcname=f"data/{split}/{cls}/{f.name}")
    return buf.getvalue()


def _cifar_python_archive() -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        def add(name, obj):
            data = pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        add("batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)]})
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            add(name, {b"data": rng.integers(0, 255, (20, 3072), dtype=np.uint8), b"labels": list(range(10)) * 2})
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["image-archive", "cifar-python"])
def test_damaged_data_archives(tmp_path, capsys, cifar_subset, kind):
    rng = np.random.default_rng(10 + len(kind))
    whole = _image_archive(cifar_subset(train=25, test=5)) if kind == "image-archive" else _cifar_python_archive()
    name = "images.tar.gz" if kind == "image-archive" else "cifar-10-python.tar.gz"
    for i in range(CASES):
        folder = tmp_path / str(i)
        folder.mkdir()
        (folder / name).write_bytes(corrupt_bytes(whole, rng))
        assert_clean(*run_cli("data", folder / name, capsys=capsys), f"{kind} case {i}", folder / name)


def test_damaged_recipes_and_flags(tmp_path, capsys):
    rng = np.random.default_rng(20)
    whole = (REPO / "recipes" / "smoke.toml").read_bytes()
    nowhere = tmp_path / "no-data"  # every run below stops before training: its data set does not exist
    for i in range(CASES):
        path = tmp_path / f"bad{i}.toml"
        path.write_bytes(corrupt_bytes(whole, rng))
        code, err = run_cli("finetune", "--recipe", path, "--dataset", nowhere, capsys=capsys)
        assert_clean(code, err, f"recipe case {i}", path if "Recipe" in err else None)
    flags = [["--steps", "many"], ["--batch", "-4"], ["--lr", "nan"], ["--lr", "-1"], ["--micro-batch", "0"],
             ["--set", "steps=[1, 2]"], ["--set", "architecture.hidden_dim=\"wide\""], ["--set", "architecture=3"],
             ["--set", "=3"], ["--set", "lr"], ["--mixed-precision", "fp8"], ["--model", "Z/7"], ["--set", "seed=-1"],
             ["--set", "epochs=0"], ["--set", "micro_batch=\"some\""], ["--upstream", "nowhere.npz"]]
    for extra in flags:
        code, err = run_cli("finetune", "--dataset", nowhere, *extra, capsys=capsys)
        assert_clean(code, err, extra)
        assert code == 2, (extra, err)


def test_hostile_flags_of_every_command_are_one_message(tmp_path, capsys, smoke_run):
    run, _, cut = smoke_run
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    photo = next((cut / "test" / "cat").iterdir())
    cases = [
        (["finetune", "--dataset", cut, "--seed", str(2**70)], "seed"),
        (["finetune", "--dataset", cut, "--set", "epochs=inf"], "epochs must be a finite number"),
        (["finetune", "--dataset", cut, "--set", "momentum=-0.5"], "momentum must be in [0, 1)"),
        (["finetune", "--dataset", cut, "--set", 'tracker="nope"', "--set", 'upstream="none"', "--model", "S/32"],
         "The tracker 'nope': unknown"),
        (["finetune", "--dataset", cut, "--set", "architecture.num_blocks=1000000", "--set", 'upstream="none"',
          "--model", "S/32"], "parameters, more than"),
        (["inspect", "B/16", "--img-size", "3200"], "tokens, more than"),
        (["data", cut, "--seed", "-1"], "--seed must be a whole number"),
        (["predict", run, photo, "--device", "bogus"], "Unknown device 'bogus'"),
        (["evaluate", run, "--dataset", cut, "--translate", "100000"], "--translate takes a shift of 0 to 16"),
        (["evaluate", run, "--dataset", cut, "--plot", tmp_path / "cm.txt"], "name an image file"),
        (["fewshot", "--upstream", run, "--dataset", cut, "--results", ""], "--results needs a folder name"),
        (["fewshot", "--upstream", run, "--dataset", cut, "--results", a_file], "is a file, not a folder"),
        (["bench", "--model", "S/32", "--device", "cpu", "--out", a_file], "is a file, not a folder"),
    ]
    if not torch.cuda.is_available():
        cases.append((["predict", run, photo, "--device", "cuda"], "no CUDA device"))
    for args, needle in cases:
        code, err = run_cli(*args, capsys=capsys)
        assert_clean(code, err, args)
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, (args, err[-1000:])


@pytest.mark.parametrize("config", ["[1]", "null", "3", '{"label_names": "cat"}', '{"label_names": ["only", "two"]}',
                                    '{"mixer_ft": {"config": {"gelu": 3, "mean": "x", "std": []}}}',
                                    '{"pretrained_cfg": {"mean": [1, "x"], "std": null}}',
                                    "[" * 50_000 + "]" * 50_000, '{"a": 1'])
def test_a_malformed_model_config_is_one_message_naming_it(tmp_path, capsys, smoke_run, config):
    import shutil

    run, _, cut = smoke_run
    model = tmp_path / "model"
    shutil.copytree(run / "model", model)
    (model / "config.json").write_text(config)
    code, err = run_cli("predict", model, next((cut / "test" / "cat").iterdir()), capsys=capsys)
    assert_clean(code, err, config[:40])
    assert code == 2 and "config.json" in err, err[-500:]


def test_cifar_pickles_of_the_wrong_shape_or_keys(tmp_path, capsys):
    for i, batch in enumerate([{b"data": np.zeros((3, 7), np.uint8), b"labels": [0, 1, 2]},  # wrong shape
                               {b"labels": [0, 1]}]):  # no data
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for name, obj in [("batches.meta", {b"label_names": [b"a", b"b"]})] + \
                    [(n, batch) for n in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]]:
                data = pickle.dumps(obj, protocol=2)
                info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        path = tmp_path / str(i) / "cifar-10-python.tar.gz"
        path.parent.mkdir()
        path.write_bytes(buf.getvalue())
        code, err = run_cli("data", path, capsys=capsys)
        assert_clean(code, err, i, path)
        assert code == 2 and "wrong keys or shapes" in err
