"""Stopping a run on request: SIGINT (Ctrl-C) and SIGTERM (a cloud's preemption)."""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator
from typing import Any

import torch

SAVE_BOUND_S = 20.0  # the longest a second Ctrl-C waits for a checkpoint of the last finished step


class StopSignals:
    """SIGINT and SIGTERM (Ctrl-C, a cloud's preemption) ask the run to stop after the current step.

    The first Ctrl-C is answered at once (``announce``: on the process that speaks for the run); the step
    finishes, a checkpoint is written and the run ends with 128 + the signal's number. A second Ctrl-C stops at
    once, and the run keeps the last finished step (:func:`mixer_ft.train.loop.stop_at_once`): it is raised as
    KeyboardInterrupt anywhere but inside a step's update (:meth:`update`), which it lets finish, so the weights,
    the optimizer, the schedule and the step count always agree. All processes agree on the step they stop at.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, announce: bool = False) -> None:
        self.signum, self.previous, self.announce = 0, {}, announce
        self.updating = self.pending = False

    def _handle(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            if self.updating:  # the weights are half-way through their update: let it end, then stop
                self.pending = True
                return
            raise KeyboardInterrupt
        self.signum = signum
        if signum == signal.SIGINT and self.announce:
            print("\nCtrl-C: stopping after this step, then writing a checkpoint to resume from (Ctrl-C again: stop now, "
                  "keeping the last finished step)", file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def update(self) -> Iterator[None]:
        """A step's update (weights, optimizer, schedule, step count), which a second Ctrl-C lets finish."""
        self.updating = True
        try:
            yield
        finally:
            self.updating = False
        if self.pending:
            raise KeyboardInterrupt

    def __enter__(self) -> StopSignals:
        self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def requested(self, accelerator: Any) -> int:
        """The signal any process of ``accelerator``'s received (0: none), the same answer on every process."""
        if accelerator.num_processes == 1:
            return self.signum
        flag = torch.tensor([self.signum], device=accelerator.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return int(flag.item())


__all__ = ["SAVE_BOUND_S", "StopSignals"]
