"""What a run publishes, filtered in one place: the model folder's ``config.json`` and card, the run record, and
so whatever ``mixer-ft push`` uploads and a results folder shared in git.

- A URL loses its user info (``user:password@``), its query (a signed URL's token) and its fragment: it is kept
  as ``scheme://host[:port]/path``. Every string published is searched for URLs, wherever it sits.
- A local path, where a model folder names its weights or data, is only its last name (``local:photos``): never
  the machine's folders. A run record keeps its paths (it is repeated from them), URLs filtered as above.
- Names printed while reading (a shard's URL in a warning or an error) are filtered the same way.

No file content reaches what is published but the data's own class names, and those are read only from inside
the data folder (:mod:`mixer_ft.data.class_names`).
"""

from __future__ import annotations

import re
import urllib.parse
from pathlib import Path
from typing import Any

_URL = re.compile(r"\b(?:https?|file|s3|gs)://[^\s\"'<>]+", re.IGNORECASE)
_NAMES = ("in1k", "in21k", "none", "cifar10", "cifar100")  # names, not places: published as they are
_PUBLIC_PREFIXES = ("hf-hub:", "timm:", "hf:")


def public_url(url: str) -> str:
    """``url`` without user info, query or fragment: ``https://host:8080/path/train-{0..9}.tar``."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:  # an unparseable port or host: keep only the scheme and what cannot carry a secret
        return url.split("://", 1)[0] + "://(unreadable address)"
    netloc = (f"[{host}]" if ":" in host else host) + (f":{port}" if port else "")
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def public_text(text: str) -> str:
    """``text`` with every URL in it made :func:`public_url`."""
    return _URL.sub(lambda m: public_url(m.group()), text)


def public_source(source: Any) -> Any:
    """A weight or data source as a model folder may publish it: names and Hub ids as they are, a URL filtered
    (:func:`public_url`), a local path only by its file or folder name (``local:photos``)."""
    if not isinstance(source, str) or source in _NAMES or source.startswith(_PUBLIC_PREFIXES):
        return source
    if "://" in source:
        return public_text(source)
    path = Path(source)
    name = path.parent.name if path.name == "model" and path.parent.name else path.name
    return f"local:{name or 'data'}"


def published(value: Any) -> Any:
    """``value`` (a record, a config, a provenance: dicts, lists, strings, numbers) with every string in it, keys
    included, made :func:`public_text`."""
    if isinstance(value, str):
        return public_text(value)
    if isinstance(value, dict):
        return {published(k): published(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [published(v) for v in value]
    return value


__all__ = ["public_source", "public_text", "public_url", "published"]
