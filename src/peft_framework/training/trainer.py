"""`AdapterTrainer`: transformers' Trainer with the three things an injected adapter needs.

1. Checkpoints hold the trainable tensors only (the adapter and its module copies), not the whole model,
   and resume / best-model loading copy them back exactly (Trainer only knows how to do this for
   HuggingFace peft's PeftModel). Callbacks can checkpoint tensors of their own (see CALLBACK_STATE_DIR).
2. The adapter type's `extra_loss` (e.g. AdaLoRA's orthogonal regulariser) is added to the training loss.
3. A NaN/inf loss stops the run with `StageFailed` naming the step, before the optimizer step and before
   any checkpoint of that step, so the last checkpoint on disk is a good one.
4. LoRA+ (`loraplus=`): the Trainer's optimizer class and kwargs, with peft's LoRA+ parameter groups.
5. `train.objective` (training/objectives/): an objective other than SFT computes the loss and its metrics
   (TRL's names, averaged over each logging interval) from the policy and, where needed, the reference: the
   same model with the adapter switched off (or the frozen `reference_adapter`), dropout off, no grad.
6. An online objective (GRPO) generates and scores completions for each optimizer step's window of prompt
   batches before the step (`get_batch_samples` -> `objective.prepare_window`), and its sampled completions
   go to callbacks that show them (`on_completions`) at each log.
7. `train.group_by_length`: the Trainer's own LengthGroupedSampler, given the lengths from Arrow or the
   packing plan (`packing.example_lengths`): without them it reads every example once before the first
   step (about 100 s per 100,000 packs).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import Trainer

from peft_framework.adapters.base import AdapterMethod
from peft_framework.adapters.state_dict import check_state_dict
from peft_framework.errors import AdapterError, StageFailed
from peft_framework.training import loraplus as loraplus_groups
from peft_framework.training.checkpoints import CALLBACK_STATE_DIR, TRAINABLE_WEIGHTS, write_checksums
from peft_framework.training.distributed import check_strategy_applied, gather_full, scatter_full
from peft_framework.training.kbit import allow_quantized_training

log = logging.getLogger(__name__)


class NonFiniteLoss(StageFailed):
    """The training loss became NaN or inf."""

    def __init__(self, message: str, step: int, value: float) -> None:
        super().__init__(message)
        self.step = step
        self.value = value


class AdapterTrainer(Trainer):
    def __init__(
        self,
        *args: Any,
        adapter_method: AdapterMethod,
        loraplus: loraplus_groups.LoraPlus | None = None,
        objective: Any = None,
        reference_adapter: str | None = None,
        **kwargs: Any,
    ) -> None:
        self.adapter_method = adapter_method
        self.loraplus = loraplus
        self.objective = objective
        self.reference_adapter = reference_adapter  # None: the reference is the adapter switched off
        self._objective_metrics: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        #: LoRA+ groups as built ({group: tensors, parameters, lr, weight_decay}), for the manifest
        self.loraplus_groups: dict[str, dict[str, Any]] | None = None
        self._router_aux_losses: list[float] = []  # train.router_aux_loss_coef: values since the last log
        with allow_quantized_training(kwargs.get("model", args[0] if args else None)):
            super().__init__(*args, **kwargs)
        check_strategy_applied(self.args, self.accelerator.state)
        if objective is not None and objective.mean_over_batch:
            self.model_accepts_loss_kwargs = False  # a mean over pairs: Trainer scales it for accumulation

    # --- samplers ---------------------------------------------------------------------------------
    def _length_grouped(self, dataset: Any, batch_size: int, generator: Any = None) -> Any | None:
        """The sampler transformers builds for group_by_length, with lengths it need not read example by
        example; None when they are not known cheaply (the Trainer then decides as usual)."""
        from transformers.trainer_pt_utils import LengthGroupedSampler

        from peft_framework.training.packing import example_lengths

        if self.args.train_sampling_strategy != "group_by_length" or dataset is None:
            return None
        lengths = example_lengths(dataset)
        if lengths is None:
            return None
        return LengthGroupedSampler(batch_size, dataset=dataset, lengths=lengths, generator=generator)

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        dataset = self.train_dataset if train_dataset is None else train_dataset
        batch = self.args.train_batch_size * self.args.gradient_accumulation_steps
        sampler = self._length_grouped(dataset, batch) or super()._get_train_sampler(train_dataset)
        repeats = getattr(self.objective, "repeat_batches", 1)
        if repeats > 1:  # GRPO's num_iterations: each window of prompts trained on `repeats` times
            from peft_framework.training.samplers import RepeatWindows

            sampler = RepeatWindows(sampler, batch * self.args.world_size, repeats)
        return sampler

    def _get_eval_sampler(self, eval_dataset: Any) -> Any:
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        generator = torch.Generator().manual_seed(seed)  # as transformers' own eval sampler
        sampler = self._length_grouped(eval_dataset, self.args.eval_batch_size, generator)
        return sampler or super()._get_eval_sampler(eval_dataset)

    # --- optimizer -------------------------------------------------------------------------------
    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        if self.loraplus is None or self.optimizer is not None:
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        groups = loraplus_groups.param_groups(
            opt_model, lr=self.args.learning_rate, plus=self.loraplus, weight_decay=self.args.weight_decay
        )
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        optimizer_kwargs = {k: v for k, v in optimizer_kwargs.items() if k != "lr"}
        self.optimizer = optimizer_cls(groups, lr=self.args.learning_rate, **optimizer_kwargs)
        self.loraplus_groups = loraplus_groups.describe(groups)
        return self.optimizer

    # --- online objectives: the generation step ----------------------------------------------------
    def get_batch_samples(self, epoch_iterator: Any, num_batches: int, device: Any) -> tuple[list, Any]:
        batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        if batches and hasattr(self.objective, "prepare_window"):
            batches = self._prepare_window(batches, training=True)
        return batches, num_items

    def _prepare_window(self, batches: list[dict[str, Any]], training: bool) -> list[dict[str, Any]]:
        def sum_across(t: torch.Tensor) -> torch.Tensor:
            if self.args.world_size == 1:
                return t
            return self.accelerator.reduce(t.to(self.args.device), reduction="sum").cpu()

        return self.objective.prepare_window(
            self.model,
            batches,
            self.reference,
            self.state.global_step,
            training=training,
            rank=self.args.process_index,
            sum_across=sum_across,
            num_processes=self.args.world_size,
        )

    # --- loss ------------------------------------------------------------------------------------
    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ):
        custom = self._objective_loss(model, inputs)
        if custom is not None:
            result = (custom, None) if return_outputs else custom
        else:
            router_aux = model.training and self._logs_router_aux(model)
            result = super().compute_loss(
                model,
                inputs,
                return_outputs=return_outputs or router_aux,
                num_items_in_batch=num_items_in_batch,
            )
            if router_aux:  # MoE with train.router_aux_loss_coef: the model added it to the loss; log it too
                loss, outputs = result
                aux = outputs.get("aux_loss") if hasattr(outputs, "get") else None
                if aux is not None:
                    self._router_aux_losses.append(float(aux.detach()))
                result = (loss, outputs) if return_outputs else loss
        if not model.training:
            return result
        extra = self.adapter_method.extra_loss(self.accelerator.unwrap_model(model))
        if extra is None:
            return result
        loss, outputs = result if return_outputs else (result, None)
        if self.model_accepts_loss_kwargs and num_items_in_batch is not None:
            # the task loss is already normalised over the whole accumulated batch, so Trainer will not
            # divide by the accumulation steps: the regulariser must be, to count once per optimizer step
            extra = extra / self.current_gradient_accumulation_steps
        loss = loss + extra.to(loss.device, loss.dtype)
        return (loss, outputs) if return_outputs else loss

    def _logs_router_aux(self, model: nn.Module) -> bool:
        config = getattr(self.accelerator.unwrap_model(model), "config", None)
        return bool(getattr(config, "output_router_logits", False))

    # --- objectives (DPO, KTO, ...) ---------------------------------------------------------------
    def _objective_loss(self, model: nn.Module, inputs: dict[str, Any]) -> torch.Tensor | None:
        if self.objective is None:
            return None
        result = self.objective.compute_loss(model, inputs, self.reference)
        if result is None:
            return None
        loss, metrics = result
        mode = "train" if model.training else "eval"
        for name, value in metrics.items():
            value = self.accelerator.gather_for_metrics(value.detach().reshape(1).float())
            self._objective_metrics[mode][name].append(float(value.mean()))
        return loss

    def reference(self) -> contextlib.AbstractContextManager[None]:
        """The model as the reference: the adapter off (or `reference_adapter` active), dropout off."""
        from peft_framework.training.objectives.base import as_reference

        model = self.accelerator.unwrap_model(self.model)
        return as_reference(model, self.adapter_method, self.reference_adapter)

    def prediction_step(
        self, model: nn.Module, inputs: dict[str, Any], prediction_loss_only: bool, ignore_keys: Any = None
    ) -> tuple[torch.Tensor | None, Any, Any]:
        if self.objective is None or self.objective.name == "sft":
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        if hasattr(self.objective, "prepare_window"):  # online: generate and score the batch first
            was_training = model.training
            inputs = self._prepare_window([inputs], training=False)[0]
            model.train(was_training)
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Adds the objective's metrics, averaged since the last log, as TRL's trainers do."""
        mode = "train" if "loss" in logs else "eval"
        metrics = self._objective_metrics.pop(mode, {})
        prefix = "eval_" if mode == "eval" else ""
        logs = {**logs, **{f"{prefix}{k}": sum(v) / len(v) for k, v in metrics.items() if v}}
        pop_samples = getattr(self.objective, "pop_samples", None)
        samples = pop_samples() if pop_samples is not None and mode == "train" else []
        if samples:  # sampled completions with their rewards, for callbacks that show them
            for callback in self.callback_handler.callbacks:
                show = getattr(callback, "on_completions", None)
                if callable(show):
                    show(self.args, self.state, samples)
        losses = getattr(self, "_router_aux_losses", None)
        if (
            losses and "loss" in logs
        ):  # MoE run weighting the load-balancing loss: its mean since the last log
            logs = {**logs, "router_aux_loss": round(sum(losses) / len(losses), 6)}
            losses.clear()
        super().log(logs, start_time)

    def training_step(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None
    ) -> torch.Tensor:
        loss = super().training_step(model, inputs, num_items_in_batch)
        bad = (~torch.isfinite(loss)).any().to(torch.int32)
        if (
            self.args.world_size > 1
            and torch.distributed.is_available()
            and torch.distributed.is_initialized()
        ):
            bad = bad.to(self.args.device)  # every process stops together, whichever one saw it
            torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
        if bool(bad):
            step = self.state.global_step + 1
            value = float(loss.float().mean()) if loss.numel() else float("nan")
            seen = f"{value}" if not math.isfinite(value) else "nan/inf in another process"
            raise NonFiniteLoss(
                f"train: the loss became {seen} at step {step} (epoch {self.state.epoch or 0:.2f}); "
                "training stopped before that step's update. Lower train.learning_rate "
                f"(now {self.args.learning_rate:g}), "
                f"use train.precision fp32 or bf16, or check the data.",
                step=step,
                value=value,
            )
        return loss

    # --- checkpoints -----------------------------------------------------------------------------
    def _trainable(self, model: nn.Module | None = None) -> dict[str, nn.Parameter]:
        model = self.accelerator.unwrap_model(model if model is not None else self.model)
        return {name: p for name, p in model.named_parameters() if p.requires_grad}

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Under FSDP or DeepSpeed, gather the trainable tensors only (every process takes part), not the
        whole model as Trainer would; then write them from the main process."""
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:
            self._save(output_dir, state_dict=gather_full(self._trainable()))
            return
        super().save_model(output_dir, _internal_call=_internal_call)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """A step checkpoint's weights: the trainable tensors under their in-memory names (safetensors).

        Not the peft-format adapter: some types save a transformed adapter (AdaLoRA cuts its matrices to the
        ranks kept so far) that cannot be trained on from; this is the exact training state, for any type.
        Callbacks with `checkpoint_state()` have their tensors saved beside it. Only the main process writes.
        `state_dict`: the trainable tensors already gathered whole (sharded runs, see `save_model`).
        """
        output_dir = Path(output_dir if output_dir is not None else self.args.output_dir)
        if not self.args.should_save:
            return
        output_dir.mkdir(parents=True, exist_ok=True)
        if state_dict is None:
            state_dict = self._trainable()
        tensors = {name: p.detach().to("cpu").contiguous().clone() for name, p in state_dict.items()}
        save_file(tensors, str(output_dir / TRAINABLE_WEIGHTS), metadata={"format": "pt"})
        written = [output_dir / TRAINABLE_WEIGHTS]
        for callback in self.callback_handler.callbacks:
            get_state = getattr(callback, "checkpoint_state", None)
            if callable(get_state):
                state = {k: v.detach().to("cpu").contiguous() for k, v in get_state().items()}
                (output_dir / CALLBACK_STATE_DIR).mkdir(exist_ok=True)
                file = output_dir / CALLBACK_STATE_DIR / f"{type(callback).__name__}.safetensors"
                save_file(state, str(file))
                written.append(file)
        write_checksums(output_dir, written)

    @torch.no_grad()
    def _load_trainable(self, checkpoint: str | os.PathLike[str], model: nn.Module | None = None) -> None:
        path = Path(checkpoint) / TRAINABLE_WEIGHTS
        if not path.is_file():
            raise AdapterError(f"{checkpoint}: no {TRAINABLE_WEIGHTS}; not a checkpoint of this framework")
        state = load_file(str(path), device="cpu")
        params = self._trainable(model)
        check_state_dict(
            params, state, str(path), "the model's trainable parameters (another adapter config?)"
        )
        scatter_full(params, state)  # sharded parameters take their slice of the whole tensor

    def _load_callback_states(self, checkpoint: str | os.PathLike[str]) -> None:
        for callback in self.callback_handler.callbacks:
            load_state = getattr(callback, "load_checkpoint_state", None)
            file = Path(checkpoint) / CALLBACK_STATE_DIR / f"{type(callback).__name__}.safetensors"
            if callable(load_state) and file.is_file():
                load_state(load_file(str(file), device="cpu"))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        log.info("loading the trainable weights from %s", resume_from_checkpoint)
        self._load_trainable(resume_from_checkpoint, model)
        self._load_callback_states(resume_from_checkpoint)

    def _load_best_model(self) -> None:
        best = self.state.best_model_checkpoint
        log.info("loading the best weights from %s (eval_loss %s)", best, self.state.best_metric)
        self._load_trainable(best)
