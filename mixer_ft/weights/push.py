"""Sharing a model folder on the Hugging Face Hub, as it is (weights, config, model card).

Every failure is one message: offline, no token, an invalid repo id, a refusal (with the Hub's own
reason), a connection that fails or a server that stops answering (each request times out, and the
whole push ends within :data:`DEADLINE_S`).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from mixer_ft.errors import ConfigError, WeightsUnavailable
from mixer_ft.gate import special
from mixer_ft.settings import setting
from mixer_ft.weights.downloads import offline
from mixer_ft.weights.model_folder import model_folder

# The whole push, retries included: a stalled server cannot hold the command longer ($MIXER_FT_PUSH_DEADLINE).
DEADLINE_S = 60.0  # MIXER_FT_PUSH_DEADLINE's default (settings)
_TIMEOUT = {"timeout": 20.0, "connect": 10.0}  # each request


def files_to_push(path: str | Path) -> list[Path]:
    """The files a push uploads: every regular file in the model folder but hidden ones.

    Raises:
        ConfigError: a link in the folder that leads outside it (its target would be uploaded), or a FIFO,
            device or socket; the folder is pushed only as it really is.
    """
    folder = model_folder(path)
    inside, files, refused = folder.resolve(), [], []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if any(x.startswith(".") for x in rel.parts):
            continue
        if p.is_symlink() and not p.resolve().is_relative_to(inside):
            refused.append(f"{rel} (a link to {p.resolve()})")
        elif (kind := special(p)) is not None:
            refused.append(f"{rel} ({kind})")
        elif p.is_file():
            files.append(p)
    if refused:
        raise ConfigError(f"{folder} holds what a push must not upload: {', '.join(refused[:5])}. Copy the files "
                          "themselves into the folder, or remove these, then push again.")
    return files


def _network_error(e: BaseException) -> bool:
    """A failed connection, from any HTTP client huggingface_hub may use (requests, httpx, httpx2)."""
    return isinstance(e, OSError) or type(e).__module__.split(".")[0] in ("httpx", "httpx2", "httpcore",
                                                                            "httpcore2", "requests", "urllib3")


def _reason(e: Any) -> str:
    """The Hub's own reason for refusing, where it gave one."""
    message = getattr(e, "server_message", None) or str(e)
    return " ".join(str(message).split())[:300]


def _bounded_client() -> None:
    """Make huggingface_hub's HTTP client time out (its default waits forever for an answer)."""
    import huggingface_hub
    from huggingface_hub.utils import _http

    try:
        import httpx2 as httpx
    except ImportError:  # huggingface_hub before 2.0 speaks httpx (or requests, which has no factory)
        try:
            import httpx
        except ImportError:
            return
    factory = getattr(huggingface_hub, "set_client_factory", None)
    if factory is None:
        return
    hook = getattr(_http, "hf_request_event_hook", None)
    factory(lambda: httpx.Client(event_hooks={"request": [hook]} if hook else {}, follow_redirects=True,
                                 timeout=httpx.Timeout(_TIMEOUT["timeout"], connect=_TIMEOUT["connect"])))


def push(path: str | Path, repo_id: str, *, private: bool = False) -> str:
    """Upload a model folder to the Hub repo ``repo_id`` (made if missing); returns the commit's URL.

    Raises:
        ConfigError: not a model folder, or not a valid repo id.
        WeightsUnavailable: offline, the Hub unreachable or silent, or the upload refused (with the Hub's reason).
    """
    folder = model_folder(path)
    files = files_to_push(folder)  # before anything goes out: a link leading outside the folder is refused here
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise ConfigError(f"{repo_id!r} is not a Hub repository id (owner/name): {_reason(e)}") from None
    if offline():
        raise WeightsUnavailable("Pushing needs the Hugging Face Hub, and HF_HUB_OFFLINE / MIXER_FT_OFFLINE forbid "
                                 "network access. Unset them on a machine with internet, then push again.")
    _bounded_client()
    outcome: dict[str, Any] = {}

    def upload() -> None:
        from huggingface_hub import HfApi

        try:
            api = HfApi()
            api.create_repo(repo_id, private=private, exist_ok=True)
            outcome["url"] = api.upload_folder(repo_id=repo_id, folder_path=folder, allow_patterns=[
                str(p.relative_to(folder)) for p in files],
                commit_message="Upload a model made with mixer_ft").commit_url
        except BaseException as e:  # noqa: BLE001 - reported by the caller's thread
            outcome["error"] = e

    worker = threading.Thread(target=upload, daemon=True)  # a daemon: a server that never answers cannot keep us
    worker.start()
    deadline = setting("MIXER_FT_PUSH_DEADLINE")
    worker.join(deadline)
    if worker.is_alive():
        raise WeightsUnavailable(f"The Hugging Face Hub did not finish the push to {repo_id} within {deadline:g} s; "
                                 "check the network (or HF_ENDPOINT), then push again.")
    if "error" in outcome:
        raise _push_error(outcome["error"], repo_id) from None
    return outcome["url"]


def _push_error(e: BaseException, repo_id: str) -> BaseException:
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError

    if isinstance(e, LocalTokenNotFoundError):
        return WeightsUnavailable("Pushing needs a Hugging Face token: run `hf auth login`, or set HF_TOKEN.")
    if isinstance(e, HfHubHTTPError):
        status = getattr(getattr(e, "response", None), "status_code", None)
        return WeightsUnavailable(f"The Hub refused the push to {repo_id}{f' (HTTP {status})' if status else ''}: "
                                  f"{_reason(e)}")
    if _network_error(e):
        return WeightsUnavailable(f"Could not reach the Hugging Face Hub to push {repo_id} ({type(e).__name__}: "
                                  f"{_reason(e)}). Check the network, then push again.")
    return e


__all__ = ["DEADLINE_S", "files_to_push", "push"]
