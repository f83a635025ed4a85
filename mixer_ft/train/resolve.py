"""The recipe a command line asks for: the file, then its flags, then ``--set key=value``s, then the rules that
fill in what none of them set (the BiT-HyperRule's schedule, a warm-up shorter than the run), each key's
origin kept so ``--dry-run`` can say where every value came from."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

from mixer_ft.bounded import read_text
from mixer_ft.data.stream import is_streamed
from mixer_ft.errors import MixerFtError
from mixer_ft.train.recipe import Recipe, check_keys, from_dict, load_recipe, parse_override


def hyper_rule(n_train: int) -> tuple[int, int, str]:
    """The schedule length the paper used for small sets (BiT-HyperRule, by the size of train[:98%]):
    500 steps below 20,000 images, 10,000 below 500,000, else 20,000; warm-up a tenth of it, at most
    500 (our choice: the upstream 500 on 10,000 steps). Returns (steps, warm-up steps, why)."""
    steps = 500 if n_train < 20_000 else 10_000 if n_train < 500_000 else 20_000
    warmup = min(500, steps // 10)
    band = "under 20,000" if steps == 500 else "under 500,000" if steps == 10_000 else "500,000 or more"
    return steps, warmup, f"BiT-HyperRule: {n_train:,} training images, {band}: {steps:,} steps, warm-up {warmup}"


def train_split_size(r: Recipe, count_only: bool) -> int | None:
    """Images in the run's train split (train less its minival), counted without decoding where the source allows
    (a folder's listing, CIFAR's published 50,000); a Hub set is loaded (and so cached) to count it, unless
    ``count_only``. None where it cannot be known before the run: a stream, or a Hub set with ``count_only``."""
    from mixer_ft.data.sources import listed_train_images

    if is_streamed(r.dataset, r.streaming):
        return None
    try:
        n = listed_train_images(r.dataset, r.test_fraction)
    except MixerFtError:  # not there, or not readable: the check before the run names it with all else it lacks
        return None
    if n is None and not count_only:  # a Hub data set: loading it (cached for the run) counts it
        from mixer_ft.data.cache import load_data
        from mixer_ft.train import preflight

        preflight.check(r.upstream, r.variant, r.dataset, r.tracker)  # what the run lacks, all in one message
        n = len(load_data(r.dataset, image_column=r.image_column, label_column=r.label_column).labels["train"])
    return None if n is None else n - int(round(n * r.val_fraction))


def apply_hyper_rule(r: Recipe, origin: dict[str, str], n: int | None) -> tuple[Recipe, dict[str, str], str | None]:
    """The recipe with the BiT-HyperRule's steps (and warm-up, unless given) for a train split of ``n`` images;
    the origins updated; what was chosen and why."""
    if is_streamed(r.dataset, r.streaming):
        origin["steps"] = f"{origin['steps']} (a streamed set is not counted before it is read: no BiT-HyperRule)"
        return r, origin, None
    if n is None:
        origin["steps"] = "rule (BiT-HyperRule; the data set's size is known once it is loaded)"
        return r, origin, None
    steps, warmup, why = hyper_rule(n)
    changes = {"steps": steps} | ({} if origin["warmup_steps"] != "default" else {"warmup_steps": warmup})
    origin = origin | {k: f"rule ({why})" for k in changes}
    return r.replace(**changes), origin, f"steps {steps:,}, warm-up {changes.get('warmup_steps', r.warmup_steps)}: {why}"


def fit_batch(r: Recipe, origin: dict[str, str], n: int | None) -> tuple[Recipe, dict[str, str], str | None]:
    """A global batch larger than the train split (the protocol's 512 on a folder of 95 photos) becomes the largest
    power of two not above it, and the learning rate follows it by ``lr_scaling`` (linear: Goyal et al.'s rule
    for SGD; unless ``--lr`` was given, which is then the rate for the batch the run has)."""
    if n is None or n < 1 or r.global_batch <= n:
        return r, origin, None
    batch = 1 << (n.bit_length() - 1)
    factor = {"linear": batch / r.global_batch, "sqrt": (batch / r.global_batch) ** 0.5, "none": 1.0}[r.lr_scaling]
    changes = {"global_batch": batch} | ({} if origin["lr"] == "flag" else {"lr": r.lr * factor})
    why = f"the global batch {r.global_batch} is more than the {n:,} training images: the largest power of two not above"
    origin = origin | {"global_batch": f"rule ({why})"}
    if "lr" in changes:
        origin["lr"] = f"rule ({r.lr:g} scaled with the batch, {batch}/{r.global_batch}: lr_scaling = \"{r.lr_scaling}\")"
    said = f"global batch {batch} (of {r.global_batch}: the {n:,} training images are fewer)" + (
        f", lr {changes['lr']:.3g} (scaled {r.lr_scaling}ly from {r.lr:g})" if "lr" in changes and factor != 1 else "")
    return r.replace(**changes), origin, said


def from_command_line(path: str | None, flags: dict[str, Any], set_items: list[str]) -> tuple[Recipe, dict[str, Any]]:
    """The recipe a command line asks for: the file (if any), then its flags, then ``--set key=value``s;
    also the overrides themselves (flags and --set)."""
    overrides = {k: v for k, v in flags.items() if v is not None}
    for item in set_items:
        key, value = parse_override(item)
        if isinstance(value, dict):  # architecture.x=... adds to the table
            value = {**overrides.get(key, {}), **value}
        overrides[key] = value
    check_keys(overrides, "--set")
    if "steps" in overrides and "epochs" not in overrides:
        overrides["epochs"] = None  # --steps on the command line beats the file's epochs (which would win)
    return (load_recipe(path, **overrides) if path else from_dict(overrides)), overrides


def resolve(path: str | None, flags: dict[str, Any], set_items: list[str],
            count_only: bool = False) -> tuple[Recipe, dict[str, str], str | None]:
    """The recipe a command line asks for (``from_command_line``), with the BiT-HyperRule's schedule
    when neither the file nor the command line sets steps or epochs; where each key came from; and
    what the rule chose and why (None when it did not apply)."""
    r, overrides = from_command_line(path, flags, set_items)
    origin = origins(path, overrides)
    from mixer_ft.data.names import is_url

    if is_url(r.dataset) and not r.streaming:  # said as it is: a shard URL is never cached
        r, origin = r.replace(streaming=True), origin | {"streaming": "rule (a shard URL is always streamed)"}
    n = train_split_size(r, count_only)
    r, origin, fitted = fit_batch(r, origin, n)
    if {"steps", "epochs"} & {k for k, v in origin.items() if v != "default"}:
        said = None
    else:
        r, origin, said = apply_hyper_rule(r, origin, n)
    r, origin, shorter = short_warmup(r, origin)
    return r, origin, "; ".join(s for s in (fitted, said, shorter) if s) or None


def short_warmup(r: Recipe, origin: dict[str, str]) -> tuple[Recipe, dict[str, str], str | None]:
    """A warm-up as long as the run or longer (the protocol's 500 steps in a 50-step run) never lets the rate
    reach ``lr``: it shrinks to a tenth of the run, the BiT-HyperRule's share, unless ``--warmup`` set it."""
    if r.epochs is not None or origin.get("warmup_steps") == "flag" or r.warmup_steps < r.steps:
        return r, origin, None
    warmup, was = r.steps // 10, "the recipe's" if origin.get("warmup_steps") == "recipe file" else "the default"
    why = f"{was} {r.warmup_steps} is not shorter than the {r.steps}-step run: a tenth of it, as the BiT-HyperRule"
    return (r.replace(warmup_steps=warmup), origin | {"warmup_steps": f"rule ({why}; --warmup sets another)"},
            f"warm-up {warmup}: {why} (--warmup sets another)")


def origins(path: str | Path | None, overrides: dict[str, Any]) -> dict[str, str]:
    """Where each recipe key's value comes from: "flag", "recipe file" or "default"."""
    in_file = set(tomllib.loads(read_text(path, "recipe"))) if path else set()
    return {f.name: "flag" if f.name in overrides else "recipe file" if f.name in in_file else "default"
            for f in dataclasses.fields(Recipe)}


__all__ = ["apply_hyper_rule", "fit_batch", "train_split_size", "from_command_line", "hyper_rule", "origins", "resolve", "short_warmup"]
