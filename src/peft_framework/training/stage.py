"""The train stage: prepared data + base model + adapter config -> `train.output_dir`.

    summary = train(config, root=".")

Reads the DatasetDict that `prepare` wrote to `data.output_dir`, loads the base model and tokenizer,
injects `config.adapter` through the registry, trains with `AdapterTrainer` (transformers' Trainer),
checkpointing into `train.checkpoint_dir` and resuming per `train.resume`, and writes `train.output_dir`
atomically: the adapter (peft format), the tokenizer, `trainer_log.jsonl` and `manifest.json`.

Runs unchanged under `torchrun --nproc_per_node N` (DDP; gloo on CPU): every process trains, only the
main process writes checkpoints' shared files and the output.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from peft_framework.config.hashing import config_hash, section_dict
from peft_framework.config.schema import Config
from peft_framework.errors import DataError, StageFailed, UserError
from peft_framework.io import atomic_dir, canonical_json_sha256, dir_sha256, file_sha256, write_json_atomic
from peft_framework.training import checkpoints as ckpts

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
LOG_FILE = "trainer_log.jsonl"
CREATED_BY = "peft_framework.training.train"
FORMAT_VERSION = 1
DATA_MANIFEST = "manifest.json"
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
_VERSIONED = (
    "peft-framework",
    "torch",
    "transformers",
    "accelerate",
    "datasets",
    "safetensors",
    "tokenizers",
    "numpy",
)


def _resolve(root: Path, path: str) -> Path:
    return Path(path) if Path(path).is_absolute() else root / path


# ------------------------------------------------------------------------------------------------ data
def load_prepared(config: Config, root: Path) -> tuple[Any, dict[str, Any], Path]:
    """(DatasetDict, its manifest, its directory); DataError when it is missing or does not fit the task."""
    import datasets

    data_dir = _resolve(root, config.data.output_dir)
    if not (data_dir / "dataset_dict.json").is_file():
        raise DataError(
            f"data.output_dir: {config.data.output_dir!r} holds no prepared data ({data_dir}); "
            "run `peft-framework prepare` first"
        )
    try:
        manifest = json.loads((data_dir / DATA_MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        manifest = {}
    except ValueError as exc:
        raise DataError(f"{data_dir / DATA_MANIFEST}: not valid JSON ({exc})") from exc
    task = manifest.get("task")
    if task is not None and task != config.model.task:
        raise DataError(
            f"data.output_dir: the data in {config.data.output_dir!r} was prepared for model.task {task!r}, "
            f"but model.task is {config.model.task!r}; prepare the data again"
        )
    dataset = datasets.load_from_disk(str(data_dir))
    if "train" not in dataset or len(dataset["train"]) == 0:
        raise DataError(f"data.output_dir: {config.data.output_dir!r} has no training rows")
    missing = [c for c in ("input_ids", "labels") if c not in dataset["train"].column_names]
    if missing:
        raise DataError(
            f"data.output_dir: the train split lacks columns {missing}; has {dataset['train'].column_names}"
        )
    return dataset, manifest, data_dir


def _model_columns(split: Any) -> Any:
    from peft_framework.training.collator import MODEL_COLUMNS

    return split.select_columns([c for c in MODEL_COLUMNS if c in split.column_names])


# -------------------------------------------------------------------------------------------- provenance
def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit(root: Path) -> dict[str, Any] | None:
    """HEAD of the repository containing `root` and whether tracked files differ from it; None if no git."""
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": head, "dirty": bool(dirty)} if head else None


def run_fingerprint(config: Config, data_sha256: str, world_size: int) -> dict[str, Any]:
    """What must match for checkpoints to be continued: everything that changes the learned weights."""
    train = {k: v for k, v in section_dict(config, "train").items() if k not in _BOOKKEEPING_KEYS}
    learned = {
        "model": section_dict(config, "model"),
        "adapter": section_dict(config, "adapter"),
        "train": train,
    }
    return {
        "created_by": CREATED_BY,
        "fingerprint": canonical_json_sha256(
            {"config": learned, "data": data_sha256, "world_size": world_size}
        ),
        "data_sha256": data_sha256,
        "world_size": world_size,
    }


# --------------------------------------------------------------------------------------------- resume
def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


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
        path = _resolve(root, resume)
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
        return ResumePlan(None, (), ())
    recorded = ckpts.read_run(checkpoint_dir)
    if recorded is None or recorded.get("fingerprint") != run["fingerprint"]:
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
    _barrier()  # everyone has decided before anything is deleted
    if is_main:
        for note in plan.notes:
            level = logging.WARNING if "skipping" in note or "another" in note else logging.INFO
            log.log(level, note)
        for path in plan.remove:
            shutil.rmtree(path, ignore_errors=True)
        if plan.checkpoint is None:
            (checkpoint_dir / ckpts.RUN_FILE).unlink(missing_ok=True)
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        ckpts.write_run(checkpoint_dir, run)
    _barrier()


# ---------------------------------------------------------------------------------------- determinism
@contextlib.contextmanager
def _restore_global_determinism() -> Iterator[None]:
    """Trainer's full_determinism flips process-wide switches; a library call must not leave them flipped."""
    keys = (
        "CUDA_LAUNCH_BLOCKING",
        "CUBLAS_WORKSPACE_CONFIG",
        "ASCEND_LAUNCH_BLOCKING",
        "HCCL_DETERMINISTIC",
        "FLASH_ATTENTION_DETERMINISTIC",
    )
    env = {k: os.environ.get(k) for k in keys}
    algorithms = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    try:
        yield
    finally:
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        torch.use_deterministic_algorithms(algorithms, warn_only=warn_only)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total), each parameter counted once."""
    seen: set[int] = set()
    trainable = total = 0
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        total += param.numel()
        if param.requires_grad:
            trainable += param.numel()
    return trainable, total


def _last(log_history: list[dict[str, Any]], key: str) -> float | None:
    for entry in reversed(log_history):
        if key in entry:
            return entry[key]
    return None


def _final_eval_loss(trainer: Any, history: list[dict[str, Any]]) -> float | None:
    """Validation loss of the weights being saved: the best checkpoint's when it was loaded back, the
    evaluation at the last step when there was one, else a fresh evaluation."""
    state = trainer.state
    if trainer.args.load_best_model_at_end and state.best_model_checkpoint and state.best_metric is not None:
        return float(state.best_metric)
    last = next((e for e in reversed(history) if "eval_loss" in e), None)
    if last is not None and last.get("step") == state.global_step:
        return float(last["eval_loss"])
    return float(trainer.evaluate()["eval_loss"])


def write_output(
    out_dir: Path,
    model: torch.nn.Module,
    method: Any,
    config: Config,
    tokenizer: Any,
    history: list[dict[str, Any]],
    manifest: dict[str, Any],
) -> None:
    """`train.output_dir`, all or nothing: adapter (peft format), tokenizer, log, manifest (last)."""
    from peft_framework.adapters.checkpoint import WEIGHTS_NAME, save_adapter

    with atomic_dir(out_dir) as tmp:
        save_adapter(
            model,
            method,
            config.adapter,
            tmp,
            base_model_name_or_path=config.model.name_or_path,
            task_type=config.model.task,
        )
        tokenizer.save_pretrained(str(tmp))
        with open(tmp / LOG_FILE, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(entry, sort_keys=True) + "\n" for entry in history)
        manifest["adapter"]["sha256"] = file_sha256(tmp / WEIGHTS_NAME)
        write_json_atomic(tmp / MANIFEST, manifest)


# ------------------------------------------------------------------------------------------------ train
def train(
    config: Config, root: str | os.PathLike[str] = ".", *, callbacks: Sequence[Any] = ()
) -> dict[str, Any]:
    """Run the train stage; returns a JSON-able summary.

    `callbacks`: extra transformers TrainerCallbacks (notebooks, tests), added after the framework's own.
    """
    with _restore_global_determinism():
        return _train(config, Path(root), list(callbacks))


def _train(config: Config, root: Path, extra_callbacks: list[Any]) -> dict[str, Any]:
    from transformers import EarlyStoppingCallback, set_seed

    from peft_framework.adapters import registry
    from peft_framework.models.loading import load_base_model, load_tokenizer
    from peft_framework.training.arguments import (
        build_training_arguments,
        device_kind,
        is_deterministic,
        plan_steps,
        resolve_precision,
    )
    from peft_framework.training.callbacks import (
        dvclive_available,
        make_dvclive_callback,
        make_mlflow_callback,
        mlflow_available,
    )
    from peft_framework.training.collator import PadCollator
    from peft_framework.training.trainer import AdapterTrainer, NonFiniteLoss

    started = time.perf_counter()
    tc = config.train
    out_dir = _resolve(root, tc.output_dir)
    checkpoint_dir = _resolve(root, tc.checkpoint_dir)
    metrics_dir = _resolve(root, tc.metrics_dir)
    if out_dir.resolve() == checkpoint_dir.resolve() or checkpoint_dir.resolve().is_relative_to(
        out_dir.resolve()
    ):
        raise UserError(
            f"train.checkpoint_dir: {tc.checkpoint_dir!r} is inside train.output_dir ({tc.output_dir!r}); "
            "allowed: a separate directory (the output is replaced as a whole when training ends)"
        )
    if tc.report_to == "dvclive" and not dvclive_available():
        raise UserError(
            "train.report_to: 'dvclive' but dvclive is not installed; allowed: auto, none "
            "(or `pip install dvclive`)"
        )
    if tc.report_to == "mlflow" and not mlflow_available():
        raise UserError(
            "train.report_to: 'mlflow' but mlflow is not installed; allowed: auto, dvclive, none "
            "(or `pip install mlflow`)"
        )
    use_dvclive = tc.report_to == "dvclive" or (tc.report_to in ("auto", "mlflow") and dvclive_available())

    # data
    dataset, data_manifest, data_dir = load_prepared(config, root)
    data_sha = dir_sha256(data_dir)
    label_names = data_manifest.get("label_names")
    if label_names is None and config.model.task == "sequence_classification":
        feature = dataset["train"].features.get("labels")
        label_names = list(getattr(feature, "names", None) or []) or None
    train_ds = _model_columns(dataset["train"])
    eval_ds = (
        _model_columns(dataset["validation"])
        if "validation" in dataset and len(dataset["validation"])
        else None
    )

    # hardware and the step plan
    device = device_kind()
    precision = resolve_precision(tc.precision, device)
    deterministic = is_deterministic(tc, device)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    plan = plan_steps(tc, len(train_ds), world_size)
    args = build_training_arguments(
        tc,
        checkpoint_dir=checkpoint_dir,
        has_eval=eval_ds is not None,
        plan=plan,
        precision=precision,
        deterministic=deterministic,
        world_size=world_size,
    )
    is_main = args.process_index == 0  # touching args sets up the process group under torchrun

    # model + adapter (seeded: head and adapter initialisations come from the global RNG)
    set_seed(tc.seed)
    tokenizer = load_tokenizer(config.model)
    model = load_base_model(config.model, label_names=label_names, tokenizer=tokenizer)
    method = registry.get(config.adapter.type)
    method.inject(model, config.adapter)
    trainable, total = count_parameters(model)
    if trainable == 0:
        raise StageFailed(f"adapter: {config.adapter.type!r} left no trainable parameters in the model")
    if tc.gradient_checkpointing and hasattr(model.config, "use_cache"):
        model.config.use_cache = False

    # checkpoints
    run = run_fingerprint(config, data_sha, args.world_size)
    resume_plan = choose_resume(config, root, checkpoint_dir, run, args.world_size)
    apply_resume_plan(resume_plan, checkpoint_dir, run, is_main)
    resume_from = resume_plan.checkpoint

    callbacks: list[Any] = list(method.training_callbacks(model, config.adapter, plan.total_steps))
    if tc.early_stopping_patience is not None:
        callbacks.append(EarlyStoppingCallback(tc.early_stopping_patience, tc.early_stopping_threshold))
    if use_dvclive:
        resume_step = ckpts.checkpoint_step(resume_from) if resume_from is not None else None
        callbacks.append(make_dvclive_callback(metrics_dir, resume_step))
    mlflow_cb = make_mlflow_callback(config, root) if tc.report_to == "mlflow" else None
    if mlflow_cb is not None:
        callbacks.append(mlflow_cb)
    callbacks.extend(extra_callbacks)

    trainer = AdapterTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=PadCollator(tokenizer.pad_token_id, padding_side="right"),
        callbacks=callbacks,
        adapter_method=method,
    )
    if config.model.task == "sequence_classification":
        # class losses are means over the batch; Trainer's token-count normalisation (and its DDP scaling
        # by the process count) would be wrong for models that ignore num_items_in_batch (e.g. BERT)
        trainer.model_accepts_loss_kwargs = False

    try:
        output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    except NonFiniteLoss as exc:
        good, _ = ckpts.last_complete_checkpoint(checkpoint_dir, args.world_size)
        where = (
            f"The last good checkpoint is {good.path} (step {good.step}); nothing newer was saved."
            if good
            else "No checkpoint was saved before it."
        )
        raise NonFiniteLoss(f"{exc} {where}", step=exc.step, value=exc.value) from None
    history = trainer.state.log_history
    eval_loss = _final_eval_loss(trainer, history) if eval_ds is not None else None
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)

    summary: dict[str, Any] = {
        "output_dir": str(out_dir),
        "global_step": trainer.state.global_step,
        "train_loss": _last(history, "loss"),
        "train_loss_mean": output.training_loss,
        "eval_loss": eval_loss,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "resumed_from": str(resume_from) if resume_from else None,
        "world_size": args.world_size,
        "written": is_main,
    }
    if is_main:
        manifest = {
            "created_by": CREATED_BY,
            "format_version": FORMAT_VERSION,
            "config": config.to_dict(),
            "config_sha256": config_hash(config),
            "data": {
                "output_dir": config.data.output_dir,
                "sha256": data_sha,
                "rows": {split: len(dataset[split]) for split in dataset},
                "label_names": label_names,
            },
            "base_model": {
                "name_or_path": config.model.name_or_path,
                "revision": config.model.revision,
                "task": config.model.task,
                "dtype": config.model.dtype,
            },
            "adapter": {"type": config.adapter.type, "peft_type": method.peft_type},
            "seed": tc.seed,
            "data_seed": args.data_seed,
            "versions": library_versions(),
            "git": git_commit(root),
            "parameters": {"trainable": trainable, "total": total, "trainable_fraction": trainable / total},
            "training": {
                "global_step": trainer.state.global_step,
                "planned_steps": plan.total_steps,
                "epochs": trainer.state.epoch,
                "world_size": args.world_size,
                "global_batch_size": tc.batch_size * tc.grad_accum * args.world_size,
                "device": device,
                "precision": precision,
                "deterministic": deterministic,
                "resumed_from": summary["resumed_from"],
                "stopped_early": tc.early_stopping_patience is not None
                and trainer.state.global_step < plan.total_steps,
                "best_checkpoint_step": trainer.state.best_global_step
                if tc.early_stopping_patience
                else None,
                "train_loss": summary["train_loss"],
                "train_loss_mean": output.training_loss,
                "eval_loss": summary["eval_loss"],
                "wall_time_s": round(time.perf_counter() - started, 3),
            },
        }
        write_output(out_dir, unwrapped, method, config, tokenizer, history, manifest)
        summary["adapter_sha256"] = manifest["adapter"]["sha256"]
        summary["manifest_path"] = str(out_dir / MANIFEST)
        if mlflow_cb is not None:
            mlflow_cb.log_adapter(out_dir)
        if not tc.keep_checkpoints:
            ckpts.remove_checkpoint_dir(checkpoint_dir)
    _barrier()
    summary["duration_s"] = round(time.perf_counter() - started, 3)
    log.info(
        "trained %s adapter: %d steps, train loss %s, eval loss %s, %.1fs -> %s",
        config.adapter.type,
        summary["global_step"],
        summary["train_loss"],
        summary["eval_loss"],
        summary["duration_s"],
        out_dir,
    )
    return summary
