"""Before a run builds anything: can its weights and its data be had (cached, local or downloadable)?

Each kind of weight source (:mod:`mixer_ft.sources`) and of data source (:mod:`mixer_ft.data_sources`)
says what it misses on this machine; this module asks both registries and reports all at once.

Everything missing is reported in one message, with where to put each file, in seconds rather than
after retries: offline (``HF_HUB_OFFLINE``) or with no network at all, nothing is downloadable.
"""

from __future__ import annotations

import os
import socket
import threading

from mixer_ft.data_sources import missing_data
from mixer_ft.downloads import offline as told_offline
from mixer_ft.errors import WeightsUnavailable
from mixer_ft.sources import missing_weights

_HUB_HOST = "huggingface.co"


def network_reachable(host: str = _HUB_HOST, port: int = 443, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``host`` opens within ``timeout`` seconds (name lookup included)."""
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)  # a name lookup has no timeout of its own
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def offline() -> bool:
    """Offline by setting, or because the Hub cannot be reached; the latter sets HF_HUB_OFFLINE so that
    huggingface_hub and datasets fail at once instead of retrying."""
    if told_offline():
        return True
    if network_reachable():
        return False
    os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"
    return True


def check(upstream: str, variant: str | None, dataset: str) -> None:
    """Raise one error naming everything a run needs and cannot have.

    Raises:
        WeightsUnavailable: the weights, the data, or both, each with where to put it.
    """
    online = not offline()
    missing = [m for m in (missing_weights(upstream, variant, online), missing_data(dataset, online)) if m]
    if missing:
        why = "" if online else " (offline: HF_HUB_OFFLINE is set, or the Hugging Face Hub cannot be reached)"
        raise WeightsUnavailable(f"This run cannot start{why}; missing:\n" + "\n".join(f"- {m}" for m in missing))


__all__ = ["check", "missing_data", "missing_weights", "network_reachable"]
