"""The train stage: prepared data + base model + adapter config -> `train.output_dir`.

    summary = train(config, root=".")

Reads the DatasetDict that `prepare` wrote to `data.output_dir`, loads the base model and tokenizer,
injects `config.adapter` through the registry, trains with `AdapterTrainer` (transformers' Trainer),
checkpointing into `train.checkpoint_dir` and resuming per `train.resume`, and writes `train.output_dir`
atomically: the adapter (peft format), the tokenizer, `trainer_log.jsonl` and `manifest.json`.

Runs unchanged under `torchrun --nproc_per_node N` (DDP; gloo on CPU): every process trains, only the
main process writes checkpoints' shared files and the output.

The parts, one job each: `prepared` (the input data), `arguments` (config -> TrainingArguments),
`resume` (which checkpoint to continue), `trainer` (Trainer with the adapter's hooks), `output` (the
adapter directory and its manifest), `determinism` (process-wide switches put back).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from peft_framework.config.schema import Config, TrainConfig
from peft_framework.errors import StageFailed, UserError
from peft_framework.locking import locked_stage
from peft_framework.paths import resolve
from peft_framework.training import checkpoints as ckpts
from peft_framework.training import objectives, warm_start
from peft_framework.training.determinism import restore_global_determinism
from peft_framework.training.distributed import materialize_trainable
from peft_framework.training.moe_report import moe_adapted_by_kind, router_aux_loss
from peft_framework.training.output import (
    MANIFEST,
    build_manifest,
    final_eval_loss,
    last_logged,
    write_output,
)
from peft_framework.training.prepared import PreparedData, load_prepared
from peft_framework.training.resume import apply_resume_plan, barrier, choose_resume, run_fingerprint

log = logging.getLogger(__name__)


@locked_stage("train")
def train(
    config: Config, root: str | os.PathLike[str] = ".", *, callbacks: Sequence[Any] = ()
) -> dict[str, Any]:
    """Run the train stage; returns a JSON-able summary.

    `callbacks`: extra transformers TrainerCallbacks (notebooks, tests), added after the framework's own.
    """
    with restore_global_determinism():
        return _train(config, Path(root), list(callbacks))


def _train(config: Config, root: Path, extra_callbacks: list[Any]) -> dict[str, Any]:
    from peft_framework.models.chat_template import apply_prepared_chat_template
    from peft_framework.training.callbacks import make_mlflow_callback
    from peft_framework.training.collator import make_collator
    from peft_framework.training.loraplus import loraplus_setting
    from peft_framework.training.packing import pack_prepared
    from peft_framework.training.trainer import AdapterTrainer

    started = time.perf_counter()
    tc = config.train
    if tc.report_to == "mlflow" and os.environ.get("RANK", "0") == "0":  # before anything is written
        from peft_framework.training.mlflow_store import check_tracking_store

        check_tracking_store(root)
    out_dir, checkpoint_dir, metrics_dir = _directories(tc, root)
    use_dvclive = _use_dvclive(tc)
    _refuse_vision_packing(config)
    data = load_prepared(config, root)
    data, packing = pack_prepared(data, config)  # train.packing: the train split packed across the epoch
    args, plan, hardware = _arguments(tc, data, checkpoint_dir)
    is_main = args.process_index == 0  # touching args sets up the process group under torchrun

    model, tokenizer, method, config = _model_with_adapter(config, data.label_names)
    apply_prepared_chat_template(tokenizer, config.data, data.manifest, root)  # saved with the adapter
    init = warm_start.load_init_adapter(model, method, config, root)  # train.init_adapter
    objective = objectives.get(tc.objective, tc)
    objective.use_tokenizer(tokenizer)
    reference_adapter = _frozen_reference(model, method, config, objective, init)
    trainable, total = count_parameters(model)
    if trainable == 0:
        raise StageFailed(f"adapter: {config.adapter.type!r} left no trainable parameters in the model")
    moe_kinds = moe_adapted_by_kind(model, method.active_adapter(model) or "default")  # MoE: warns once

    if tc.precompute_reference and objective.needs_reference:
        data = _precomputed_reference(data, model, method, reference_adapter, objective, config, root, init)
        summary_reference = True
    else:
        summary_reference = False

    # checkpoints: continue this run's, or start fresh
    run = run_fingerprint(config, data.sha256, args.world_size, warm_start.init_sha256(init))
    resume_plan = choose_resume(config, root, checkpoint_dir, run, args.world_size)
    apply_resume_plan(resume_plan, checkpoint_dir, run, is_main)
    resume_from = resume_plan.checkpoint

    callbacks = _callbacks(
        config, model, method, plan.total_steps, metrics_dir if use_dvclive else None, resume_from
    )
    mlflow_cb = make_mlflow_callback(config, root) if tc.report_to == "mlflow" else None
    trainer = AdapterTrainer(
        model=model,
        args=args,
        train_dataset=data.train,
        eval_dataset=data.eval,
        data_collator=(
            _collator(config, tokenizer, make_collator)
            if tc.objective == "sft"
            else objective.collator(tokenizer.pad_token_id)
        ),
        callbacks=[*callbacks, *([mlflow_cb] if mlflow_cb else []), *extra_callbacks],
        adapter_method=method,
        loraplus=loraplus_setting(config.train),
        objective=objective,
        reference_adapter=reference_adapter,
    )
    if config.model.task == "sequence_classification":
        # class losses are means over the batch; Trainer's token-count normalisation (and its DDP scaling
        # by the process count) would be wrong for models that ignore num_items_in_batch (e.g. BERT)
        trainer.model_accepts_loss_kwargs = False

    output = _fit(trainer, resume_from, checkpoint_dir, args.world_size, plan.total_steps)
    history = trainer.state.log_history
    summary: dict[str, Any] = {
        "output_dir": str(out_dir),
        "global_step": trainer.state.global_step,
        "train_loss": last_logged(history, "loss"),
        "train_loss_mean": output.training_loss,
        "eval_loss": final_eval_loss(trainer, history) if data.eval is not None else None,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "resumed_from": str(resume_from) if resume_from else None,
        "world_size": args.world_size,
        "written": is_main,
        "objective": tc.objective,
        "precomputed_reference": summary_reference,
    }
    if moe_kinds is not None:
        summary["adapted_tensors"] = moe_kinds
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    materialize_trainable(unwrapped)  # FSDP/ZeRO-3: whole adapter tensors before writing (every process)
    if is_main:
        manifest = build_manifest(
            config,
            root,
            data=data,
            method=method,
            trainer=trainer,
            plan=plan,
            hardware=hardware,
            summary=summary,
            wall_time_s=round(time.perf_counter() - started, 3),
        )
        if moe_kinds is not None:
            manifest["adapter"]["adapted_tensors"] = moe_kinds
        manifest["run_lineage"] = run["lineage"]  # raising train.epochs later: training/extend.py
        if init is not None:
            manifest["init_adapter"] = init
        if packing is not None:
            manifest["packing"] = packing
        write_output(out_dir, unwrapped, method, config, tokenizer, history, manifest)
        summary["adapter_sha256"] = manifest["adapter"]["sha256"]
        summary["manifest_path"] = str(out_dir / MANIFEST)
        if mlflow_cb is not None:
            mlflow_cb.log_adapter(out_dir)
        if not tc.keep_checkpoints:
            ckpts.remove_checkpoint_dir(checkpoint_dir)
    barrier()
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


# ------------------------------------------------------------------------------------------------ steps
def _directories(tc: TrainConfig, root: Path) -> tuple[Path, Path, Path]:
    """(output, checkpoint, metrics) directories; the checkpoints must not live inside the output."""
    out_dir = resolve(root, tc.output_dir)
    checkpoint_dir = resolve(root, tc.checkpoint_dir)
    metrics_dir = resolve(root, tc.metrics_dir)
    if out_dir.resolve() == checkpoint_dir.resolve() or checkpoint_dir.resolve().is_relative_to(
        out_dir.resolve()
    ):
        raise UserError(
            f"train.checkpoint_dir: {tc.checkpoint_dir!r} is inside train.output_dir ({tc.output_dir!r}); "
            "allowed: a separate directory (the output is replaced as a whole when training ends)"
        )
    return out_dir, checkpoint_dir, metrics_dir


def _arguments(tc: TrainConfig, data: PreparedData, checkpoint_dir: Path) -> tuple[Any, Any, dict[str, Any]]:
    """(TrainingArguments, step plan, hardware) for this machine and process count; `hardware` holds
    the device, precision and determinism as resolved here (they go into the manifest)."""
    from peft_framework.training.arguments import (
        build_training_arguments,
        device_kind,
        is_deterministic,
        plan_steps,
        resolve_precision,
    )

    device = device_kind()
    hardware = {
        "device": device,
        "precision": resolve_precision(tc.precision, device),
        "deterministic": is_deterministic(tc, device),
    }
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    plan = plan_steps(tc, len(data.train), world_size)
    args = build_training_arguments(
        tc,
        checkpoint_dir=checkpoint_dir,
        has_eval=data.eval is not None,
        plan=plan,
        precision=hardware["precision"],
        deterministic=hardware["deterministic"],
        world_size=world_size,
    )
    return args, plan, hardware


def _use_dvclive(tc: TrainConfig) -> bool:
    """Whether to log with dvclive per `train.report_to`; UserError when asked for and not installed."""
    from peft_framework.training.callbacks import dvclive_available, mlflow_available

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
    return tc.report_to == "dvclive" or (tc.report_to in ("auto", "mlflow") and dvclive_available())


def _model_with_adapter(
    config: Config, label_names: list[str] | None
) -> tuple[torch.nn.Module, Any, Any, Config]:
    """(model with the adapter injected, tokenizer, adapter method, config). Seeded: head and adapter
    initialisations come from the global RNG. With `model.add_tokens` the returned config's adapter trains
    the new tokens' rows (`trainable_token_indices`), and is what the adapter is saved with."""
    from transformers import set_seed

    from peft_framework.adapters import registry
    from peft_framework.models.added_tokens import with_token_rows
    from peft_framework.models.loading import load_base_model, load_tokenizer
    from peft_framework.training.kbit import prepare_kbit_training

    set_seed(config.train.seed)
    tokenizer = load_tokenizer(config.model)
    model = load_base_model(config.model, label_names=label_names, tokenizer=tokenizer)
    prepare_kbit_training(model, config.train.gradient_checkpointing)  # quantized bases only (QLoRA)
    adapter = with_token_rows(config.adapter, model, tokenizer, config.model.add_tokens)
    config = config.model_copy(update={"adapter": adapter})
    router_aux_loss(model, config.train.router_aux_loss_coef)
    method = registry.get(config.adapter.type)
    method.inject(model, config.adapter)
    if config.model.task == "image_text_to_text":
        from peft_framework.models.vlm import freeze_vision_graph

        freeze_vision_graph(model)  # a vision tower that does not train keeps no activations
    if config.train.gradient_checkpointing and hasattr(model.config, "use_cache"):
        model.config.use_cache = False
    return model, tokenizer, method, config


def _refuse_vision_packing(config: Config) -> None:
    if config.model.task == "image_text_to_text" and config.train.packing:
        raise UserError(
            "train.packing: true does not fit image rows (model.task image_text_to_text): packed rows would "
            "need per-row isolation of attention and image features, which is not built; allowed: false"
        )


def _collator(config: Config, tokenizer: Any, make_collator: Any) -> Any:
    """The batch collator: the processor per batch for vision rows (training/vision_collator.py)."""
    if config.model.task != "image_text_to_text":
        return make_collator(config.train.packing, config.model.task, tokenizer.pad_token_id)
    from peft_framework.models.vision_batch import VisionCollator
    from peft_framework.models.vlm import load_processor

    processor = load_processor(config.model)
    processor.tokenizer = tokenizer  # the data's chat template and pad token
    return VisionCollator(processor)


REFERENCE_ADAPTER = "reference"


def _frozen_reference(
    model: torch.nn.Module, method: Any, config: Config, objective: Any, init: dict[str, Any] | None
) -> str | None:
    """With train.init_adapter and an objective that needs a reference, the reference is base + that adapter:
    a second, frozen adapter on the same layers holding a copy of its weights (the policy trains the first).
    Otherwise None: the reference is the adapter switched off."""
    if init is None or not objective.needs_reference:
        return None
    from peft_framework.adapters.base import DEFAULT_ADAPTER_NAME

    state = method.adapter_state_dict(model, DEFAULT_ADAPTER_NAME)
    method.inject(model, config.adapter, REFERENCE_ADAPTER)
    method.load_adapter_state_dict(model, {k: v.clone() for k, v in state.items()}, REFERENCE_ADAPTER)
    method.set_active(model, DEFAULT_ADAPTER_NAME)
    method.mark_trainable(model, DEFAULT_ADAPTER_NAME)
    log.info("train.objective %s: the reference is base + train.init_adapter, frozen", objective.name)
    return REFERENCE_ADAPTER


def _precomputed_reference(
    data: PreparedData, model, method, reference_adapter, objective, config: Config, root: Path, init
) -> PreparedData:
    """train.precompute_reference: the splits with the reference log-probs as columns (cached)."""
    import dataclasses

    from peft_framework.models.loading import load_tokenizer
    from peft_framework.training.reference_cache import reference_identity, with_reference_logps

    pad_id = load_tokenizer(config.model).pad_token_id or 0
    key_parts = (data.sha256, reference_identity(config, root, warm_start.init_sha256(init)))
    args = dict(
        model=model,
        method=method,
        adapter_name=reference_adapter,
        objective=objective,
        pad_token_id=pad_id,
        batch_size=config.train.eval_batch_size or config.train.batch_size,
    )
    train, _ = with_reference_logps(data.train, "train", key_parts=key_parts, root=root, **args)
    evaluation = None
    if data.eval is not None:
        evaluation, _ = with_reference_logps(data.eval, "validation", key_parts=key_parts, root=root, **args)
    return dataclasses.replace(data, train=train, eval=evaluation)


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


def _callbacks(
    config: Config,
    model: torch.nn.Module,
    method: Any,
    total_steps: int,
    dvclive_dir: Path | None,
    resume_from: Path | None,
) -> list[Any]:
    """The framework's callbacks: the adapter's own, early stopping, dvclive (when `dvclive_dir`)."""
    from transformers import EarlyStoppingCallback

    from peft_framework.training.callbacks import make_dvclive_callback

    tc = config.train
    callbacks: list[Any] = list(method.training_callbacks(model, config.adapter, total_steps))
    if tc.early_stopping_patience is not None:
        callbacks.append(EarlyStoppingCallback(tc.early_stopping_patience, tc.early_stopping_threshold))
    if dvclive_dir is not None:
        resume_step = ckpts.checkpoint_step(resume_from) if resume_from is not None else None
        callbacks.append(make_dvclive_callback(dvclive_dir, resume_step))
    return callbacks


def _fit(
    trainer: Any, resume_from: Path | None, checkpoint_dir: Path, world_size: int, total_steps: int
) -> Any:
    """`trainer.train` (or only the load of a checkpoint already at the last step), with a non-finite loss reported together with the last good checkpoint."""
    from peft_framework.training.trainer import NonFiniteLoss

    try:
        return ckpts.train_or_finish(trainer, resume_from, total_steps)
    except NonFiniteLoss as exc:
        good, _ = ckpts.last_complete_checkpoint(checkpoint_dir, world_size)
        where = (
            f"The last good checkpoint is {good.path} (step {good.step}); nothing newer was saved."
            if good
            else "No checkpoint was saved before it."
        )
        raise NonFiniteLoss(f"{exc} {where}", step=exc.step, value=exc.value) from None
