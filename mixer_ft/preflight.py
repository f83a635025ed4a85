"""Before a run builds anything: can its weights and its data be had (cached, local or downloadable)?

Everything missing is reported in one message, with where to put each file, in seconds rather than
after retries: offline (``HF_HUB_OFFLINE``) or with no network at all, nothing is downloadable.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

from mixer_ft.errors import WeightsUnavailable

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


def _hub_cached(repo_id: str, filename: str = "model.safetensors") -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, filename), str)


def missing_weights(upstream: str, variant: str | None, online: bool) -> str | None:
    """Why ``upstream``'s weights cannot be had, with where to put them; None when they can."""
    from mixer_ft.weights import UPSTREAMS, cached_path, upstream_sources

    if upstream == "none":
        return None
    if upstream in UPSTREAMS:
        if variant is None:
            return None  # the recipe check reports it
        hub, url = upstream_sources(upstream, variant)
        if online or _hub_cached(hub.removeprefix("hf-hub:")) or cached_path(url).is_file():
            return None
        repo = hub.removeprefix("hf-hub:")
        return (f"the {upstream} {variant} weights: run `hf download {repo} model.safetensors config.json` on a "
                f"machine with internet and copy its cache folder into this machine's Hugging Face cache, or put "
                f"Google's {url.rsplit('/', 1)[1]} at {cached_path(url)}")
    if upstream.startswith("hf-hub:"):
        repo = upstream.removeprefix("hf-hub:").partition("@")[0]
        return None if online or _hub_cached(repo) else (
            f"the weights {upstream}: not in the Hugging Face cache; run `hf download {repo} model.safetensors "
            "config.json` on a machine with internet and copy its cache folder here")
    if upstream.startswith(("http://", "https://")):
        return None if online or cached_path(upstream).is_file() else (
            f"the weights {upstream}: not cached; fetch it on a machine with internet and put it at "
            f"{cached_path(upstream)}")
    if upstream.startswith("timm:"):
        return None  # timm resolves its own places; its loader reports what it misses
    return None if Path(upstream).expanduser().exists() else f"the weights {upstream}: no such file or folder"


def missing_data(source: str, online: bool) -> str | None:
    """Why the data set ``source`` cannot be had, with where to put it; None when it can."""
    from mixer_ft.data import HUB_DATASETS

    repo = HUB_DATASETS[source][0] if source in HUB_DATASETS else source[3:] if source.startswith("hf:") else None
    if repo is None:
        return None if Path(source).expanduser().exists() else (
            f"the data set {source}: no such file or folder (--dataset takes {', '.join(HUB_DATASETS)}, "
            "hf:owner/name, an image folder or its archive, or a CIFAR python-version archive)")
    if online or Path(repo).exists() or _datasets_cached(repo):
        return None
    alt = (f"; or download cifar-{source[5:]}-python.tar.gz from the CIFAR page and pass --dataset "
           f"path/to/cifar-{source[5:]}-python.tar.gz") if source in HUB_DATASETS else ""
    return (f"the data set {source} ({repo}): not in the datasets cache; run `python -c \"import datasets; "
            f"datasets.load_dataset('{repo}')\"` on a machine with internet and copy its cache here{alt}")


def _datasets_cached(repo: str) -> bool:
    from datasets import config
    from huggingface_hub import constants

    org, _, name = repo.partition("/")
    return (Path(config.HF_DATASETS_CACHE) / f"{org}___{name}").is_dir() or \
        (Path(constants.HF_HUB_CACHE) / f"datasets--{org}--{name}").is_dir()


def offline() -> bool:
    """Offline by setting, or because the Hub cannot be reached; the latter sets HF_HUB_OFFLINE so that
    huggingface_hub and datasets fail at once instead of retrying."""
    from mixer_ft.weights import offline as told_offline

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
