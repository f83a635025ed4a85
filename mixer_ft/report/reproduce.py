"""``mixer-ft reproduce``: the results table's rows run one after another with their recipes.

A row already recorded in the results folder is skipped; one that was interrupted resumes (its run folder
is the recipe's). Each row runs as its own ``mixer-ft finetune`` process, so a failed row stops here with
its own message and the next ``reproduce`` takes up where this one ended.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import Any

from mixer_ft.atomic import json_text
from mixer_ft.errors import ConfigError
from mixer_ft.report import table as tables


def reproduce_rows(rows: str | None, results: str, dataset: str | None, say: Callable[..., Any]) -> str:
    """Run the rows named in ``rows`` (comma-separated ids; default: the CIFAR rows), each line of progress
    said by ``say``; returns the table after them.

    Raises:
        ConfigError: an unknown row, a row whose data mixer-ft cannot download without ``dataset``, or a
            row that failed.
    """
    from mixer_ft.data.sources import HUB_DATASETS
    from mixer_ft.train.recipe import find_recipe

    published = {p.id: p for p in tables.published_rows()}
    wanted = [r.strip() for r in rows.split(",")] if rows else [p.id for p in tables.default_rows(list(published.values()))]
    unknown = [r for r in wanted if r not in published]
    if unknown:
        raise ConfigError(f"Unknown row(s) {', '.join(unknown)}; the rows are: {', '.join(published)}.")
    elsewhere = [r for r in wanted if published[r].dataset not in HUB_DATASETS]
    if elsewhere and not dataset:
        raise ConfigError(f"Row(s) {', '.join(elsewhere)} train on {published[elsewhere[0]].dataset}, which mixer-ft "
                          "cannot download: pass --dataset with your copy (an image folder or shards).")
    done = {r["id"] for r in tables.build(results)[0] if r["accuracy"] is not None}
    for row_id in wanted:
        if row_id in done:
            say(f"{row_id}: already in {results}, skipped")
            continue
        recipe = find_recipe(published[row_id].recipe)
        cmd = [sys.executable, "-m", "mixer_ft", "finetune", "--recipe", str(recipe), "--set", f"results_dir={json_text(results)}"]
        cmd += ["--dataset", dataset] if dataset else []
        say(f"{row_id}: {' '.join(cmd[2:])}")
        if subprocess.run(cmd).returncode:
            raise ConfigError(f"Row {row_id} failed (its message is above); run `mixer-ft reproduce` again to resume it.")
    rows_, other = tables.build(results)
    return tables.render(rows_, other)


__all__ = ["reproduce_rows"]
