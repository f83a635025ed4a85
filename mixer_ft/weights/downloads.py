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
from mixer_ft.bounded import Limits, open_url
from mixer_ft.errors import CheckpointError, SourceError, WeightsUnavailable
from mixer_ft.publish import public_url
from mixer_ft.settings import setting

# Set with HF_HUB_OFFLINE when this process found the Hub unreachable and put its clients offline:
# then other hosts (a mirror of Google's files) may still be downloaded from.
_PROBED = "MIXER_FT_HUB_UNREACHABLE"
WEIGHT_BYTES = 16 << 30  # the largest of Google's Mixer files (L/16, ImageNet-21k) is 1.2 GB


def offline() -> bool:
    """True when downloads are forbidden (``HF_HUB_OFFLINE`` or ``MIXER_FT_OFFLINE`` set by the user)."""
    if setting("MIXER_FT_OFFLINE"):
        return True
    return setting("HF_HUB_OFFLINE") and not setting(_PROBED)


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
    url = setting("HF_ENDPOINT")
    parts = urllib.parse.urlsplit(url)
    return url, parts.hostname or "huggingface.co", parts.port or (443 if parts.scheme == "https" else 80)


def offline_reason() -> str:
    """Why nothing can be downloaded from the Hub, in words."""
    if setting(_PROBED):
        return f"the Hub ({hub_endpoint()[0]}) cannot be reached"
    return "HF_HUB_OFFLINE=1 forbids downloading" if offline() else "the Hub could not be reached"


@functools.cache
def _unreachable(host: str, port: int) -> bool:
    return not network_reachable(host, port)


def hub_offline() -> bool:
    """Offline by setting, or because the Hub does not answer a connection within 3 s (probed once a
    process). Then huggingface_hub and datasets are put offline too, so that they fail at once with
    what is missing instead of retrying for half a minute."""
    if offline() or setting(_PROBED):
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
    return setting("MIXER_FT_CACHE")


def cached_path(url: str) -> Path:
    """The cache path of ``url``: host, then the URL's own path."""
    parts = urllib.parse.urlsplit(url)  # the host and path: never its user info (a password) or query (a token)
    host = (parts.hostname or "host") + (f"_{parts.port}" if parts.port else "")
    return cache_dir() / host / parts.path.lstrip("/")


def hub_cache() -> str:
    """The Hugging Face cache folder huggingface_hub reads (imported only when a message needs it)."""
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def hub_download_advice(repo_id: str, files: str = "model.safetensors config.json") -> str:
    """How to bring a Hub repo's files to a machine that cannot reach the Hub (one wording everywhere)."""
    return (f"on a machine with internet run `hf download {repo_id} {files}` (from {hub_endpoint()[0]}/{repo_id}) "
            f"and copy its cache folder models--{repo_id.replace('/', '--')} into {hub_cache()}")


def download(url: str) -> Path:
    """Return the cached copy of ``url``, downloading it first if needed.

    The body is read through the one bounded reader (:mod:`mixer_ft.bounded`: its size bounded, a deadline and
    a minimum rate, its Content-Length or chunked end verified, an HTML page refused) into a temporary file beside
    the target, checked against the MD5 where the server publishes one (Google Cloud Storage's ``x-goog-hash``),
    and only then renamed into place: an interrupted or corrupt download is never taken for a whole file.

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
            f"Fetch {public_url(url)} on a machine with internet and put it at {dest}."
        )

    def fetch(tmp: Path) -> None:  # raising here leaves nothing behind: atomic_write renames only on success
        with open_url(url, Limits.of(WEIGHT_BYTES)) as body, open(tmp, "wb") as out:  # bounded, its length checked
            goog_hash = dict(p.strip().split("=", 1) for p in body.headers.get_all("x-goog-hash") or []
                             for p in p.split(",") if "=" in p)
            md5 = hashlib.md5()
            while chunk := body.read(1 << 20):
                out.write(chunk)
                md5.update(chunk)
        if "md5" in goog_hash and base64.b64encode(md5.digest()).decode() != goog_hash["md5"]:
            raise CheckpointError(f"Download of {public_url(url)} does not match the MD5 the server published; try again.")

    try:
        atomic_write(dest, fetch)
    except SourceError as e:
        raise WeightsUnavailable(f"Could not download {e.source} ({e.why}). Fetch it on a machine with internet and put "
                                 f"it at {dest}.") from None
    except OSError as e:
        raise WeightsUnavailable(
            f"Could not download {public_url(url)} ({e}). Fetch it on a machine with internet and put it at {dest}."
        ) from None
    return dest


__all__ = ["cache_dir", "cached_path", "download", "hub_download_advice", "hub_endpoint", "hub_offline", "offline_reason",
           "network_reachable", "offline"]
