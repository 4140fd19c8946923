"""Raising `train.epochs` (or `train.max_steps`) on a run continues it instead of starting over.

A run's *lineage* is its fingerprint less the length of training (epochs, max_steps). With
`train.resume: auto`, when the checkpoints in `train.checkpoint_dir` belong to a run of the same lineage
that got no further than the new length, training continues from the last complete checkpoint to the new
total, logged as "continuing from epoch 1 to 2" (optimizer, scheduler, RNG and data position restored
by transformers' Trainer). A finished run keeps its checkpoints only with `train.keep_checkpoints: true`;
without them there is nothing exact to continue from, and the stage says so (a WARNING) and starts over.

What "the same as one longer run" means: the weights after the continuation equal those of a run
planned for the new length from the start exactly when the learning-rate schedule does not depend on the
length (`train.scheduler: constant`, with `warmup_steps` instead of `warmup_ratio`). With a decaying
schedule the first part was trained under the shorter schedule; the continuation follows the longer
schedule from the checkpoint's step on (Trainer rebuilds the scheduler for the new total).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from peft_framework.config.schema import Config
from peft_framework.io import canonical_json_sha256
from peft_framework.paths import resolve
from peft_framework.provenance import MANIFEST
from peft_framework.training import checkpoints as ckpts

log = logging.getLogger(__name__)

LENGTH_KEYS = ("epochs", "max_steps")
STARTS_OVER = "starts over"  # in a note: logged as a warning


def lineage(fingerprint_input: dict[str, Any]) -> str:
    """Hash of the fingerprint's input (`{"config": {...,"train": {...}}, ...}`) less the training length."""
    config = dict(fingerprint_input["config"])
    config["train"] = {k: v for k, v in config["train"].items() if k not in LENGTH_KEYS}
    return canonical_json_sha256({**fingerprint_input, "config": config})


def _length(config: Config) -> str:
    tc = config.train
    return f"step {tc.max_steps}" if tc.max_steps > 0 else f"epoch {tc.epochs:g}"


def _reaches(config: Config, state: dict[str, Any]) -> bool:
    """Whether the new length is at least where the checkpoint got to."""
    tc = config.train
    if tc.max_steps > 0:
        return tc.max_steps >= int(state.get("global_step", 0))
    return tc.epochs >= float(state.get("epoch") or 0.0) - 1e-9


def continue_longer(
    config: Config,
    checkpoint_dir: Path,
    recorded: dict[str, Any] | None,
    run: dict[str, Any],
    world_size: int,
) -> tuple[Path, tuple[Path, ...], tuple[str, ...]] | None:
    """(checkpoint, checkpoints to remove, notes) to continue a run of the same lineage to a new length;
    None when the checkpoints are not such a run's."""
    if recorded is None or recorded.get("lineage") is None or recorded.get("lineage") != run.get("lineage"):
        return None
    found, skipped = ckpts.last_complete_checkpoint(checkpoint_dir, world_size)
    if found is None:
        return None
    try:
        state = json.loads((found.path / ckpts.TRAINER_STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not _reaches(config, state):
        return None
    was = f"epoch {float(state.get('epoch') or 0):g}"
    if config.train.max_steps > 0:
        was = f"step {int(state.get('global_step', 0))}"
    note = (
        f"train.resume: auto: the checkpoints in {checkpoint_dir} are this run with another length "
        f"(train.epochs / train.max_steps); continuing from {was} to {_length(config)} "
        f"({found.path}, step {found.step})"
    )
    skipped_notes = tuple(
        f"train.resume: skipping incomplete checkpoint {c.path}: {'; '.join(p)}" for c, p in skipped
    )
    return found.path, tuple(c.path for c, _ in skipped), (*skipped_notes, note)


def finished_without_checkpoints(config: Config, root: Path, run: dict[str, Any]) -> tuple[str, ...]:
    """A note when `train.output_dir` holds this run (same lineage) at another length but no checkpoint
    is left to continue from: the run starts over, and says so."""
    try:
        manifest = json.loads((resolve(root, config.train.output_dir) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ()
    if not isinstance(manifest, dict) or manifest.get("run_lineage") != run.get("lineage"):
        return ()
    old = (manifest.get("config") or {}).get("train") or {}
    if all(old.get(k) == getattr(config.train, k) for k in LENGTH_KEYS):
        return ()
    was = f"step {old.get('max_steps')}" if (old.get("max_steps") or -1) > 0 else f"epoch {old.get('epochs')}"
    return (
        f"train.resume: auto: {config.train.output_dir} holds this run trained to {was}, but its "
        f"checkpoints were removed (train.keep_checkpoints: false), so training {STARTS_OVER} from step 0 "
        f"to {_length(config)}; set train.keep_checkpoints: true to continue a finished run instead",
    )
