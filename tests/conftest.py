"""Test environment: nothing reaches the network, every cache lives in a temporary folder.

The variables are set at import, before huggingface_hub reads them into its constants.
"""

import contextlib
import hashlib
import io
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

_ROOT = Path(tempfile.mkdtemp(prefix="mixer_ft_tests_"))
os.environ.update(
    HF_HUB_OFFLINE="1",
    HF_DATASETS_OFFLINE="1",
    HF_HOME=str(_ROOT / "hf_home"),
    HF_HUB_CACHE=str(_ROOT / "hub"),
    MIXER_FT_CACHE=str(_ROOT / "mixer_ft_cache"),
    HF_HUB_DISABLE_TELEMETRY="1",
)

import pytest  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CIFAR_TGZ = SHARED / "data" / "cifar10-jpeg.tar.gz"


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_ROOT, ignore_errors=True)


@pytest.fixture(autouse=True)
def _environment_restored():
    """Each test sees the suite's environment: what code under test sets (the Hub probe puts huggingface_hub
    offline through variables) does not leak into the next test."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@dataclass
class Result:
    """What a `mixer-ft` command did: its exit status and what it printed (as subprocess.run's result)."""

    returncode: int
    stdout: str
    stderr: str


def _reset_accelerate() -> None:
    """Accelerate keeps its process state in singletons: a second run in one process must start clean."""
    if "accelerate" in sys.modules:
        from accelerate.state import AcceleratorState, GradientState, PartialState

        AcceleratorState._reset_state(reset_partial_state=True)
        PartialState._reset_state()
        GradientState._reset_state()


def signal_once_written(cmd, path: Path, sig: int, stderr=None) -> subprocess.Popen:
    """Start ``cmd`` in the repository; once ``path`` exists (a checkpoint, say), or the process has ended, or
    300 s have passed, send it ``sig`` and wait for it. ``stderr``: an open file for its stderr (default: none)."""
    proc = subprocess.Popen(list(map(str, cmd)), stdout=subprocess.DEVNULL, stderr=stderr or subprocess.DEVNULL,
                            env=os.environ.copy(), cwd=REPO)
    deadline = time.time() + 300
    while not path.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(sig)
    proc.wait(timeout=300)
    return proc


def run_cli(*args, cwd: Path | None = None, env: dict | None = None) -> Result:
    """`mixer-ft ARGS` through `cli.main` in this process: its exit status, stdout and stderr.

    The same entry point as the console script, without paying a torch import per call. Warnings
    that commands log go to the captured stderr, as they do in a terminal. ``env`` adds variables
    for the call (only what is read at call time: huggingface_hub reads its own at import).
    Anything but SystemExit escaping main is a crash: it propagates and fails the test.
    """
    from mixer_ft.cli import main

    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    root, saved_env, saved_argv, saved_cwd = logging.getLogger(), dict(os.environ), sys.argv, os.getcwd()
    root.addHandler(handler)
    sys.argv = ["mixer-ft", *map(str, args)]
    os.environ.update(env or {})
    code = 0
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        os.chdir(saved_cwd)
        sys.argv = saved_argv
        os.environ.clear()
        os.environ.update(saved_env)
        root.removeHandler(handler)
        _reset_accelerate()
    return Result(code, out.getvalue(), err.getvalue())


@pytest.fixture
def cli():
    """The in-process `mixer-ft` runner (:func:`run_cli`)."""
    return run_cli


@pytest.fixture
def hub_cache():
    """Put files into the local Hugging Face cache in the layout huggingface_hub reads offline.

    Returns a function ``add(repo_id, {filename: path_or_bytes})``.
    """
    root = Path(os.environ["HF_HUB_CACHE"])
    made = []

    def add(repo_id: str, files: dict) -> Path:
        repo = root / f"models--{repo_id.replace('/', '--')}"
        commit = hashlib.sha1(repo_id.encode()).hexdigest()
        snap = repo / "snapshots" / commit
        (repo / "blobs").mkdir(parents=True, exist_ok=True)
        snap.mkdir(parents=True, exist_ok=True)
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(commit)
        for name, content in files.items():
            data = Path(content).read_bytes() if isinstance(content, (str, Path)) else content
            blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
            blob.write_bytes(data)
            (snap / name).unlink(missing_ok=True)
            (snap / name).symlink_to(os.path.relpath(blob, snap))
        made.append(repo)
        return snap

    yield add
    for repo in made:
        shutil.rmtree(repo, ignore_errors=True)


@pytest.fixture(scope="session")
def cifar_subset(tmp_path_factory):
    """Cut real CIFAR-10 JPEGs into an image folder: ``cut(train=N, test=M)`` per class, cached."""
    made = {}

    def cut(train: int, test: int) -> Path:
        if (train, test) in made:
            return made[(train, test)]
        import tarfile

        root = tmp_path_factory.mktemp(f"cifar_{train}_{test}")
        want, taken = {"train": train, "test": test}, {}
        with tarfile.open(CIFAR_TGZ) as tar:
            for m in tar:
                parts = Path(m.name).parts
                if not m.isfile() or len(parts) < 3 or parts[-3] not in want:
                    continue
                key = (parts[-3], parts[-2])
                if taken.get(key, 0) < want[parts[-3]]:
                    dest = root / parts[-3] / parts[-2] / parts[-1]
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.write_bytes(tar.extractfile(m).read())
                    taken[key] = taken.get(key, 0) + 1
        assert sum(taken.values()) == 10 * (train + test)
        made[(train, test)] = root
        return root

    return cut


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter (the zero head too) random values of a sensible scale."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or p.ndim == 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1 + (1.0 if "norm" in name and "weight" in name else 0))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
    return model


@pytest.fixture(scope="session")
def readme_workdir(cifar_subset, tmp_path_factory) -> Path:
    """A folder laid out like the checkout, so that the README's and docs' commands run verbatim.

    ``work/`` has ``recipes/`` and ``examples/`` (the repository's: ``examples/photos`` is a user's folder);
    ``../shared/data/cifar10-jpeg.tar.gz`` is a small cut of CIFAR-10 (100 train and 20 test images a
    class) packed in the real archive's layout and in the same order as its folder, so the archive and
    ``cifar_subset(100, 20)`` give the same splits.
    Runs and records that the commands make land in ``work/``, never in the repository.
    """
    import tarfile

    cut = cifar_subset(train=100, test=20)
    root = tmp_path_factory.mktemp("readme")
    work, data = root / "work", root / "shared" / "data"
    work.mkdir(parents=True)
    data.mkdir(parents=True)
    (work / "recipes").symlink_to(REPO / "recipes")
    (work / "examples").symlink_to(REPO / "examples")
    with tarfile.open(data / "cifar10-jpeg.tar.gz", "w:gz") as tar:
        for f in sorted(p for p in cut.rglob("*") if p.is_file()):
            tar.add(f, arcname=str(f.relative_to(cut)))
    return work


# The README's smoke run, as the README spells it.
SMOKE_COMMAND = ("finetune", "--recipe", "recipes/smoke.toml", "--dataset", "../shared/data/cifar10-jpeg.tar.gz")


@pytest.fixture(scope="session")
def smoke_run(readme_workdir, cifar_subset):
    """The README's smoke run, made once (300 steps on 1,000 real CIFAR-10 training images) in the README's
    work folder: (run folder, its record, the same images as an image folder)."""
    import json

    out = run_cli(*SMOKE_COMMAND, cwd=readme_workdir)
    assert out.returncode == 0, out.stderr[-3000:]
    record = json.loads((readme_workdir / "results" / "smoke_cifar10.json").read_text())
    return readme_workdir / "runs" / "smoke_cifar10", record, cifar_subset(train=100, test=20)
