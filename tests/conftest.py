"""Test environment: nothing reaches the network, every cache lives in a temporary folder.

The variables are set at import, before huggingface_hub reads them into its constants.
"""

import hashlib
import os
import shutil
import tempfile
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
def smoke_run(cifar_subset, tmp_path_factory):
    """The README's smoke recipe run once on 1,000 real CIFAR-10 training images: (run folder, record, data)."""
    import json
    import subprocess
    import sys

    data = cifar_subset(train=100, test=20)
    root = tmp_path_factory.mktemp("smoke")
    out = subprocess.run([sys.executable, "-m", "mixer_ft", "finetune", "--recipe", "recipes/smoke.toml",
                          "--dataset", str(data), "--output-dir", str(root / "smoke"),
                          "--set", f'results_dir="{root / "results"}"'],
                         capture_output=True, text=True, cwd=REPO, env=os.environ.copy(), timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return root / "smoke", json.loads((root / "results" / "smoke_cifar10.json").read_text()), data
