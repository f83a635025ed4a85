"""Few-shot linear evaluation of frozen features, the paper's second transfer measure.

The method of big_vision's ``evaluators/fewshot_lsr.py``: pooled features (before the head) of K
training images per class, whitened with their own mean and spread, a large constant feature
appended for the bias (so that the L2 penalty barely touches it), and a closed-form L2-regularised
least-squares fit to {-1, 1} one-hot targets (l2 = 1024, as its configs use); the test images are
scored by the arg-max of the fitted linear map. Features are computed once, for every image any
seed draws and for the whole evaluation split, and reused across shot counts and seeds.
"""

from __future__ import annotations

import hashlib
import re
import time
from typing import Any

import numpy as np
import torch

from mixer_ft.data.cache import ImageData
from mixer_ft.data.preprocess import Preprocess
from mixer_ft.errors import ConfigError, DataError
from mixer_ft.model.config import FEWSHOT_SHOTS as SHOTS
from mixer_ft.train.evaluation import EVAL_BATCH, eval_batches

L2_REG = 1024.0  # big_vision's fewshot configs
BIAS_CONSTANT = 100.0  # big_vision's: large, so that the regulariser leaves the bias nearly free
SPLITS = ("test", "minival")  # scored split; the shots always come from train


def features(model: torch.nn.Module, pre: Preprocess, data: ImageData, array: str, indices: np.ndarray,
             device: torch.device, batch: int = EVAL_BATCH) -> np.ndarray:
    """Pooled float64 features (len(indices), hidden_dim) of one split's images, preprocessed as for testing."""
    out = []
    with torch.no_grad():
        for _, x in eval_batches(pre, data.images[array], indices, device, batch, data.extents.get(array)):
            out.append(model.forward_features(x).double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.config.hidden_dim))


def lsr_weights(x: np.ndarray, y: np.ndarray, l2: float = L2_REG) -> np.ndarray:
    """argmin_W |X W - Y|^2 + l2 |W|^2, in closed form from the smaller of two systems.

    (X^T X + l2 I) W = X^T Y when there are at least as many points N as features D, and
    W = X^T (X X^T + l2 I)^{-1} Y otherwise: the same W.
    """
    n, d = x.shape
    if n >= d:
        return np.linalg.solve(x.T @ x + l2 * np.eye(d), x.T @ y)
    return x.T @ np.linalg.solve(x @ x.T + l2 * np.eye(n), y)


def lsr_accuracy(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                 num_classes: int, l2: float = L2_REG) -> float:
    """Test accuracy of the least-squares classifier fitted on whitened (x_train, y_train)."""
    mean, std = x_train.mean(0, keepdims=True), x_train.std(0, keepdims=True) + 1e-5

    def design(x: np.ndarray) -> np.ndarray:
        return np.pad((x - mean) / std, ((0, 0), (0, 1)), constant_values=BIAS_CONSTANT)

    w = lsr_weights(design(x_train), 2.0 * np.eye(num_classes)[y_train] - 1.0, l2)
    return float(((design(x_test) @ w).argmax(1) == y_test).mean())


def draws(labels: np.ndarray, pool: np.ndarray, num_classes: int, shots: int, seed: int) -> np.ndarray:
    """For one seed, a random order of each class's images in ``pool`` cut to ``shots``: (classes, shots).

    The K-shot set of a seed is its first K columns, so the sets of one seed are nested.
    """
    rng = np.random.default_rng(seed)
    return np.stack([rng.permutation(pool[labels[pool] == c])[:shots] for c in range(num_classes)])


def check_arguments(shots: list[int], seeds: int, split: str) -> None:
    """Errors for a request no data set can meet (run before loading anything)."""
    if not shots or min(shots) < 1:
        raise ConfigError(f"--shots takes positive whole numbers, e.g. 1,5,10,25; got {shots}.")
    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}.")
    if split not in SPLITS:
        raise ConfigError(f"Unknown split {split!r} to score; choose one of {', '.join(SPLITS)} "
                          "(the shots always come from train).")


def check_request(data: ImageData, labels: np.ndarray, pool: np.ndarray, shots: list[int]) -> None:
    """Errors, before any feature is computed, for shots this data set cannot give."""
    if len(data.classes) < 2:
        raise DataError(f"{data.location} has {len(data.classes)} class: a classifier needs at least two.")
    counts = np.bincount(labels[pool], minlength=len(data.classes))
    short = [f"{data.classes[c]} ({counts[c]})" for c in range(len(data.classes)) if counts[c] < max(shots)]
    if short:
        raise DataError(f"{max(shots)} shots need {max(shots)} training images per class, and {data.location} has "
                        f"fewer for {', '.join(short[:5])}{', ...' if len(short) > 5 else ''}: ask for fewer shots.")


def evaluate_fewshot(model: torch.nn.Module, pre: Preprocess, data: ImageData, shots: list[int], seeds: int,
                     split: str = "test", *, val_fraction: float = 0.02, device: torch.device | None = None,
                     batch: int = EVAL_BATCH) -> dict[str, Any]:
    """Few-shot accuracy per shot count over ``seeds`` draws: {"shots": {K: {mean, std, per_seed}}, ...}."""
    check_arguments(shots, seeds, split)
    device = device or next(model.parameters()).device
    splits = data.splits(val_fraction, 0)
    (train_array, pool), (test_array, test_idx) = splits["train"], splits[split]
    labels, k = data.labels[train_array], len(data.classes)
    check_request(data, labels, pool, shots)
    if len(test_idx) == 0:
        raise DataError(f"The {split} split of {data.location} is empty.")
    t0 = time.perf_counter()
    chosen = [draws(labels, pool, k, max(shots), seed) for seed in range(seeds)]
    needed = np.unique(np.concatenate([c.ravel() for c in chosen]))
    row = {int(i): r for r, i in enumerate(needed)}
    model.eval()
    x_pool = features(model, pre, data, train_array, needed, device, batch)
    x_test = features(model, pre, data, test_array, test_idx, device, batch)
    y_test = data.labels[test_array][test_idx]
    out: dict[str, Any] = {}
    for n in sorted(set(shots)):
        accs = []
        for c in chosen:
            idx = c[:, :n].ravel()
            accs.append(lsr_accuracy(x_pool[[row[int(i)] for i in idx]], labels[idx], x_test, y_test, k))
        out[str(n)] = {"mean": round(float(np.mean(accs)), 5),
                       "std": round(float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0, 5),
                       "per_seed": [round(a, 5) for a in accs]}
    return {"shots": out, "seeds": seeds, "l2_reg": L2_REG, "split": split, "test_images": int(len(test_idx)),
            "feature_images": int(len(needed)), "feature_dim": int(x_test.shape[1]),
            "seconds": round(time.perf_counter() - t0, 1)}


def weights_digest(model: torch.nn.Module) -> str:
    """8 hex digits of a hash of the model's weights: which model was measured, whatever its path."""
    h = hashlib.blake2b(digest_size=4)
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def record_name(upstream: str, cfg: Any, dataset_id: str, split: str, digest: str) -> str:
    """fewshot_<weights>_<variant>_<size>px_<data set>[_<split>]_<weights digest>: one file per thing
    measured, so that measuring other weights at the same path never replaces an earlier record."""
    parts = [upstream, (cfg.variant or "custom").replace("/", ""), f"{cfg.img_size}px", dataset_id]
    parts += ([] if split == "test" else [split]) + [digest]
    return "fewshot_" + "_".join(re.sub(r"[^A-Za-z0-9.-]+", "-", p).strip("-.") for p in parts)


def parse_shots(text: str) -> list[int]:
    """"1,5,10,25" -> [1, 5, 10, 25]."""
    try:
        return sorted({int(s) for s in text.split(",") if s.strip()})
    except ValueError:
        raise ConfigError(f"--shots takes whole numbers separated by commas, e.g. 1,5,10,25; got {text!r}.") from None


def run_fewshot(upstream: str, dataset: str, *, variant: str | None = None, shots: tuple[int, ...] | list[int] = SHOTS,
                seeds: int = 3, split: str = "test", img_size: int | None = None, resize: str = "tile",
                device: str | None = None, results_dir: str | None = "results", name: str | None = None
                ) -> dict[str, Any]:
    """Few-shot evaluation of ``upstream``'s features on ``dataset``; the record, also written to results_dir."""
    from mixer_ft.data.cache import load_data
    from mixer_ft.train import preflight
    from mixer_ft.train.hardware import hardware
    from mixer_ft.train.records import git_commit, versions, write_record
    from mixer_ft.weights.loading import create_model

    check_arguments(list(shots), seeds, split)  # before minutes of loading
    preflight.check(upstream, variant, dataset)  # weights and data both, named in one message
    from mixer_ft.train.devices import resolve_device

    dev = resolve_device(device)
    model = create_model(variant, pretrained=upstream, resize=resize, **({"img_size": img_size} if img_size else {}))
    model = model.to(dev)
    data = load_data(dataset)
    result = evaluate_fewshot(model, Preprocess.for_model(model.config), data, list(shots), seeds, split, device=dev)
    cfg = model.config
    record = {"kind": "fewshot", "name": name or record_name(upstream, cfg, data.dataset_id, split,
                                                           weights_digest(model)),
              "upstream": upstream, "model": cfg.variant or "custom", "dataset": data.dataset_id,
              "data_source": dataset, "classes": data.classes, "img_size": cfg.img_size, **result,
              "hardware": hardware(dev, 1), "versions": versions(), "git_commit": git_commit(),
              "model_config": cfg.to_dict(), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if results_dir:
        record["file"] = str(write_record(results_dir, record))
    return record


def fewshot_text(rec: dict[str, Any], upstream: str) -> str:
    """``mixer-ft fewshot``'s text: each K's mean accuracy and spread over the seeds."""
    lines = [f"{rec['model']} features of {upstream} on {rec['dataset']} ({rec['split']}, {rec['test_images']:,} images), "
             f"{rec['seeds']} seeds:"]
    lines += [f"  {k:>3}-shot  {100 * r['mean']:.2f}% +- {100 * r['std']:.2f}" for k, r in rec["shots"].items()]
    return "\n".join(lines)


__all__ = ["L2_REG", "SHOTS", "evaluate_fewshot", "fewshot_text", "lsr_accuracy", "lsr_weights", "parse_shots", "run_fewshot"]
