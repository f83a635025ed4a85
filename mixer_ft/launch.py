"""`mixer-ft launch`: `accelerate launch` with mixer-ft's exit status and one message.

Under `accelerate launch` with several processes, a run that ends on a user error (exit 2) or a stop
(Ctrl-C, SIGTERM: 130, 143) ends badly for the launcher: torch's elastic agent signals the other
processes, which may kill the one that was about to print the message, then prints its own traceback
and exits 1. `mixer-ft launch [ACCELERATE OPTIONS] COMMAND [ARGS]` runs
`accelerate launch [ACCELERATE OPTIONS] -m mixer_ft COMMAND [ARGS]` with ``MIXER_FT_LAUNCH_STATUS``
naming a folder of its own. A process that ends with a message writes it there instead of printing it
(:func:`write_status`, from ``cli.main``) and marks the place in its stderr; the wrapper shows the
launcher's stderr up to the first mark, then the first process's message once, and exits with that
process's status. Anything else (a
crash with a traceback, the launcher's own errors) passes through unchanged, with the launcher's status.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Collection
from pathlib import Path
from typing import Any

from mixer_ft.atomic import atomic_write_text, json_text
from mixer_ft.errors import ConfigError
from mixer_ft.settings import setting

STATUS_ENV = "MIXER_FT_LAUNCH_STATUS"
MARK = b"\x1e[mixer-ft launch: a process ended with a status]\n"
USAGE = "mixer-ft launch [ACCELERATE LAUNCH OPTIONS] COMMAND [ARGS], e.g. mixer-ft launch --num_processes 2 finetune ..."


def write_status(exit_code: int, message: str) -> bool:
    """In a process `mixer-ft launch` started: leave (exit status, message) for it to report.

    Returns:
        Whether a wrapper is listening (then the caller prints nothing); False outside `mixer-ft launch`.
    """
    try:  # a process on its way out: a bad value here must not become a second error
        folder, rank = setting(STATUS_ENV), setting("RANK")
    except ConfigError:
        return False
    if folder is None or not folder.is_dir():
        return False
    atomic_write_text(Path(folder) / f"rank_{rank:06d}.json", json_text({"rank": rank, "exit": exit_code, "message": message}))
    sys.stderr.flush()
    os.write(sys.stderr.fileno(), MARK)  # where this process's output ends, in the launcher's stderr
    return True


class LauncherOutput:
    """What of the launcher's stderr to show: everything its processes wrote, as it comes (progress bars
    included), up to the mark a process leaves where it ended with a status (:data:`MARK`); nothing after it,
    which is the launcher's own report of that ending (torch elastic's log lines and ``ChildFailedError``,
    or the single-process launcher's ``CalledProcessError``)."""

    def __init__(self) -> None:
        self.held, self.ended = b"", False

    def feed(self, chunk: bytes) -> bytes:
        """The part of ``chunk`` to show now."""
        if self.ended:
            return b""
        data = self.held + chunk
        at = data.find(MARK)
        if at >= 0:
            self.held, self.ended = b"", True
            return data[:at]
        # hold back only an end that could be the start of the mark (it begins with a byte text never has)
        cut = next((len(data) - k for k in range(min(len(MARK) - 1, len(data)), 0, -1) if MARK.startswith(data[-k:])),
                   len(data))
        self.held = data[cut:]
        return data[:cut]

    def flush(self) -> bytes:
        """What is left once the launcher has exited."""
        rest, self.held = self.held, b""
        return b"" if self.ended else rest


def _show(data: bytes) -> None:
    """Pass ``data`` on to stderr as it came (bytes), or as text where stderr takes only text."""
    if data:
        if hasattr(sys.stderr, "buffer"):
            sys.stderr.buffer.write(data)
        else:
            sys.stderr.write(data.decode("utf-8", "replace"))
        sys.stderr.flush()


def command_line(args: list[str], commands: Collection[str]) -> list[str]:
    """The `accelerate launch` command for `mixer-ft launch ARGS`: launcher options, then the first of ``commands``.

    Raises:
        ConfigError: no mixer-ft command in ``args``, or `launch` itself.
    """
    at = next((i for i, a in enumerate(args) if a in commands), None)
    if at is None:
        names = ", ".join(sorted(set(commands) - {"launch"}))
        raise ConfigError(f"mixer-ft launch needs a command after the launcher's options ({names}). "
                          f"Usage: {USAGE}")
    options, command = list(args[:at]), list(args[at:])
    if command[0] == "launch":
        raise ConfigError(f"mixer-ft launch cannot launch itself. Usage: {USAGE}")
    # The program named before its command, as after `accelerate launch` (-m mixer_ft) or as a shell runs it
    # (mixer-ft, mixer_ft): the same thing; left among the launcher's options it would be run as a script.
    if options[-2:] == ["-m", "mixer_ft"]:
        options = options[:-2]
    elif options[-1:] in (["mixer_ft"], ["mixer-ft"]):
        options = options[:-1]
    return [sys.executable, "-m", "accelerate.commands.launch", *options, "-m", "mixer_ft", *command]


def run(cmd: list[str]) -> int:
    """Run the launcher ``cmd`` (see :func:`command_line`) and report as described at the top; returns the exit status."""
    with tempfile.TemporaryDirectory(prefix="mixer-ft-launch-") as folder:
        status = Path(folder)
        # Its own process group: Ctrl-C reaches this process alone, which passes it on once to the
        # launcher and its processes, as the terminal would have.
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, env={**os.environ, STATUS_ENV: folder}, process_group=0)

        def forward(signum: int, frame: Any) -> None:
            try:
                os.killpg(proc.pid, signum)
            except ProcessLookupError:  # the launcher has just ended
                pass

        previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
        shown = LauncherOutput()
        try:
            assert proc.stderr is not None
            while chunk := os.read(proc.stderr.fileno(), 1 << 16):
                _show(shown.feed(chunk))
            proc.wait()
            _show(shown.flush())
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        statuses = sorted(status.glob("rank_*.json"))
        if not statuses:
            return proc.returncode
        first = json.loads(statuses[0].read_text())  # rank 0's where it wrote one: the file names sort by rank
    code, message = int(first["exit"]), str(first["message"])
    print(f"error: {message}" if code == 2 else message, file=sys.stderr, flush=True)
    return code


__all__ = ["STATUS_ENV", "LauncherOutput", "command_line", "run", "write_status"]
