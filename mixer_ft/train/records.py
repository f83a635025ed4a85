"""Run records: one JSON file per finished run, holding everything needed to repeat it."""

from __future__ import annotations

import json
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mixer_ft.atomic import atomic_write_text, json_text, locked
from mixer_ft.bounded import read_text
from mixer_ft.errors import ConfigError, MixerFtError
from mixer_ft.publish import published
from mixer_ft.text import get_logger
from mixer_ft.train.devices import compile_mode
from mixer_ft.train.hardware import hardware

if TYPE_CHECKING:
    from mixer_ft.train.recipe import Recipe
    from mixer_ft.train.run import Run

# 2 (2026-12-07): test_accuracy and minival_accuracy are always the image alone (single view), the recipe's test-time
# views' beside them as *_views; the run's data_loss. Version 1 records of recipes with views (eval_flip,
# eval_translate) and no test_accuracy_views hold the views' accuracy under test_accuracy (report/table.py).
RECORD_VERSION = 2
log = get_logger(__name__)


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("mixer_ft", "torch", "timm", "accelerate", "datasets", "huggingface_hub", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    out["torch"] = torch.__version__  # with its build tag (+cpu, +cu132): it matters for speed and numerics
    return out


def _installed_from() -> Path | None:
    """The checkout `pip install .` was run in, as pip records it (PEP 610 direct_url.json)."""
    import json
    import urllib.parse

    try:
        info = json.loads(metadata.distribution("mixer_ft").read_text("direct_url.json") or "{}")
    except (metadata.PackageNotFoundError, ValueError):
        return None
    url = urllib.parse.urlsplit(info.get("url", ""))
    return Path(urllib.parse.unquote(url.path)) if url.scheme == "file" else None


def git_commit(cwd: Path | None = None) -> str | None:
    """The commit the code ran from, with '+dirty' when the tree had changes; None outside git.

    Installed with `pip install .`, the package no longer sits in the checkout: the commit is then
    read from the checkout pip installed it from, where it still exists.
    """
    here = Path(__file__).resolve().parent
    source = _installed_from()
    where = cwd or (source if source and source.is_dir() and not str(here).startswith(str(source)) else here)
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def _existing(path: Path) -> dict[str, Any] | None:
    """What is at a record's path: None when nothing is, else the record there ({} for anything that is not one)."""
    if not path.exists() and not path.is_symlink():
        return None
    try:
        theirs = json.loads(read_text(path, "record")) if path.is_file() and not path.is_symlink() else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, MixerFtError):
        theirs = {}
    return theirs if isinstance(theirs, dict) else {}


def _same_run(theirs: dict[str, Any], run_id: Any, model_dir: Any) -> bool:
    """Whether a record is of the run with ``run_id`` (resumed or re-evaluated) or was written from its folder
    (``model_dir``: the run started over there)."""
    folder = theirs.get("model_dir")
    return theirs.get("run_id") == run_id or (isinstance(folder, str) and isinstance(model_dir, str)
                                              and Path(folder).resolve() == Path(model_dir).resolve())


def _another_runs(path: Path, record: dict[str, Any]) -> bool:
    """Whether ``path`` holds the record of another run than ``record``'s (a fine-tune run has a run id; a
    record without one is an evaluation, which the same command makes again alike)."""
    theirs = _existing(path) if "run_id" in record else None
    return theirs is not None and not _same_run(theirs, record["run_id"], record.get("model_dir"))


def write_record(path: str | Path, record: dict[str, Any]) -> Path:
    """Write ``record`` to ``path`` (atomically; a folder means <folder>/<name>.json); returns the path written.

    Create, never replace another run's: under the results folder's lock, a record of another run at
    ``path`` (two runs of one name that overlapped) stays, and this one is written beside it as
    ``<name>.<run id>.json``, with a warning. ``mixer-ft table`` shows both.
    """
    path = Path(path)
    if path.suffix != ".json":
        path = path / f"{record['name']}.json"
    with locked(path.parent / ".records.lock", wait=True):
        if _another_runs(path, record):
            beside = path.with_name(f"{path.stem}.{record['run_id']}.json")
            log.warning("%s holds another run's record, which stays; this run's record is %s", path, beside)
            path = beside
        atomic_write_text(path, record_text(record))
    return path


def record_text(record: dict[str, Any]) -> str:
    """A record as its file holds it: versioned, strict JSON, and published as every record is (no URL keeps its
    token or password: :func:`mixer_ft.publish.published`)."""
    return json_text(published({"record_version": RECORD_VERSION, **record}), indent=2, sort_keys=False) + "\n"


def _compiled(model: torch.nn.Module) -> bool:
    from accelerate.utils import is_compiled_module

    return is_compiled_module(model)


def _compiled_graphs() -> int:
    """Graphs torch.compile built in this process: as many as compiled frames when nothing recompiled."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def _graph_breaks() -> int:
    """Graph breaks torch.compile met in this process (each costs a return to Python mid-step)."""
    from torch._dynamo.utils import counters

    return sum(counters["graph_break"].values())


def steady_rate(run: Run) -> float:
    """Images/s of the steps after each (re)start's first; of all steps if there are no others."""
    steps, seconds = run.total - run.warmup_steps, run.elapsed - run.warmup_s
    if steps < 1 or seconds <= 0:
        steps, seconds = run.total, run.elapsed
    return steps * run.recipe.global_batch / max(seconds, 1e-9)


def run_record(run: Run, test: tuple[float, int], minival: tuple[float, int]) -> dict[str, Any]:
    """Everything needed to repeat the run and compare it, as results/<name>.json holds it."""
    r, n_train = run.recipe, run.train_images
    trained, compiled = run.total * r.global_batch, _compiled(run.model)
    return {
        "name": r.run_name, "run_id": run.run_id, "upstream": r.upstream, "model": run.net.config.variant or "custom",
        "dataset": run.data.dataset_id, "data_source": r.dataset, "data_location": run.data.location,
        "classes": run.data.classes, "data_manifest": run.data.manifest,
        "test_accuracy": round(test[0], 5), "test_images": test[1],
        "minival_accuracy": round(minival[0], 5), "minival_images": minival[1],
        "steps": run.total, "global_batch": r.global_batch, "epochs": round(trained / n_train, 3) if n_train else None,
        "streamed": n_train is None,
        "micro_batch": run.micro, "accumulation": run.accum, "mixed_precision": run.precision,
        "compiled": compiled, "graph_breaks": _graph_breaks() if compiled else None, "head": run.head,
        "compile_mode": compile_mode(r, run.device) if compiled else None,
        "data_on_device": bool(run.feed and run.feed.on_device),
        "wall_clock_s": round(run.elapsed, 1), "images_per_s": round(steady_rate(run), 1),
        "warmup_s": round(run.warmup_s, 2), "eval_s": round(run.eval_s, 2), "checkpoint_s": round(run.checkpoint_s, 2),
        "compiled_graphs": _compiled_graphs() if compiled else None,
        "hardware": hardware(run.device, run.accelerator.num_processes), "threads": run.threads, "versions": versions(),
        "git_commit": git_commit(), "config": r.to_dict(), "model_config": run.net.config.to_dict(),
        "model_dir": str(run.out / "model"), "history": run.history,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def record_path(recipe: Recipe) -> Path:
    """Where the run's record goes: results/<name>.json."""
    return Path(recipe.results_dir) / f"{recipe.run_name}.json"


def check_record_is_ours(run: Run) -> None:
    """Refuse, before any training, a run whose record would replace another run's.

    The record file is this run's when it carries this run's id (a resumed or re-evaluated run) or was
    written from this run's folder (the run started over there, with ``--fresh`` or after its
    checkpoints were lost). Anything else there is another run's result, kept: the run stops with both
    named.
    """
    path = record_path(run.recipe)
    theirs = _existing(path)
    if theirs is None or _same_run(theirs, run.run_id, str(run.out / "model")):
        return
    folder = theirs.get("model_dir")
    made_by = f"the run in {Path(folder).parent}" if isinstance(folder, str) else "another run (or not a run record)"
    raise ConfigError(f"{path} holds the record of {made_by}, not of this run ({run.out}); it is kept. Give this "
                      f"run its own name (--set name=...) or results folder (--set results_dir=...).")
