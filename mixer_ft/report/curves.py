"""A run's learning curve as a picture (``mixer-ft plot RUN``): the training loss and accuracy by step, minival
accuracy where it was scored, and the learning rate, from the run's record (its folder's ``record.json``, or a
record in ``results/``) or, for a run still going, its ``metrics.csv``."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from mixer_ft.atomic import Manifest
from mixer_ft.bounded import read_text
from mixer_ft.errors import ConfigError


def history_of(source: str | Path) -> tuple[str, dict[str, list]]:
    """(the run's name, its history) from a run folder or a record file.

    Raises:
        ConfigError: neither a run folder (record.json or metrics.csv) nor a run record.
    """
    path = Path(source).expanduser()
    record = path / "record.json" if path.is_dir() else path
    if record.is_file():
        try:
            data = json.loads(read_text(record, "run record"))
            return str(data.get("name") or path.name), data["history"]
        except (ValueError, KeyError, TypeError):
            raise ConfigError(f"{record} is not a run record (a JSON object with a history).") from None
    if (path / "metrics.csv").is_file():  # a run still going, or stopped: its curve so far
        rows = list(csv.DictReader(read_text(path / "metrics.csv", "metrics file").splitlines()))
        loss = [{k: float(v) for k, v in r.items() if v and k != "minival_accuracy"} for r in rows if r.get("loss")]
        minival = [{"step": float(r["step"]), "accuracy": float(r["minival_accuracy"])} for r in rows
                   if r.get("minival_accuracy")]
        return path.name, {"loss": loss, "minival": minival}
    raise ConfigError(f"{source} is neither a run folder (with record.json or metrics.csv) nor a run record "
                      "(results/<name>.json).")


def plot_curve(source: str | Path, output: str | Path | None = None) -> Path:
    """Draw the learning curve of ``source`` (see :func:`history_of`) to ``output`` (default: curve.png in the run
    folder, or <record>.png beside a record); returns the PNG's path."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("mixer-ft plot needs matplotlib: pip install 'mixer_ft[plot]'.") from None
    name, history = history_of(source)
    loss: list[dict[str, Any]] = history.get("loss", [])
    if not loss:
        raise ConfigError(f"{source} has no logged steps yet (a line is logged every log_every steps).")
    steps = [e["step"] for e in loss]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
    left.plot(steps, [e["loss"] for e in loss], label="training loss", color="#1f77b4")
    left.set_xlabel("step")
    left.set_ylabel("loss")
    lr = left.twinx()
    lr.plot(steps, [e.get("lr", float("nan")) for e in loss], color="#7f7f7f", alpha=0.6, label="learning rate")
    lr.set_ylabel("learning rate")
    right.plot(steps, [100 * e.get("train_accuracy", float("nan")) for e in loss], label="training batches")
    minival = history.get("minival", [])
    if minival:
        right.plot([e["step"] for e in minival], [100 * e["accuracy"] for e in minival], "o-", label="minival")
    right.set_xlabel("step")
    right.set_ylabel("accuracy (%)")
    right.legend(loc="lower right")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.suptitle(name)
    path = Path(source).expanduser()
    out = Path(output) if output else path / "curve.png" if path.is_dir() else path.with_suffix(".png")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    if path.is_dir() and Manifest(path).exists() and out.resolve().is_relative_to(path.resolve()):
        Manifest(path).add(out)  # a run folder's own picture: --fresh takes it with the run
    return out


__all__ = ["history_of", "plot_curve"]
