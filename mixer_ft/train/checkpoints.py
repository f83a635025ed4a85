"""Training checkpoints: whole or absent, checked on resume, never outranked by a damaged one.

``<run>/checkpoints/step_<N>.pt`` holds everything a resume needs; beside it ``step_<N>.pt.sha256``
holds its digest, written after it. On resume the newest checkpoint whose digest matches (or, for
one written before digests, that loads) is taken; a damaged one is named in a warning and skipped.
Saving step N removes any checkpoint of a later step (what a damaged newer one or an abandoned
future left) and keeps the two newest: of the files the run folder's manifest lists as written by a run
(:class:`~mixer_ft.atomic.Manifest`), never others.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from mixer_ft.atomic import Manifest, atomic_write, atomic_write_text
from mixer_ft.text import get_logger
from mixer_ft.weights.model_folder import CHECKPOINT_NAME

log = get_logger(__name__)


def _digest(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()




def _step(path: Path) -> int:
    return int(path.name[5:13])


class Checkpoints:
    """Atomic training checkpoints in <output>/checkpoints, newest first on resume."""

    keep = 2

    def __init__(self, folder: Path) -> None:
        self.folder = folder / "checkpoints"
        self.manifest = Manifest(folder)
        self._warned = False

    def all(self) -> list[Path]:
        """The checkpoint files (``step_<8 digits>.pt``, regular files), oldest step first. Anything else in the
        folder (a copy the user made, ``step_best.pt``) is not a checkpoint of this run's: left alone, named once."""
        found, stray = [], []
        for path in self.folder.glob("step_*.pt"):
            (found if CHECKPOINT_NAME.fullmatch(path.name) and path.is_file() else stray).append(path)
        if stray and not self._warned:
            self._warned = True
            log.warning("%s: ignoring %s, not checkpoint(s) this run wrote (step_<8 digits>.pt)", self.folder,
                        ", ".join(sorted(p.name for p in stray)))
        return sorted(found, key=_step)

    def save(self, state: dict[str, Any]) -> Path:
        """Write ``state`` as step_<step>.pt with its digest; drop later steps' and all but the newest two."""
        path = atomic_write(self.folder / f"step_{state['step']:08d}.pt", lambda tmp: torch.save(state, tmp))
        sidecar = atomic_write_text(path.with_name(path.name + ".sha256"), _digest(path) + "\n")
        self.manifest.add(path, sidecar)
        later = [p for p in self.all() if _step(p) > state["step"]]
        for old in later + [p for p in self.all() if p not in later][: -self.keep]:
            self.manifest.delete(old, old.with_name(old.name + ".sha256"))
        return path

    def intact(self, path: Path) -> bool:
        """Whether ``path`` is as it was written: its digest matches (a checkpoint without one: unknown, True)."""
        sidecar = path.with_name(path.name + ".sha256")
        if not sidecar.is_file():
            return True
        try:
            return sidecar.read_text().strip() == _digest(path)
        except OSError:
            return False

    def latest(self) -> dict[str, Any] | None:
        """The newest checkpoint that is intact and loads; None when there is none."""
        for path in reversed(self.all()):
            if not self.intact(path):
                log.warning("checkpoint %s does not match its digest (damaged after it was written); skipping it "
                            "for an older one", path)
                continue
            try:
                return torch.load(path, map_location="cpu", weights_only=True)
            except Exception as e:  # noqa: BLE001 - damaged by something outside us: try the older one
                log.warning("checkpoint %s is unreadable (%s); trying an older one", path, e)
        return None


__all__ = ["Checkpoints"]
