"""What a run checks before it touches its folder or its weights: that ``--fresh`` deletes no input of its own
command and nothing it did not write, and that a checkpoint it resumes was trained on the data set's classes."""

from __future__ import annotations

from pathlib import Path

from mixer_ft.atomic import MANIFEST, Manifest
from mixer_ft.errors import ConfigError, TrainingError
from mixer_ft.train.recipe import Recipe


def check_fresh_removes_no_input(recipe: Recipe, out: Path) -> None:
    """``--fresh`` deletes the run folder's checkpoints, model and record: never an input of this run.

    Raises:
        ConfigError: the upstream weights or the data set lie among what ``--fresh`` would delete.
    """
    doomed = [(out / "checkpoints").resolve(), (out / "model").resolve(), (out / "record.json").resolve()]
    for what, value in (("upstream weights", recipe.upstream), ("data set", recipe.dataset)):
        path = Path(value).expanduser()
        if not path.exists():
            continue
        real = path.resolve()
        if real == out.resolve() or any(real == d or real.is_relative_to(d) or
                                        (what.startswith("upstream") and d.is_relative_to(real)) for d in doomed):
            raise ConfigError(f"--fresh would delete the {what} of this run ({value}): it is in {out}. Give the new run "
                              "its own --output-dir, or copy them out first.")


def check_fresh_deletes_only_ours(out: Path) -> None:
    """``--fresh`` deletes only the files a run wrote, as the run folder's manifest lists them; a folder that holds
    a model/ or checkpoints/ and no manifest is not a run folder (or one of a mixer_ft before manifests).

    Raises:
        ConfigError: naming the folder, and what to do.
    """
    if Manifest(out).exists() or not any((out / name).exists() for name in ("model", "checkpoints", "record.json")):
        return
    raise ConfigError(f"--fresh deletes only what a run wrote, and {out} has no list of what runs wrote there "
                      f"({MANIFEST}): it is not a run folder of this mixer_ft, so its model/ and checkpoints/ stay. Give "
                      "the run another --output-dir, or remove them yourself if they are an old run's.")


def check_same_classes(saved: list[str] | None, now: list[str], out: Path, fresh: str) -> None:
    """A checkpoint's head rows are its classes in order: resuming on other classes would train the wrong rows.

    Raises:
        TrainingError: naming what changed (classes added, removed, renamed or reordered); nothing is trained.
    """
    if saved is None or list(saved) == list(now):
        return
    gone, new = [c for c in saved if c not in now], [c for c in now if c not in saved]
    change = "; ".join(part for part in (f"removed {gone}" if gone else "", f"added {new}" if new else "") if part) \
        or f"the same classes in another order ({saved} then, {now} now)"
    raise TrainingError(f"{out} holds a checkpoint trained on other classes than the data set's now: {change}. {fresh}")


__all__ = ["check_fresh_deletes_only_ours", "check_fresh_removes_no_input", "check_same_classes"]
