"""Where weights come from: one class per kind of source, and the registry that picks one.

A *source* string is one of:

- ``in1k`` / ``in21k``: Google's upstream weights for a variant; resolved to an ordered list
  of places (the Hub copy, then Google's .npz), see :func:`upstream_sources`;
- ``hf-hub:owner/name[@revision]``: a ``model.safetensors`` on the Hugging Face Hub;
- ``timm:model.tag``: ``timm.create_model(model.tag, pretrained=True)``;
- an ``http(s)://`` URL of a Google ``.npz`` (or a ``.safetensors``), downloaded into the cache;
- a local ``.npz``, ``.safetensors``, ``.pth``/``.pt``/``.bin`` file, or a folder holding one
  with its ``config.json`` (a model folder, :mod:`mixer_ft.weights.model_folder`), or a run folder.

Each kind answers three questions: is this string mine (:meth:`WeightSource.matches`), what is
missing for it on this machine (:meth:`WeightSource.missing`, asked by :mod:`mixer_ft.train.preflight`
before a run builds anything), and the weights themselves (:meth:`WeightSource.load`). A new kind
of source is one class here plus one entry in :data:`WEIGHT_SOURCES`.

GELU flavour: Google's weights were trained in Flax, whose ``gelu`` is the tanh approximation,
so they get ``gelu="tanh"`` (also through timm or the Hub, tags ``goog_*``). Weights trained in
PyTorch (timm's ``miil_*``, a bare state dict) get ``"exact"``, timm's GELU. A folder written by
this toolkit carries its own.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mixer_ft.errors import CheckpointError, ConfigError, WeightsUnavailable
from mixer_ft.gate import check_path, looks_local, no_such
from mixer_ft.model.config import VARIANTS, canonical_variant, timm_name
from mixer_ft.publish import public_url
from mixer_ft.weights.downloads import cached_path, download, hub_download_advice, hub_offline, offline_reason, url_reachable

if TYPE_CHECKING:
    from mixer_ft.weights.weight_file import Checkpoint

UPSTREAMS = ("in1k", "in21k")
# Google's folder and timm's tag for each upstream. timm's "goog_in21k_ft_in1k" tag holds
# Google's ImageNet-1k-only weights (timm PR #651, confirmed by a Mixer author), so it is the
# Hub copy of "in1k", not a 21k model fine-tuned on 1k.
_UPSTREAM_PLACES = {"in1k": ("imagenet1k", "goog_in21k_ft_in1k"), "in21k": ("imagenet21k", "goog_in21k")}
_UPSTREAM_VARIANTS = ("B/16", "L/16")  # the only variants Google published in these folders
GOOGLE_BASE_URL = "https://storage.googleapis.com/mixer_models"  # MIXER_FT_GOOGLE_BASE_URL's default (settings)


def upstream_sources(upstream: str, variant: str) -> list[str]:
    """Ordered places holding Google's ``upstream`` weights for ``variant``: the Hub, then GCS.

    Raises:
        ConfigError: unknown upstream, or a variant Google did not publish for it.
    """
    if upstream not in UPSTREAMS:
        raise ConfigError(f"Unknown upstream {upstream!r}; choose one of {', '.join(UPSTREAMS)}.")
    v = canonical_variant(variant)
    if v not in _UPSTREAM_VARIANTS:
        raise ConfigError(
            f"Google published {upstream} Mixer weights for {' and '.join(_UPSTREAM_VARIANTS)} only, "
            f"not {v}. Pick one of those, or train {v} from scratch (no pretrained weights)."
        )
    folder, tag = _UPSTREAM_PLACES[upstream]
    from mixer_ft.settings import setting

    base = setting("MIXER_FT_GOOGLE_BASE_URL")
    return [f"hf-hub:timm/{timm_name(v)}.{tag}", f"{base}/{folder}/Mixer-{v.replace('/', '_')}.npz"]


def _hub_cached(repo_id: str, filename: str = "model.safetensors") -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, filename), str)


class WeightSource:
    """One kind of weight source. Subclasses answer for the strings they match."""

    def matches(self, source: str) -> bool:
        """Whether ``source`` is this kind's."""
        raise NotImplementedError

    def missing(self, source: str, variant: str | None, online: bool) -> str | None:
        """Why the weights cannot be had on this machine, with where to put them; None when they can."""
        return None

    def load(self, source: str, variant: str | None) -> Checkpoint:
        """The weights, as a :class:`~mixer_ft.weights.weight_file.Checkpoint`."""
        raise NotImplementedError


class Upstream(WeightSource):
    """``in1k``/``in21k``: the Hub copy first, then Google's .npz; only unavailability moves on."""

    def matches(self, source: str) -> bool:
        return source in UPSTREAMS

    def missing(self, source: str, variant: str | None, online: bool) -> str | None:
        if variant is None:
            return None  # the recipe check reports it
        hub, url = upstream_sources(source, variant)
        repo = hub.removeprefix("hf-hub:")
        if online or _hub_cached(repo) or cached_path(url).is_file() or url_reachable(url):  # the Hub, else Google
            return None
        return (f"the {source} {variant} weights: {hub_download_advice(repo)}, or put Google's "
                f"{url.rsplit('/', 1)[1]} at {cached_path(url)}")

    def load(self, source: str, variant: str | None) -> Checkpoint:
        if variant is None:
            raise ConfigError(f"Upstream {source!r} needs a model variant too, e.g. --model B/16.")
        failures: dict[str, str] = {}
        for place in upstream_sources(source, variant):
            try:
                return source_of(place).load(place, variant)
            except WeightsUnavailable as e:
                failures[place] = str(e)
        raise WeightsUnavailable(
            f"The {source} weights could not be found in any of their places:\n"
            + "\n".join(f"- {place}: {why}" for place, why in failures.items())
        )


class HubRepo(WeightSource):
    """``hf-hub:owner/name[@revision]``: its model.safetensors and, for preprocessing, its config.json."""

    def matches(self, source: str) -> bool:
        return source.startswith("hf-hub:")

    def missing(self, source: str, variant: str | None, online: bool) -> str | None:
        repo = source.removeprefix("hf-hub:").partition("@")[0]
        return None if online or _hub_cached(repo) else (
            f"the weights {source}: not in the Hugging Face cache; {hub_download_advice(repo)}")

    def load(self, source: str, variant: str | None) -> Checkpoint:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError

        from mixer_ft.weights.weight_file import Checkpoint, apply_metadata, read_safetensors

        repo_id, _, revision = source.removeprefix("hf-hub:").partition("@")
        hub_offline()  # no Hub: huggingface_hub fails at once instead of retrying
        try:
            path = hf_hub_download(repo_id, "model.safetensors", revision=revision or None)
        except (RepositoryNotFoundError, EntryNotFoundError) as e:
            if isinstance(e, FileNotFoundError):  # LocalEntryNotFoundError: not cached, can't download
                why = offline_reason()
                raise WeightsUnavailable(f"{repo_id}/model.safetensors is not in the Hugging Face cache and {why}. "
                                         f"To use it offline, {hub_download_advice(repo_id)}.") from None
            raise CheckpointError(f"The Hub has no {repo_id} with a model.safetensors: {e}") from None
        except (HfHubHTTPError, OSError) as e:
            raise WeightsUnavailable(f"Downloading {repo_id}/model.safetensors failed: {e}") from None
        meta: dict[str, Any] = {}
        try:
            meta = json.loads(Path(hf_hub_download(repo_id, "config.json", revision=revision or None)).read_text())
        except Exception:  # noqa: BLE001 - the config only adds preprocessing; the weights suffice
            pass
        ckpt = Checkpoint(read_safetensors(Path(path)), source, str(path))
        apply_metadata(ckpt, meta, tag=repo_id)
        return ckpt


class Timm(WeightSource):
    """``timm:model.tag``: whatever timm's pretrained config points at (it resolves its own places)."""

    def matches(self, source: str) -> bool:
        return source.startswith("timm:")

    def load(self, source: str, variant: str | None) -> Checkpoint:
        import timm
        from timm.models.mlp_mixer import MixerBlock as TimmMixerBlock
        from timm.models.mlp_mixer import MlpMixer as TimmMlpMixer

        from mixer_ft.weights.weight_file import Checkpoint, apply_metadata

        name = source.removeprefix("timm:")
        hub_offline()
        try:
            model = timm.create_model(name, pretrained=True)
        except RuntimeError as e:
            if "Unknown model" in str(e) or "Invalid pretrained tag" in str(e):
                mixers = [m for m in timm.list_pretrained("mixer_*")]
                raise ConfigError(f"timm has no pretrained model {name!r}. Mixer ones: {', '.join(mixers)}.") from None
            raise CheckpointError(f"timm could not load {name!r}: {e}") from None
        except (OSError, ValueError) as e:  # LocalEntryNotFoundError is an OSError
            raise WeightsUnavailable(
                f"timm could not fetch the weights of {name!r} ({type(e).__name__}: {e}). They come from the Hub "
                f"repo in timm's pretrained config; see `mixer-ft inspect hf-hub:timm/{name}` for where to put them."
            ) from None
        if not isinstance(model, TimmMlpMixer) or not all(isinstance(b, TimmMixerBlock) for b in model.blocks):
            raise CheckpointError(f"timm's {name!r} is not an MLP-Mixer (gMLP, ResMLP and gMixer are other models).")
        ckpt = Checkpoint({k: v.detach() for k, v in model.state_dict().items()}, source)
        apply_metadata(ckpt, {"pretrained_cfg": dict(model.pretrained_cfg)}, tag=name)
        return ckpt


class Url(WeightSource):
    """An ``http(s)://`` URL of a weight file, downloaded once into the cache (checked, atomic)."""

    def matches(self, source: str) -> bool:
        return re.match(r"https?://", source) is not None

    def missing(self, source: str, variant: str | None, online: bool) -> str | None:
        # Its own host decides, not the Hub's (``online``): a mirror may answer where the Hub does not
        return None if cached_path(source).is_file() or url_reachable(source) else (
            f"the weights {public_url(source)}: not cached, and {_host(source)} cannot be reached now; fetch it on a "
            "machine with "
            f"internet and put it at {cached_path(source)}")

    def load(self, source: str, variant: str | None) -> Checkpoint:
        from mixer_ft.weights.weight_file import load_file

        return load_file(download(source), public_url(source))


class LocalPath(WeightSource):
    """A weight file, a model folder, or a run folder (its model/, else its newest checkpoint)."""

    def matches(self, source: str) -> bool:
        return check_path(Path(source).expanduser(), "weights").exists()  # the gate: no FIFO, no over-long name

    def load(self, source: str, variant: str | None) -> Checkpoint:
        from mixer_ft.weights.weight_file import load_file

        path = Path(source).expanduser()
        return self._folder(path, source) if path.is_dir() else load_file(path, source)

    def _folder(self, path: Path, source: str) -> Checkpoint:
        from mixer_ft.weights.model_folder import CHECKPOINT_NAME, WEIGHT_FILES, read_config, weights_in
        from mixer_ft.weights.weight_file import apply_metadata, load_file

        weights = weights_in(path)
        if weights is None and (path / "model").is_dir():
            return self._folder(path / "model", source)
        steps = sorted(p for p in (path / "checkpoints").glob("step_*.pt") if CHECKPOINT_NAME.fullmatch(p.name))
        if weights is None and steps:  # (a file of another name there is not one of the run's checkpoints)
            return load_file(steps[-1], source)
        if weights is None:
            raise CheckpointError(
                f"Folder {path} holds no weights: expected one of {', '.join(WEIGHT_FILES)}, a single .npz, or a "
                "run folder (model/ or checkpoints/)."
            )
        ckpt = load_file(weights, source)
        meta = read_config(path)
        if meta != {}:  # a config.json that is null, [1] or a number is malformed too
            apply_metadata(ckpt, meta, tag="")
        return ckpt


# Asked in order; the first that matches answers. A new kind of source is one class and one entry.
WEIGHT_SOURCES: list[WeightSource] = [Upstream(), HubRepo(), Timm(), Url(), LocalPath()]


def source_of(source: str) -> WeightSource:
    """The kind of weight source ``source`` is.

    Raises:
        WeightsUnavailable: it is none of them (not even an existing file or folder).
    """
    for kind in WEIGHT_SOURCES:
        if kind.matches(source):
            return kind
    raise WeightsUnavailable(
        f"{source!r} is neither a Mixer variant ({', '.join(VARIANTS)}) nor a weight source: there is no "
        f"such file or folder, and it is not a URL, an 'hf-hub:'/'timm:' id or an upstream name "
        f"({', '.join(UPSTREAMS)})."
    )


def _host(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return (parts.hostname or "") + (f":{parts.port}" if parts.port else "") or public_url(url)


def missing_weights(source: str, variant: str | None, online: bool) -> str | None:
    """Why ``source``'s weights cannot be had on this machine, with where to put them; None when they can."""
    if source == "none":
        return None
    try:
        kind = source_of(source)
    except WeightsUnavailable:
        if looks_local(source):  # a mistyped path is not an offline problem
            raise ConfigError(no_such(source, "weights")) from None
        return f"the weights {source}: no such file or folder"
    return kind.missing(source, variant, online)


def load_checkpoint(source: str, *, variant: str | None = None) -> Checkpoint:
    """Read any weight source (see the module docstring) into a :class:`~mixer_ft.weights.weight_file.Checkpoint`.

    Args:
        source: where the weights are.
        variant: the Mixer variant, needed when ``source`` is ``in1k``/``in21k``.

    Raises:
        CheckpointError: unreadable, unsafe or non-Mixer weights.
        WeightsUnavailable: not cached and cannot be downloaded.
    """
    return source_of(source).load(source, variant)


__all__ = ["UPSTREAMS", "WEIGHT_SOURCES", "WeightSource", "load_checkpoint", "missing_weights", "source_of",
           "upstream_sources"]
