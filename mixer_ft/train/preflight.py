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


def check(upstream: str, variant: str | None, dataset: str) -> None:
    """Raise one error naming everything a run needs and cannot have.

    Raises:
        WeightsUnavailable: the weights, the data, or both, each with where to put it.
    """
    online = not hub_offline()  # offline by setting, or the Hub did not answer (probed once)
    missing = [m for m in (missing_weights(upstream, variant, online), missing_data(dataset, online)) if m]
    if missing:
        why = "" if online else " (offline: HF_HUB_OFFLINE is set, or the Hugging Face Hub cannot be reached)"
        raise WeightsUnavailable(f"This run cannot start{why}; missing:\n" + "\n".join(f"- {m}" for m in missing))


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
    from accelerate.utils import LoggerType

    trackers = sorted(t.value for t in LoggerType if t.value != "all")
    if tracker is not None and tracker not in trackers:
        raise ConfigError(f"Unknown tracker {tracker!r}; Accelerate knows {', '.join(trackers)}.")
    if tracker == "tensorboard":
        import importlib.util

        if not (importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX")):
            raise ConfigError("tracker = \"tensorboard\" needs TensorBoard: pip install 'mixer_ft[tensorboard]'.")
    if global_batch % num_processes:
        raise ConfigError(f"global batch {global_batch} cannot be split over {num_processes} processes; "
                          f"use a multiple of {num_processes}.")
    return global_batch // num_processes


__all__ = ["check", "missing_data", "missing_weights", "recipe_needs", "writable"]
