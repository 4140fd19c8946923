"""Step checkpoints in `train.checkpoint_dir`: which are complete, which run they belong to, where to resume.

transformers' Trainer writes `checkpoint-N/` file by file, in place, so a killed run can leave a
directory that looks like a checkpoint but is not one. A checkpoint counts as complete only when every
file resuming needs is there and structurally whole: the trainable weights and any callback states
(safetensors header and sizes), the optimizer, scheduler and RNG states (torch zip archives with their
central directory, which torch writes last), and `trainer_state.json` (parses, and its step matches the
directory name). Trainer writes trainer_state.json after the other files, but under DDP every process
writes its own RNG state, so a file can still be missing then: all of them are checked.

`run.json` beside the checkpoints records the fingerprint of the run that made them (config sections and
prepared data); `resume: auto` never continues a different run's checkpoints.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peft_framework.io import write_json_atomic

log = logging.getLogger(__name__)

PREFIX = "checkpoint-"
#: a step checkpoint's weights: every trainable tensor, by its name in the (unwrapped) model
TRAINABLE_WEIGHTS = "trainable_weights.safetensors"
#: tensors of callbacks that define `checkpoint_state() -> dict[str, Tensor]` and
#: `load_checkpoint_state(dict[str, Tensor])` (e.g. a rank allocator's running statistics)
CALLBACK_STATE_DIR = "callback_state"
RUN_FILE = "run.json"
#: the DeepSpeed config a deepspeed run generates here (training/distributed.py)
GENERATED_CONFIG = "deepspeed_config.json"
TRAINER_STATE = "trainer_state.json"
#: sha256 of the safetensors files of a checkpoint (they carry no checksum of their own; torch's zip
#: archives do, and are verified member by member), so a bit flip is found before resuming from it
CHECKSUMS = "checksums.json"
_STEP_DIR = re.compile(rf"^{PREFIX}(\d+)$")


@dataclass(frozen=True)
class Checkpoint:
    step: int
    path: Path


def list_checkpoints(checkpoint_dir: str | os.PathLike[str]) -> list[Checkpoint]:
    """`checkpoint-N` directories, by step (complete or not)."""
    root = Path(checkpoint_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and child.is_dir():
            found.append(Checkpoint(int(match.group(1)), child))
    return sorted(found, key=lambda c: c.step)


def checkpoint_step(path: str | os.PathLike[str]) -> int:
    """The step of a checkpoint directory: from its trainer_state.json, else its name, else 0."""
    path = Path(path)
    try:
        return int(json.loads((path / TRAINER_STATE).read_text(encoding="utf-8"))["global_step"])
    except (OSError, ValueError, KeyError, TypeError):
        match = _STEP_DIR.match(path.name)
        return int(match.group(1)) if match else 0


def _zip_problem(path: Path) -> str | None:
    if not path.is_file():
        return f"{path.name} missing"
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()  # reads every member and checks its CRC-32
    except Exception as exc:  # noqa: BLE001 - zipfile raises several types for damaged archives
        return f"{path.name} incomplete or corrupt ({type(exc).__name__}: {exc})"
    if bad is not None:
        return f"{path.name} corrupt (CRC mismatch in {bad})"
    return None


def write_checksums(checkpoint: str | os.PathLike[str], files: list[Path]) -> None:
    """Record the sha256 of `files` (inside `checkpoint`) in CHECKSUMS."""
    from peft_framework.io import file_sha256

    root = Path(checkpoint)
    sums = {f.relative_to(root).as_posix(): file_sha256(f) for f in files}
    write_json_atomic(root / CHECKSUMS, sums)


def _checksum_problems(path: Path) -> list[str]:
    from peft_framework.io import file_sha256

    file = path / CHECKSUMS
    if not file.is_file():
        return []  # written by an older version: the structural checks are all there is
    try:
        sums = json.loads(file.read_text(encoding="utf-8"))
        items = [(str(k), str(v)) for k, v in sums.items()]
    except (OSError, ValueError, AttributeError) as exc:
        return [f"{CHECKSUMS} unreadable ({type(exc).__name__})"]
    problems = []
    for name, digest in items:
        target = path / name
        if not target.is_file():
            problems.append(f"{name} missing")
        elif file_sha256(target) != digest:
            problems.append(f"{name} corrupt (its sha256 differs from {CHECKSUMS})")
    return problems


def _safetensors_problem(path: Path, allow_empty: bool = False) -> str | None:
    if not path.is_file():
        return f"{path.name} missing"
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for truncated files
        return f"{path.name} unreadable ({type(exc).__name__}: {exc})"
    if not keys and not allow_empty:
        return f"{path.name} holds no tensors"
    return None


def checkpoint_problems(path: str | os.PathLike[str], world_size: int = 1) -> list[str]:
    """What keeps `path` from being a complete checkpoint; empty when it is complete."""
    path = Path(path)
    problems: list[str] = []
    state_file = path / TRAINER_STATE
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
        step = int(state["global_step"])
    except FileNotFoundError:
        problems.append(f"{TRAINER_STATE} missing")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        problems.append(f"{TRAINER_STATE} incomplete ({type(exc).__name__}: {exc})")
    else:
        match = _STEP_DIR.match(path.name)
        if match and int(match.group(1)) != step:
            problems.append(f"{TRAINER_STATE} says step {step}, the directory name says {match.group(1)}")
    for weights in [path / TRAINABLE_WEIGHTS, *sorted((path / CALLBACK_STATE_DIR).glob("*.safetensors"))]:
        problem = _safetensors_problem(weights, allow_empty=weights.parent.name == CALLBACK_STATE_DIR)
        if problem:
            problems.append(problem)
    # FSDP runs: accelerate writes the gathered optimizer state as optimizer.bin (a torch archive too)
    optimizer = "optimizer.bin" if (path / "optimizer.bin").is_file() else "optimizer.pt"
    for name in (optimizer, "scheduler.pt"):
        problem = _zip_problem(path / name)
        if problem:
            problems.append(problem)
    problems.extend(p for p in _checksum_problems(path) if p not in problems)
    rng_files = ["rng_state.pth"] if world_size <= 1 else [f"rng_state_{i}.pth" for i in range(world_size)]
    for name in rng_files:
        problem = _zip_problem(path / name)
        if problem:
            problems.append(problem)
    return problems


def last_complete_checkpoint(
    checkpoint_dir: str | os.PathLike[str], world_size: int = 1
) -> tuple[Checkpoint | None, list[tuple[Checkpoint, list[str]]]]:
    """The newest complete checkpoint (or None) and the newer incomplete ones skipped on the way."""
    skipped: list[tuple[Checkpoint, list[str]]] = []
    for ckpt in reversed(list_checkpoints(checkpoint_dir)):
        problems = checkpoint_problems(ckpt.path, world_size)
        if not problems:
            return ckpt, skipped
        skipped.append((ckpt, problems))
    return None, skipped


def read_run(checkpoint_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    try:
        data = json.loads((Path(checkpoint_dir) / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_run(checkpoint_dir: str | os.PathLike[str], run: dict[str, Any]) -> None:
    write_json_atomic(Path(checkpoint_dir) / RUN_FILE, run)


def remove_checkpoints(checkpoint_dir: str | os.PathLike[str]) -> int:
    """Delete the `checkpoint-N` directories, `run.json` and a generated DeepSpeed config (nothing else)."""
    removed = 0
    for ckpt in list_checkpoints(checkpoint_dir):
        shutil.rmtree(ckpt.path, ignore_errors=True)
        removed += 1
    (Path(checkpoint_dir) / RUN_FILE).unlink(missing_ok=True)
    (Path(checkpoint_dir) / GENERATED_CONFIG).unlink(missing_ok=True)
    return removed


def remove_checkpoint_dir(checkpoint_dir: str | os.PathLike[str]) -> None:
    """Remove our checkpoints, and the directory itself if nothing else is left in it."""
    root = Path(checkpoint_dir)
    remove_checkpoints(root)
    try:
        root.rmdir()
    except OSError:
        pass


def _mean_logged_loss(log_history: list[dict[str, Any]], global_step: int) -> float | None:
    """The mean training loss over all steps, rebuilt from the logged interval means (what Trainer's
    `training_loss` is, up to the rounding of the logged values)."""
    total, last = 0.0, 0
    for entry in log_history:
        if "loss" in entry and "step" in entry:
            step = int(entry["step"])
            total += float(entry["loss"]) * (step - last)
            last = step
    return total / last if last and last == global_step else None


def train_or_finish(trainer: Any, resume_from: Path | None, total_steps: int) -> Any:
    """`trainer.train(resume_from_checkpoint=...)`, except when that checkpoint already is the run's last
    step (a re-run with `train.keep_checkpoints`, or a kill between the last checkpoint and the output
    write): then nothing is left to train, and Trainer would train one step more than planned. The
    checkpoint's weights and state are loaded instead (and the best checkpoint's weights when training
    ends on the best model), so the output equals the uninterrupted run's, byte for byte."""
    if resume_from is None or checkpoint_step(resume_from) < total_steps:
        return trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    from transformers.trainer_callback import TrainerState
    from transformers.trainer_utils import TrainOutput

    log.info("train.resume: %s is the last step (%d); nothing left to train", resume_from, total_steps)
    trainer._load_from_checkpoint(str(resume_from))
    trainer.state = TrainerState.load_from_json(str(Path(resume_from) / TRAINER_STATE))
    best = trainer.state.best_model_checkpoint
    if trainer.args.load_best_model_at_end and best and Path(best).is_dir():
        trainer._load_best_model()
    step = trainer.state.global_step
    return TrainOutput(step, _mean_logged_loss(trainer.state.log_history, step), {})
