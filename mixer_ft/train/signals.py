"""Stopping a run on request: SIGINT (Ctrl-C) and SIGTERM (a cloud's preemption)."""

from __future__ import annotations

import signal
from typing import Any

import torch


class StopSignals:
    """SIGINT and SIGTERM (Ctrl-C, a cloud's preemption) ask the run to stop after the current step.

    The step finishes, a checkpoint is written and the run ends with 128 + the signal's number; a
    second Ctrl-C stops at once. All processes of a run agree on the step they stop at.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum, self.previous = 0, {}

    def _handle(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

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


__all__ = ["StopSignals"]
