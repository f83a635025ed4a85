"""Hyperparameters chosen the paper's way: a small grid, every point an ordinary run, the choice made
on minival alone, and the chosen point's test accuracy reported (never looked at for the choice).

``mixer-ft sweep --recipe R --grid lr=0.001,0.003,0.01,0.03`` runs each point as ``<name>_<key><value>``
(its own run folder and record, so an interrupted sweep resumes point by point) and writes the sweep
record ``results/sweep_<name>.json`` (``kind = "sweep"``), which ``mixer-ft table`` lists apart.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

from mixer_ft.atomic import json_text
from mixer_ft.errors import ConfigError, MixerFtError, RunStopped
from mixer_ft.text import get_logger
from mixer_ft.train.recipe import Recipe, parse_override, safe_name

log = get_logger(__name__)
# Keys a sweep may not vary: they say what is measured and where it goes, not how it is trained.
FIXED = ("dataset", "name", "output_dir", "results_dir", "image_column", "label_column", "val_fraction",
         "test_fraction")


def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    """``["lr=0.001,0.003", "steps=500"]`` -> ``{"lr": [0.001, 0.003], "steps": [500]}`` (values read as TOML)."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or not values.strip():
            raise ConfigError(f"--grid takes key=v1,v2,...; got {item!r}.")
        if key in FIXED or key.split(".")[0] in FIXED:
            raise ConfigError(f"A sweep cannot vary {key}: it fixes what is measured. Vary a training key (lr, steps, ...).")
        if key in grid:
            raise ConfigError(f"--grid names {key} twice.")
        grid[key] = [parse_override(f"{key}={v.strip()}")[1] for v in values.split(",") if v.strip()]
        if not grid[key]:
            raise ConfigError(f"--grid {key} has no values.")
    if not grid:
        raise ConfigError("A sweep needs at least one --grid key=v1,v2,...")
    return grid


def points(base: Recipe, grid: dict[str, list[Any]]) -> list[tuple[dict[str, Any], Recipe]]:
    """Every combination of the grid as (its settings, its recipe), each named and foldered apart."""
    out = []
    for values in itertools.product(*grid.values()):
        settings = dict(zip(grid, values))
        changes: dict[str, Any] = {}
        for key, value in settings.items():
            head, _, sub = key.partition(".")
            changes[head] = {**getattr(base, head), sub: value} if sub else value
        tag = "_".join(f"{k.split('.')[-1]}{v}" for k, v in settings.items())
        name = safe_name(f"{base.run_name}_{tag}")
        folder = Path(base.output_dir or "runs") / name  # each point its own run folder, under the base's
        out.append((settings, base.replace(**changes, name=name, output_dir=str(folder))))
    return out


def run_sweep(base: Recipe, grid: dict[str, list[Any]]) -> dict[str, Any]:
    """Run every point (resuming finished or interrupted ones), choose by minival, write the sweep record."""
    from mixer_ft.train.loop import finetune
    from mixer_ft.train.records import write_record

    results = []
    for settings, recipe in points(base, grid):
        try:
            record = finetune(recipe)
            results.append({"settings": settings, "name": recipe.run_name, "minival_accuracy": record.get("minival_accuracy"),
                            "minival_images": record.get("minival_images"), "test_accuracy": record.get("test_accuracy"),
                            "test_images": record.get("test_images"), "failed": None})
        except RunStopped:
            raise  # Ctrl-C or a preemption stops the sweep; the same command resumes it
        except MixerFtError as e:  # this point cannot run (it diverged, say): recorded, the sweep goes on
            log.warning("sweep point %s failed: %s", recipe.run_name, e)
            results.append({"settings": settings, "name": recipe.run_name, "minival_accuracy": None,
                            "minival_images": None, "test_accuracy": None, "test_images": None, "failed": str(e)})
        finally:
            _reset_accelerate()
    from accelerate import PartialState

    if not PartialState().is_main_process:  # under `accelerate launch` the main process reports and records
        return {}
    done = [r for r in results if r["minival_accuracy"] is not None]
    if not done:
        raise ConfigError("Every point of the sweep failed; see the warnings above.")
    best = max(done, key=lambda r: r["minival_accuracy"])  # minival only: test never chooses
    record = {"kind": "sweep", "name": f"sweep_{base.run_name}", "base": base.to_dict(), "grid": grid,
              "points": results, "chosen": best["settings"], "chosen_name": best["name"],
              "minival_accuracy": best["minival_accuracy"], "test_accuracy": best["test_accuracy"],
              "test_images": best["test_images"], "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    record["file"] = str(write_record(base.results_dir, record))
    return record


def _reset_accelerate() -> None:
    """Each point builds its own Accelerator; the process group (several processes) stays."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()


def summary(record: dict[str, Any]) -> str:
    """The sweep as lines: every point's minival and test, the choice marked."""
    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.2f}%"
    lines = [f"{'point':<40} {'minival':>8} {'test':>8}"]
    for p in record["points"]:
        mark = "  <- chosen on minival" if p["settings"] == record["chosen"] else ""
        label = json_text(p["settings"]) if not p["failed"] else json_text(p["settings"]) + " (failed)"
        lines.append(f"{label:<40} {pct(p['minival_accuracy']):>8} {pct(p['test_accuracy']):>8}{mark}")
    return "\n".join(lines) + "\n"


__all__ = ["FIXED", "parse_grid", "points", "run_sweep", "summary"]
