"""A run's learning curve as a file any tool opens: ``metrics.csv`` in its run folder, a row per log line and per
minival score (step, lr, loss, train accuracy, images/s, minival accuracy, time), written whole from the run's
history each time it grows, so a resumed run's file is its history and never holds a row twice."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from mixer_ft.atomic import atomic_write_text

COLUMNS = ("step", "lr", "loss", "train_accuracy", "images_per_s", "minival_accuracy", "time")
FILE = "metrics.csv"


def metrics_csv(history: dict[str, list]) -> str:
    """``history`` (a run's ``loss`` and ``minival`` lists) as CSV: a row a step, in step order."""
    rows: dict[int, dict[str, Any]] = {}
    for entry in history.get("loss", []):
        rows.setdefault(int(entry["step"]), {}).update({k: entry.get(k) for k in COLUMNS if k in entry})
    for entry in history.get("minival", []):
        rows.setdefault(int(entry["step"]), {})["minival_accuracy"] = entry.get("accuracy")
    out = io.StringIO()
    writer = csv.DictWriter(out, COLUMNS, lineterminator="\n")
    writer.writeheader()
    for step in sorted(rows):
        writer.writerow({"step": step} | {k: ("" if v is None else v) for k, v in rows[step].items() if k != "step"})
    return out.getvalue()


def write_metrics(folder: Path, history: dict[str, list]) -> Path:
    """Write ``folder``/metrics.csv from ``history`` (atomically); returns its path."""
    return atomic_write_text(folder / FILE, metrics_csv(history))


__all__ = ["COLUMNS", "FILE", "metrics_csv", "write_metrics"]
