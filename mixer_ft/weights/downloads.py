"""Where downloaded files live, whether downloading is allowed, and the download itself.

A leaf module (no torch, no Hub client at import): data, push and preflight ask it whether the
machine is offline and where a file belongs without loading any model code.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
import socket
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from mixer_ft.atomic import atomic_write
from mixer_ft.errors import CheckpointError, WeightsUnavailable

_TRUTHY = {"1", "true", "yes", "on"}
# Set with HF_HUB_OFFLINE when this process found the Hub unreachable and put its clients offline:
# then other hosts (a mirror of Google's files) may still be downloaded from.
_PROBED = "MIXER_FT_HUB_UNREACHABLE"


def offline() -> bool:
    """True when downloads are forbidden (``HF_HUB_OFFLINE`` or ``MIXER_FT_OFFLINE`` set by the user)."""
    if os.environ.get("MIXER_FT_OFFLINE", "").lower() in _TRUTHY:
        return True
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in _TRUTHY and _PROBED not in os.environ


def network_reachable(host: str, port: int, timeout: float = 3.0) -> bool:
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


def hub_endpoint() -> tuple[str, str, int]:
    """(address, host, port) of the Hugging Face Hub this process talks to (``HF_ENDPOINT``)."""
    url = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    parts = urllib.parse.urlsplit(url)
    return url, parts.hostname or "huggingface.co", parts.port or (443 if parts.scheme == "https" else 80)


def offline_reason() -> str:
    """Why nothing can be downloaded from the Hub, in words."""
    if _PROBED in os.environ:
        return f"the Hub ({hub_endpoint()[0]}) cannot be reached"
    return "HF_HUB_OFFLINE=1 forbids downloading" if offline() else "the Hub could not be reached"


@functools.cache
def _unreachable(host: str, port: int) -> bool:
    return not network_reachable(host, port)


def hub_offline() -> bool:
    """Offline by setting, or because the Hub does not answer a connection within 3 s (probed once a
    process). Then huggingface_hub and datasets are put offline too, so that they fail at once with
    what is missing instead of retrying for half a minute."""
    if offline() or _PROBED in os.environ:
        return True
    if not _unreachable(*hub_endpoint()[1:]):
        return False
    os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = os.environ[_PROBED] = "1"
    for module, names in (("huggingface_hub.constants", ("HF_HUB_OFFLINE",)),
                          ("datasets.config", ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))):
        if module in sys.modules:  # imported already: their constants were read from the environment then
            for name in names:
                setattr(sys.modules[module], name, True)
    return True


def url_reachable(url: str) -> bool:
    """Whether ``url`` can be downloaded now: downloads are not switched off, and its own host answers (probed once
    a process). A URL does not depend on the Hub: a machine that cannot reach the Hub may reach a mirror."""
    if offline():
        return False
    parts = urllib.parse.urlsplit(url)
    return not _unreachable(parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))


def cache_dir() -> Path:
    """Where downloaded .npz files and decoded data live: ``$MIXER_FT_CACHE`` or ``~/.cache/mixer_ft``."""
    return Path(os.environ.get("MIXER_FT_CACHE", Path.home() / ".cache" / "mixer_ft")).expanduser()


def cached_path(url: str) -> Path:
    """The cache path of ``url``: host, then the URL's own path."""
    parts = urllib.parse.urlsplit(url)
    return cache_dir() / parts.netloc.replace(":", "_") / parts.path.lstrip("/")


def hub_cache() -> str:
    """The Hugging Face cache folder huggingface_hub reads (imported only when a message needs it)."""
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def hub_download_advice(repo_id: str, files: str = "model.safetensors config.json") -> str:
    """How to bring a Hub repo's files to a machine that cannot reach the Hub (one wording everywhere)."""
    return (f"on a machine with internet run `hf download {repo_id} {files}` (from {hub_endpoint()[0]}/{repo_id}) "
            f"and copy its cache folder models--{repo_id.replace('/', '--')} into {hub_cache()}")


def download(url: str, *, timeout: float = 60.0) -> Path:
    """Return the cached copy of ``url``, downloading it first if needed.

    The body goes to a temporary file beside the target, is checked against the
    Content-Length and, where the server publishes one (Google Cloud Storage's
    ``x-goog-hash``), the MD5, and only then renamed into place: an interrupted or corrupt
    download is never taken for a whole file.

    Raises:
        WeightsUnavailable: offline, or the download failed (with where to put the file by hand).
        CheckpointError: the body does not match the MD5 the server published.
    """
    dest = cached_path(url)
    if dest.is_file():
        return dest
    if offline():
        raise WeightsUnavailable(
            f"not cached, and downloads are off (HF_HUB_OFFLINE / MIXER_FT_OFFLINE). "
            f"Fetch {url} on a machine with internet and put it at {dest}."
        )

    def fetch(tmp: Path) -> None:  # raising here leaves nothing behind: atomic_write renames only on success
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(tmp, "wb") as out:
            expected_size = resp.headers.get("Content-Length")
            goog_hash = dict(p.strip().split("=", 1) for p in resp.headers.get_all("x-goog-hash") or []
                             for p in p.split(",") if "=" in p)
            md5, size = hashlib.md5(), 0
            while chunk := resp.read(1 << 20):
                out.write(chunk)
                md5.update(chunk)
                size += len(chunk)
        if expected_size is not None and size != int(expected_size):
            raise WeightsUnavailable(f"Download of {url} stopped after {size} of {expected_size} bytes; try again.")
        if "md5" in goog_hash and base64.b64encode(md5.digest()).decode() != goog_hash["md5"]:
            raise CheckpointError(f"Download of {url} does not match the MD5 the server published; try again.")

    try:
        atomic_write(dest, fetch)
    except (urllib.error.URLError, OSError) as e:
        raise WeightsUnavailable(
            f"Could not download {url} ({e}). Fetch it on a machine with internet and put it at {dest}."
        ) from None
    return dest


__all__ = ["cache_dir", "cached_path", "download", "hub_download_advice", "hub_endpoint", "hub_offline", "offline_reason",
           "network_reachable", "offline"]
