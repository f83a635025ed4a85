"""What a checkpoint holds and how a run continues from one: everything the steps after it depend on (weights,
optimizer and schedule states, the random state, the averaged and best weights, a stream's place), so that a
resumed run ends exactly as the uninterrupted one."""

from __future__ import annotations

import json
from typing import Any

import torch

from mixer_ft.atomic import json_text
from mixer_ft.errors import TrainingError
from mixer_ft.text import get_logger
from mixer_ft.train.guards import check_same_classes
from mixer_ft.train.recipe import resume_conflicts
from mixer_ft.train.run import Run
from mixer_ft.train.stream_feed import StreamFeed

log = get_logger(__name__)


def restore(run: Run) -> None:
    """Continue from the newest checkpoint in the run folder, if there is one of this recipe."""
    saved = run.checkpoints.latest()
    if saved is None:
        return
    if "optimizers" not in saved:
        raise TrainingError(f"{run.out} holds a checkpoint from an older mixer_ft that this one cannot resume. "
                            "Use another --output-dir, or --fresh to start over.")
    fresh = (f"Use another --output-dir, or --fresh to start over (it deletes the checkpoints, model and record "
             f"in {run.out}).")
    differ = resume_conflicts(saved["recipe"], run.recipe)
    if differ:
        raise TrainingError(f"{run.out} holds a checkpoint of another recipe (different {', '.join(differ)}). {fresh}")
    check_same_classes(saved.get("classes"), run.data.classes, run.out, fresh)
    if saved.get("manifest") and run.data.manifest and saved["manifest"] != run.data.manifest:
        log.warning("%s: the data set's files changed since the checkpoint (same classes): the resumed run trains on "
                    "the data as it is now", run.out)
    run.net.load_state_dict(saved["model"])
    if run.ema is not None:
        run.ema.load_state_dict(saved["ema"])
    if run.best is not None:
        run.best.load_state_dict(saved["best"])
    for optimizer, schedule, o_state, s_state in zip(run.optimizers, run.schedules, saved["optimizers"],
                                                     saved["schedules"], strict=True):
        optimizer.load_state_dict(o_state)
        schedule.load_state_dict(s_state)
    torch.set_rng_state(saved["torch_rng"])
    if isinstance(run.feed, StreamFeed):
        cursors = saved.get("stream") or []
        if len(cursors) != run.accelerator.num_processes:
            raise TrainingError(f"{run.out} holds a checkpoint of a streamed run in {len(cursors)} process(es): each "
                                f"process's place in its shards is kept, so resume it with {len(cursors)}, not "
                                f"{run.accelerator.num_processes}. {fresh}")
        run.feed.load(cursors[run.accelerator.process_index])
    run.step, run.history, run.elapsed = saved["step"], json.loads(saved["history"]), saved["elapsed_s"]
    run.run_id = saved.get("run_id") or run.run_id
    run.warmup_s, run.warmup_steps = saved.get("warmup_s", 0.0), saved.get("warmup_steps", 0)
    run.eval_s, run.checkpoint_s = saved.get("eval_s", 0.0), saved.get("checkpoint_s", 0.0)
    run.accelerator.print(f"resuming {run.out} at step {run.step}/{run.total}")




def evaluation_views(run: Run) -> dict[str, Any]:
    """How the run scores images, as its model folder and checkpoints record it."""
    return {"flip": run.recipe.eval_flip, "translate": run.recipe.eval_translate, "precision": run.precision}


def save_checkpoint(run: Run) -> None:
    """Everything a resume needs, written atomically by the main process; never after a diverged step."""
    accel = run.accelerator
    if run.loss_check is not None:
        run.loss_check.check(run.checkpoints, run.recipe.lr)
    accel.wait_for_everyone()
    # A streamed run: each process's place in its shards (gathered onto the main process, which writes)
    from accelerate.utils import gather_object

    cursors = gather_object([run.feed.state(run.step)]) if isinstance(run.feed, StreamFeed) else None
    if accel.is_main_process:
        run.checkpoints.save({
            "step": run.step, "model": run.net.state_dict(), "optimizers": [o.state_dict() for o in run.optimizers],
            "schedules": [s.state_dict() for s in run.schedules], "torch_rng": torch.get_rng_state(),
            "recipe": run.recipe.to_dict(), "history": json_text(run.history), "elapsed_s": run.elapsed,
            "warmup_s": run.warmup_s, "warmup_steps": run.warmup_steps, "run_id": run.run_id,
            "eval_s": run.eval_s, "checkpoint_s": run.checkpoint_s,
            # So that the checkpoint alone is a usable model (`mixer-ft predict runs/<name>`):
            "model_config": run.net.config.to_dict(), "classes": run.data.classes, "evaluation": evaluation_views(run),
            "manifest": run.data.manifest, "stream": cursors,
            "ema": run.ema.state_dict() if run.ema else None, "best": run.best.state_dict() if run.best else None,
        })
    accel.wait_for_everyone()


__all__ = ["evaluation_views", "restore", "save_checkpoint"]
