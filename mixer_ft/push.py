"""Sharing a model folder on the Hugging Face Hub, as it is (weights, config, model card)."""

from __future__ import annotations

from pathlib import Path

from mixer_ft.downloads import offline
from mixer_ft.errors import WeightsUnavailable
from mixer_ft.model_folder import model_folder


def _connection_errors() -> tuple[type[BaseException], ...]:
    """What a failed connection raises: requests' errors are OSErrors; httpx (huggingface_hub >= 1) has its own."""
    try:
        import httpx

        return (OSError, httpx.HTTPError)
    except ImportError:
        return (OSError,)


def push(path: str | Path, repo_id: str, *, private: bool = False) -> str:
    """Upload a model folder to the Hub repo ``repo_id`` (made if missing); returns the commit's URL.

    Raises:
        WeightsUnavailable: offline, the Hub unreachable, or the upload refused (with the Hub's reason).
    """
    folder = model_folder(path)
    if offline():
        raise WeightsUnavailable("Pushing needs the Hugging Face Hub, and HF_HUB_OFFLINE / MIXER_FT_OFFLINE forbid "
                                 "network access. Unset them on a machine with internet, then push again.")
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError

    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message="Upload a model made with mixer_ft")
    except LocalTokenNotFoundError:
        raise WeightsUnavailable("Pushing needs a Hugging Face token: run `hf auth login`, or set HF_TOKEN.") from None
    except HfHubHTTPError as e:
        raise WeightsUnavailable(f"The Hub refused the push to {repo_id}: {str(e).splitlines()[0]}") from None
    except _connection_errors() as e:
        raise WeightsUnavailable(f"Could not reach the Hugging Face Hub to push {repo_id} ({type(e).__name__}: "
                                 f"{e}). Check the network, then push again.") from None
    return info.commit_url


__all__ = ["model_folder", "push"]
