"""How a command ends: each way out of the app is one line (or none) and its exit code, never a traceback.

- A user error (:class:`~mixer_ft.errors.MixerFtError`): ``error: ...``, exit 2; said once across processes.
- A run stopped by a signal (:class:`~mixer_ft.errors.RunStopped`): what to do next, exit 143 or 130.
- Ctrl-C anywhere else (before a command starts, a download, indexing a set): ``interrupted``, exit 130. Typer
  turns a KeyboardInterrupt into a silent exit 130, so that is recognised by the interrupt behind it.
Under ``mixer-ft launch`` the message goes to the launcher, which says it once for all processes.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import typer

from mixer_ft.errors import ConfigError, MixerFtError, RunStopped
from mixer_ft.launch import write_status
from mixer_ft.settings import setting
from mixer_ft.text import one_line

SPINCOUNT = "10000"  # an idle OpenMP thread's spins before it sleeps (libgomp's default: 300,000)


def run_to_exit(app: Callable[[], object]) -> None:
    """Run ``app`` (the Typer app), turning each way it ends into its line and exit code."""
    try:
        spin_briefly()
        app()
    except RunStopped as e:
        if not write_status(e.exit_code, str(e)) and e.announce:  # under `mixer-ft launch` it says it
            typer.echo(str(e), err=True)
        sys.exit(e.exit_code)
    except MixerFtError as e:
        # Under `accelerate launch`, every process meets it: one says it
        if not write_status(2, str(e)) and _main_process():
            typer.echo(f"error: {one_line(e)}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:  # a Ctrl-C before the command started
        _interrupted()
    except SystemExit as e:  # Typer's exit 130 for a Ctrl-C (a second one, or one outside a run's steps)
        if e.code == 130 and from_ctrl_c(e):
            _interrupted()
        raise


def _main_process() -> bool:
    """Whether this is the process that speaks for a run (rank 0; a bad RANK counts as the main one)."""
    try:
        return setting("RANK") == 0
    except ConfigError:
        return True


def spin_briefly() -> None:
    """Before torch (and its OpenMP) starts, unless the user chose how OpenMP waits: an idle thread spins
    :data:`SPINCOUNT` times, then sleeps. On a machine shared with other work, threads that spin 300,000 times while
    they wait for each other hold the cores the others need: under load the smoke model trained 2.3x and S/32 1.7x
    faster with 10,000, within 10% of the default when quiet (results/bench/threads_cpu.json)."""
    if setting("OMP_WAIT_POLICY") is None and setting("GOMP_SPINCOUNT") is None:
        os.environ["GOMP_SPINCOUNT"] = SPINCOUNT


def from_ctrl_c(error: BaseException | None) -> bool:
    """Whether ``error`` was raised while handling a KeyboardInterrupt (its causes and contexts, followed back)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, KeyboardInterrupt):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


def _interrupted() -> None:
    """Say that the command was interrupted (the launcher says it for its processes) and exit 130."""
    if not write_status(130, "interrupted"):
        typer.echo("interrupted", err=True)
    sys.exit(130)


__all__ = ["from_ctrl_c", "run_to_exit"]
