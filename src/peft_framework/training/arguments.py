"""`train:` config -> transformers' TrainingArguments (and the checks transformers would make cryptically)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import TrainingArguments

from peft_framework.config.schema import TrainConfig
from peft_framework.errors import ConfigError
from peft_framework.training import distributed


def device_kind() -> str:
    """'cuda', 'mps' or 'cpu': where Trainer will put the model."""
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def resolve_precision(precision: str, device: str | None = None) -> str:
    """'fp32', 'bf16' or 'fp16' for `train.precision` on this hardware; ConfigError if it cannot run here."""
    device = device or device_kind()
    cuda_bf16 = device == "cuda" and torch.cuda.is_bf16_supported()
    if precision == "auto":
        if device == "cuda":
            return "bf16" if cuda_bf16 else "fp16"
        return "fp32"
    allowed = {
        "cuda": ["fp32", "fp16"] + (["bf16"] if cuda_bf16 else []),
        "cpu": ["fp32", "bf16"],
        "mps": ["fp32"],
    }
    ok = allowed.get(device, ["fp32"])
    if precision not in ok:
        why = {
            ("fp16", "cpu"): "fp16 mixed precision needs a CUDA GPU and none is available",
            ("bf16", "cuda"): "this GPU has no bf16 support (Ampere or newer needed)",
        }.get((precision, device), f"{precision} is not supported on {device}")
        raise ConfigError(
            "invalid config",
            [f"train.precision: {precision!r}: {why}; allowed on this machine: {', '.join(ok)}, auto"],
        )
    return precision


def is_deterministic(train: TrainConfig, device: str | None = None) -> bool:
    if train.deterministic is not None:
        return train.deterministic
    return (device or device_kind()) == "cpu"


@dataclass(frozen=True)
class StepPlan:
    """How many optimizer steps the run makes (as Trainer computes them)."""

    batches_per_epoch: int  # per process
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int


def plan_steps(train: TrainConfig, num_train_rows: int, world_size: int = 1) -> StepPlan:
    batches = math.ceil(num_train_rows / train.batch_size)
    batches = math.ceil(batches / world_size)  # accelerate shards whole batches across processes
    if train.objective == "grpo":  # each window of prompts is trained on num_iterations times
        batches *= train.grpo.num_iterations
    steps_per_epoch = max(batches // train.grad_accum + int(batches % train.grad_accum > 0), 1)
    total = train.max_steps if train.max_steps > 0 else math.ceil(train.epochs * steps_per_epoch)
    warmup = train.warmup_steps or math.ceil(total * train.warmup_ratio)
    return StepPlan(batches, steps_per_epoch, total, min(warmup, total))


def _checkpointing_kwargs(enabled: bool) -> dict[str, object]:
    """Activation (gradient) checkpointing; transformers 5.x renamed the arguments."""
    if not enabled:
        return {}
    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    prefix = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    # non-reentrant checkpointing works with frozen inputs (no enable_input_require_grads) and with DDP
    return {prefix: True, f"{prefix}_kwargs": {"use_reentrant": False}}


def build_training_arguments(
    train: TrainConfig,
    *,
    checkpoint_dir: Path,
    has_eval: bool,
    plan: StepPlan,
    precision: str,
    deterministic: bool,
    world_size: int = 1,
) -> TrainingArguments:
    device = device_kind()
    early = train.early_stopping_patience is not None
    if early and not has_eval:
        raise ConfigError(
            "invalid config",
            [
                "train.early_stopping_patience: set, but the prepared data has no validation rows; "
                "allowed: null, "
                "or data.split.validation > 0"
            ],
        )
    eval_strategy = "no" if not has_eval else ("steps" if train.eval_steps else "epoch")
    distributed.check_runnable(train, device)
    if train.distributed == "deepspeed":  # Trainer reads the file: written beside the checkpoints
        distributed.write_deepspeed_config(train, checkpoint_dir)
    return TrainingArguments(
        output_dir=str(checkpoint_dir),
        per_device_train_batch_size=train.batch_size,
        per_device_eval_batch_size=train.eval_batch_size or train.batch_size,
        num_train_epochs=train.epochs,
        max_steps=train.max_steps,
        gradient_accumulation_steps=train.grad_accum,
        learning_rate=train.learning_rate,
        lr_scheduler_type=train.scheduler,
        warmup_steps=plan.warmup_steps,
        weight_decay=train.weight_decay,
        max_grad_norm=train.max_grad_norm,
        seed=train.seed,
        data_seed=train.data_seed if train.data_seed is not None else train.seed,
        full_determinism=deterministic,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=device == "cpu",
        **_checkpointing_kwargs(train.gradient_checkpointing),
        torch_compile=train.compile,
        train_sampling_strategy="group_by_length" if train.group_by_length else "random",
        logging_strategy="steps",
        logging_steps=train.logging_steps,
        logging_first_step=True,
        logging_nan_inf_filter=False,  # a NaN must be seen (and stop the run), not averaged away
        eval_strategy=eval_strategy,
        eval_steps=train.eval_steps if eval_strategy == "steps" else None,
        save_strategy="steps",
        save_steps=train.save_steps,
        save_total_limit=train.save_total_limit,
        load_best_model_at_end=early,
        metric_for_best_model="eval_loss" if early else None,
        greater_is_better=False if early else None,
        restore_callback_states_from_checkpoint=True,
        report_to="none",  # dvclive is added as a callback with our settings (see callbacks.py)
        disable_tqdm=False,
        dataloader_num_workers=train.num_workers,
        remove_unused_columns=False,  # the collator picks the model's columns
        ddp_find_unused_parameters=train.ddp_find_unused_parameters,
        ddp_backend="gloo" if device == "cpu" and world_size > 1 else None,
        **distributed.training_arguments_kwargs(train, checkpoint_dir),
    )
