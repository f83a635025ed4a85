"""The recipe a command line asks for: the file, then its flags, then ``--set key=value``s, then the rules that
fill in what none of them set (the BiT-HyperRule's schedule, a warm-up shorter than the run), each key's
origin kept so ``--dry-run`` can say where every value came from."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

from mixer_ft.bounded import read_text
from mixer_ft.train.recipe import Recipe, check_keys, from_dict, load_recipe, parse_override


def hyper_rule(n_train: int) -> tuple[int, int, str]:
    """The schedule length the paper used for small sets (BiT-HyperRule, by the size of train[:98%]):
    500 steps below 20,000 images, 10,000 below 500,000, else 20,000; warm-up a tenth of it, at most
    500 (our choice: the upstream 500 on 10,000 steps). Returns (steps, warm-up steps, why)."""
    steps = 500 if n_train < 20_000 else 10_000 if n_train < 500_000 else 20_000
    warmup = min(500, steps // 10)
    band = "under 20,000" if steps == 500 else "under 500,000" if steps == 10_000 else "500,000 or more"
    return steps, warmup, f"BiT-HyperRule: {n_train:,} training images, {band}: {steps:,} steps, warm-up {warmup}"


def apply_hyper_rule(r: Recipe, origin: dict[str, str], count_only: bool) -> tuple[Recipe, dict[str, str], str | None]:
    """The recipe with the BiT-HyperRule's steps (and warm-up, unless given) for its data set's size;
    the origins updated; what was chosen and why. ``count_only``: never load the data to count it."""
    from mixer_ft.data.sources import listed_train_images
    from mixer_ft.data.stream import is_streamed

    if is_streamed(r.dataset, r.streaming):
        origin["steps"] = f"{origin['steps']} (a streamed set is not counted before it is read: no BiT-HyperRule)"
        return r, origin, None
    n = listed_train_images(r.dataset, r.test_fraction)
    if n is None and not count_only:  # a Hub data set: loading it (cached for the run) counts it
        from mixer_ft.data.cache import load_data
        from mixer_ft.train import preflight

        preflight.check(r.upstream, r.variant, r.dataset)  # what the run lacks, all in one message
        n = len(load_data(r.dataset, image_column=r.image_column, label_column=r.label_column).labels["train"])
    if n is None:
        origin["steps"] = "rule (BiT-HyperRule; the data set's size is known once it is loaded)"
        return r, origin, None
    steps, warmup, why = hyper_rule(n - int(round(n * r.val_fraction)))
    changes = {"steps": steps} | ({} if origin["warmup_steps"] != "default" else {"warmup_steps": warmup})
    origin = origin | {k: f"rule ({why})" for k in changes}
    return r.replace(**changes), origin, f"steps {steps:,}, warm-up {changes.get('warmup_steps', r.warmup_steps)}: {why}"


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
    if {"steps", "epochs"} & {k for k, v in origin.items() if v != "default"}:
        said = None
    else:
        r, origin, said = apply_hyper_rule(r, origin, count_only)
    r, origin, shorter = short_warmup(r, origin)
    return r, origin, "; ".join(s for s in (said, shorter) if s) or None


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


__all__ = ["apply_hyper_rule", "from_command_line", "hyper_rule", "origins", "resolve", "short_warmup"]
