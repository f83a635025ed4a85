"""Before a run builds anything: can its weights and its data be had (cached, local or downloadable)?

Each kind of weight source (:mod:`mixer_ft.weights.sources`) and of data source (:mod:`mixer_ft.data.sources`)
says what it misses on this machine; this module asks both registries and reports all at once.

Everything missing is reported in one message, with where to put each file, in seconds rather than
after retries: offline (``HF_HUB_OFFLINE``) or with no network at all, nothing is downloadable.
"""

from __future__ import annotations

from mixer_ft.data.sources import missing_data
from mixer_ft.errors import WeightsUnavailable
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


__all__ = ["check", "missing_data", "missing_weights"]
