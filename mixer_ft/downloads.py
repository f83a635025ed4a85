"""Where downloaded files live, whether downloading is allowed, and the download itself.

A leaf module (no torch, no Hub client at import): data, push and preflight ask it whether the
machine is offline and where a file belongs without loading any model code.
"""

from __future__ import annotations

import base64
import hashlib
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from mixer_ft.atomic import atomic_write
from mixer_ft.errors import CheckpointError, WeightsUnavailable


def offline() -> bool:
    """True when downloads are forbidden (``HF_HUB_OFFLINE`` or ``MIXER_FT_OFFLINE`` set)."""
    truthy = {"1", "true", "yes", "on"}
    return any(os.environ.get(k, "").lower() in truthy for k in ("HF_HUB_OFFLINE", "MIXER_FT_OFFLINE"))


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
    return (f"on a machine with internet run `hf download {repo_id} {files}` and copy its cache folder "
            f"models--{repo_id.replace('/', '--')} into {hub_cache()}")


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


__all__ = ["cache_dir", "cached_path", "download", "hub_download_advice", "offline"]
