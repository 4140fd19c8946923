"""Resume planning: which run the checkpoints in `train.checkpoint_dir` belong to, and where to continue.

`run_fingerprint` says what must match for checkpoints to be continued; `choose_resume` decides per
`train.resume` (pure, so every DDP process decides the same); `apply_resume_plan` logs the decision
and cleans up on the main process. What makes one checkpoint complete is `checkpoints`' job.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from peft_framework.config.hashing import section_dict
from peft_framework.config.schema import Config
from peft_framework.errors import UserError
from peft_framework.io import canonical_json_sha256
from peft_framework.paths import resolve
from peft_framework.training import checkpoints as ckpts
from peft_framework.training import extend
from peft_framework.training.distributed import identity as distributed_identity
from peft_framework.training.output import CREATED_BY

log = logging.getLogger(__name__)

# train keys that change where things go or how often they are logged, not what is learned
_BOOKKEEPING_KEYS = {
    "output_dir",
    "resume",
    "checkpoint_dir",
    "keep_checkpoints",
    "metrics_dir",
    "report_to",
    "logging_steps",
    "save_steps",
    "save_total_limit",
    "num_workers",
}


def barrier() -> None:
    """Wait for every DDP process (nothing to wait for in a single process)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def run_fingerprint(
    config: Config, data_sha256: str, world_size: int, init_sha256: str | None = None
) -> dict[str, Any]:
    """What must match for checkpoints to be continued: everything that changes the learned weights
    (`init_sha256`: the weights of `train.init_adapter`, when set)."""
    train = {k: v for k, v in section_dict(config, "train").items() if k not in _BOOKKEEPING_KEYS}
    learned = {
        "model": section_dict(config, "model"),
        "adapter": section_dict(config, "adapter"),
        "train": train,
    }
    init = {"init_adapter_sha256": init_sha256} if init_sha256 is not None else {}
    what = {"config": learned, "data": data_sha256, **distributed_identity(config.train, world_size), **init}
    return {
        "created_by": CREATED_BY,
        "fingerprint": canonical_json_sha256(what),
        "lineage": extend.lineage(what),  # the same run at another length (train.epochs raised)
        "data_sha256": data_sha256,
        **distributed_identity(config.train, world_size),
    }


@dataclass(frozen=True)
class ResumePlan:
    checkpoint: Path | None  # resume from here; None: start fresh
    remove: tuple[Path, ...]  # checkpoint dirs to delete first (stale or incomplete)
    notes: tuple[str, ...]  # what was decided and why, for the log


def choose_resume(
    config: Config, root: Path, checkpoint_dir: Path, run: dict[str, Any], world_size: int
) -> ResumePlan:
    """Where to resume per `train.resume`, and which checkpoints must go. Pure: reads, never deletes (so
    every DDP process can decide the same before the main process cleans up)."""
    resume = config.train.resume
    existing = tuple(c.path for c in ckpts.list_checkpoints(checkpoint_dir))
    if resume == "never":
        notes = (
            (f"train.resume: never; removing {len(existing)} old checkpoint(s) in {checkpoint_dir}",)
            if existing
            else ()
        )
        return ResumePlan(None, existing, notes)
    if resume != "auto":
        path = resolve(root, resume)
        problems = ckpts.checkpoint_problems(path, world_size) if path.is_dir() else ["not a directory"]
        if problems:
            raise UserError(
                f"train.resume: {resume!r} is not a complete checkpoint ({path}): {'; '.join(problems)}; "
                "allowed: "
                f"'auto', 'never', or a checkpoint-N directory written by this framework"
            )
        recorded = ckpts.read_run(path.parent)
        notes = (f"train.resume: resuming from {path}",)
        if recorded is not None and recorded.get("fingerprint") != run["fingerprint"]:
            notes += (
                f"train.resume: {path} was written by a run with another config or data; continuing anyway",
            )
        return ResumePlan(path, (), notes)
    if not existing:
        return ResumePlan(None, (), extend.finished_without_checkpoints(config, root, run))
    recorded = ckpts.read_run(checkpoint_dir)
    if recorded is None or recorded.get("fingerprint") != run["fingerprint"]:
        longer = extend.continue_longer(config, checkpoint_dir, recorded, run, world_size)
        if longer is not None:  # the same run, trained longer (train.epochs raised)
            return ResumePlan(*longer)
        return ResumePlan(
            None,
            existing,
            (
                f"train.resume: auto: the checkpoints in {checkpoint_dir} belong to a run with another "
                "config, data or "
                "process count; starting fresh (they are removed)",
            ),
        )
    found, skipped = ckpts.last_complete_checkpoint(checkpoint_dir, world_size)
    notes = tuple(
        f"train.resume: skipping incomplete checkpoint {c.path}: {'; '.join(p)}" for c, p in skipped
    )
    # incomplete newer ones go: Trainer's rotation would otherwise count them as checkpoints
    remove = tuple(c.path for c, _ in skipped)
    if found is None:
        return ResumePlan(
            None,
            remove,
            notes + (f"train.resume: auto: no complete checkpoint in {checkpoint_dir}; starting fresh",),
        )
    return ResumePlan(
        found.path, remove, notes + (f"train.resume: auto: resuming from {found.path} (step {found.step})",)
    )


def apply_resume_plan(plan: ResumePlan, checkpoint_dir: Path, run: dict[str, Any], is_main: bool) -> None:
    """Log the decision and clean up (main process only), then let every process continue together."""
    barrier()  # everyone has decided before anything is deleted
    if is_main:
        for note in plan.notes:
            warn = "skipping" in note or "another config" in note or extend.STARTS_OVER in note
            level = logging.WARNING if warn else logging.INFO
            log.log(level, note)
        for path in plan.remove:
            shutil.rmtree(path, ignore_errors=True)
        if plan.checkpoint is None:
            (checkpoint_dir / ckpts.RUN_FILE).unlink(missing_ok=True)
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        ckpts.write_run(checkpoint_dir, run)
    barrier()
