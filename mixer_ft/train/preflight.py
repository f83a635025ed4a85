"""Before a run builds anything: can its weights and its data be had (cached, local or downloadable), can its
folders be written, and can this machine do what its recipe asks?

Each kind of weight source (:mod:`mixer_ft.weights.sources`) and of data source (:mod:`mixer_ft.data.sources`)
says what it misses on this machine; this module asks both registries and reports all at once.

Everything missing is reported in one message, with where to put each file, in seconds rather than
after retries: offline (``HF_HUB_OFFLINE``) or with no network at all, nothing is downloadable.
"""

from __future__ import annotations

from pathlib import Path

from mixer_ft.data.sources import missing_data
from mixer_ft.errors import ConfigError, WeightsUnavailable
from mixer_ft.weights.downloads import hub_offline
from mixer_ft.weights.sources import missing_weights


def check(upstream: str, variant: str | None, dataset: str, tracker: str | None = None) -> None:
    """Raise one error naming everything a run needs and cannot have: its weights, its data, its tracker.

    Raises:
        WeightsUnavailable: the weights, the data, or both, each with where to put it (and the tracker's problem).
        ConfigError: only the tracker is missing or unknown.
    """
    online = not hub_offline()  # offline by setting, or the Hub did not answer (probed once)
    missing = [m for m in (missing_weights(upstream, variant, online), missing_data(dataset, online)) if m]
    problem = tracker_problem(tracker)
    if missing:
        why = "" if online else " (offline: HF_HUB_OFFLINE is set, or the Hugging Face Hub cannot be reached)"
        raise WeightsUnavailable(f"This run cannot start{why}; missing:\n" + "\n".join(f"- {m}" for m in missing)
                                 + (f"\n- {problem}" if problem else ""))
    if problem:
        raise ConfigError(problem[0].upper() + problem[1:])


# Accelerate's trackers and the modules each needs (any one of them)
TRACKER_MODULES = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "comet_ml": ("comet_ml",),
                   "aim": ("aim",), "mlflow": ("mlflow",), "clearml": ("clearml",), "dvclive": ("dvclive",),
                   "swanlab": ("swanlab",), "trackio": ("trackio",)}


def tracker_problem(tracker: str | None) -> str | None:
    """What stops ``tracker`` logging on this machine (unknown, or its package not installed); None when nothing
    does. Asked before the run: a tracker that is not installed would log nothing and exit 0."""
    import importlib.util

    if tracker is None:
        return None
    if tracker not in TRACKER_MODULES:
        return f"the tracker {tracker!r}: unknown; Accelerate knows {', '.join(sorted(TRACKER_MODULES))}"
    if not any(importlib.util.find_spec(m) for m in TRACKER_MODULES[tracker]):
        extra = " (pip install 'mixer_ft[tensorboard]')" if tracker == "tensorboard" else ""
        return (f"the tracker {tracker}: its package is not installed here: pip install {TRACKER_MODULES[tracker][0]}"
                f"{extra}, or leave tracker unset (every run writes metrics.csv)")
    return None


def writable(folder: Path, what: str) -> None:
    """Make ``folder`` and check a file can be written there, before any work (else a ConfigError)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"Cannot write to the {what} {folder} ({e.strerror or e}). Choose another folder.") from None


def recipe_needs(tracker: str | None, global_batch: int, num_processes: int) -> int:
    """What a recipe asks of this machine (its tracker, its global batch over the processes), checked before any
    work; returns the per-process batch."""
    if problem := tracker_problem(tracker):
        raise ConfigError(problem[0].upper() + problem[1:] + ".")
    if global_batch % num_processes:
        raise ConfigError(f"global batch {global_batch} cannot be split over {num_processes} processes; "
                          f"use a multiple of {num_processes}.")
    return global_batch // num_processes


__all__ = ["TRACKER_MODULES", "check", "missing_data", "missing_weights", "recipe_needs", "tracker_problem", "writable"]
