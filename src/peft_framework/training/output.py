"""What the train stage writes to `train.output_dir`: the adapter, tokenizer, log and manifest.

The directory is written all or nothing (`atomic_dir`), the manifest last: it records the config, the
data, the base model, the library versions, the git commit and how training went.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from peft_framework.config.hashing import config_hash
from peft_framework.config.schema import Config
from peft_framework.io import atomic_dir, file_sha256
from peft_framework.provenance import MANIFEST, git_commit, library_versions, write_manifest

LOG_FILE = "trainer_log.jsonl"
CREATED_BY = "peft_framework.training.train"
FORMAT_VERSION = 1

__all__ = ["CREATED_BY", "FORMAT_VERSION", "LOG_FILE", "MANIFEST", "build_manifest", "write_output"]


def last_logged(log_history: list[dict[str, Any]], key: str) -> float | None:
    """The last value of `key` in Trainer's log history."""
    for entry in reversed(log_history):
        if key in entry:
            return entry[key]
    return None


def final_eval_loss(trainer: Any, history: list[dict[str, Any]]) -> float | None:
    """Validation loss of the weights being saved: the best checkpoint's when it was loaded back, the
    evaluation at the last step when there was one, else a fresh evaluation."""
    state = trainer.state
    if trainer.args.load_best_model_at_end and state.best_model_checkpoint and state.best_metric is not None:
        return float(state.best_metric)
    last = next((e for e in reversed(history) if "eval_loss" in e), None)
    if last is not None and last.get("step") == state.global_step:
        return float(last["eval_loss"])
    return float(trainer.evaluate()["eval_loss"])


def _layers_per_part(trainer: Any, method: Any) -> dict[str, Any]:
    """Adapted layers and fully trained modules per model part (language model, vision tower, projector)."""
    from peft_framework.models.parts import model_parts

    model = trainer.accelerator.unwrap_model(trainer.model)
    records = getattr(method, "records", None)
    if records is None or not records(model):
        return {}
    record = next(iter(records(model).values()))
    parts = model_parts(model)
    saved = getattr(record, "saved_modules", [])
    return {"layers_per_part": parts.count(record.targets), "modules_to_save_per_part": parts.count(saved)}


def build_manifest(
    config: Config,
    root: Path,
    *,
    data: Any,
    method: Any,
    trainer: Any,
    plan: Any,
    hardware: dict[str, Any],
    summary: dict[str, Any],
    wall_time_s: float,
) -> dict[str, Any]:
    """`manifest.json` of a trained adapter. `data`: the `PreparedData`; `plan`: the `StepPlan`;
    `hardware`: device, precision and deterministic as resolved for this run; `summary`: the stage's."""
    tc = config.train
    state = trainer.state
    trainable, total = summary["trainable_parameters"], summary["total_parameters"]
    return {
        "created_by": CREATED_BY,
        "format_version": FORMAT_VERSION,
        "config": config.to_dict(),
        "config_sha256": config_hash(config),
        "data": {
            "output_dir": config.data.output_dir,
            "sha256": data.sha256,
            "rows": {split: len(data.dataset[split]) for split in data.dataset},
            "label_names": data.label_names,
        },
        "base_model": {
            "name_or_path": config.model.name_or_path,
            "revision": config.model.revision,
            "task": config.model.task,
            "dtype": config.model.dtype,
        },
        "adapter": {
            "type": config.adapter.type,
            "peft_type": method.peft_type,
            **method.manifest_extra(config.adapter),
            **_layers_per_part(trainer, method),
        },
        "seed": tc.seed,
        "data_seed": trainer.args.data_seed,
        "versions": library_versions(),
        "git": git_commit(root),
        "parameters": {"trainable": trainable, "total": total, "trainable_fraction": trainable / total},
        "training": {
            "global_step": state.global_step,
            "planned_steps": plan.total_steps,
            "epochs": state.epoch,
            "world_size": summary["world_size"],
            "global_batch_size": tc.batch_size * tc.grad_accum * summary["world_size"],
            **hardware,
            "resumed_from": summary["resumed_from"],
            "stopped_early": tc.early_stopping_patience is not None and state.global_step < plan.total_steps,
            "best_checkpoint_step": state.best_global_step if tc.early_stopping_patience else None,
            "train_loss": summary["train_loss"],
            "train_loss_mean": summary["train_loss_mean"],
            "eval_loss": summary["eval_loss"],
            "wall_time_s": wall_time_s,
            "loraplus_groups": trainer.loraplus_groups,
        },
    }


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

    with atomic_dir(out_dir, key="train.output_dir") as tmp:
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
        write_manifest(tmp, manifest)
