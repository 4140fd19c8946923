"""AdaLoRA (Zhang et al. 2023): SVD-form low-rank updates whose ranks are pruned during training by
importance, with checkpoints in HuggingFace peft's format (peft_type ADALORA).

    method = AdaLoraMethod()
    method.inject(model, AdaLoraConfig(init_r=12, target_r=4, target_modules=["q_proj", "v_proj"]))
    # training: the Trainer gets method.training_callbacks(...) (rank allocator) and adds
    # method.extra_loss(model) (orthogonal regulariser) to the loss; peft users call these by hand.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import pydantic
import torch
from torch import nn

from peft_framework.adapters.adalora import model as ada_model
from peft_framework.adapters.adalora.config import AdaLoraConfig
from peft_framework.adapters.adalora.layer import SVDLinear
from peft_framework.adapters.base import DEFAULT_ADAPTER_NAME, AdapterMethod
from peft_framework.adapters.lora.model import effective_modules_to_save
from peft_framework.config.schema import AdapterConfigBase
from peft_framework.errors import AdapterError, ConfigError

__all__ = ["AdaLoraConfig", "AdaLoraMethod", "SVDLinear"]

log = logging.getLogger(__name__)

# peft config keys whose non-default values change the maths in ways this implementation does not follow
_UNSUPPORTED_UNLESS: dict[str, tuple[Any, ...]] = {
    "use_dora": (False, None),
    "bias": ("none", None),
    "alpha_pattern": ({}, None),
    "layers_to_transform": (None, []),
    "lora_bias": (False, None),
    "target_parameters": (None, []),
    "trainable_token_indices": (None, {}, []),
    "layer_replication": (None, []),
    "use_qalora": (False, None),
    "megatron_config": (None, {}),
}


def _config(config: AdapterConfigBase) -> AdaLoraConfig:
    if not isinstance(config, AdaLoraConfig):
        raise AdapterError(
            f"adapter.type: AdaLoRA needs an AdaLoraConfig, got {type(config).__name__} ({config.type!r})"
        )
    return config


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


def _listify(value: Any) -> Any:
    return sorted(value) if isinstance(value, (list, tuple, set)) else value


class AdaLoraMethod(AdapterMethod):
    name: ClassVar[str] = "adalora"
    config_class: ClassVar[type[AdapterConfigBase]] = AdaLoraConfig
    peft_type: ClassVar[str | None] = "ADALORA"
    mergeable: ClassVar[bool] = True
    quantized_bases: ClassVar[bool] = True  # wraps bitsandbytes 4-/8-bit linears (adapters/base_layers.py)
    description: ClassVar[str] = (
        "AdaLoRA: SVD-form low-rank updates, ranks pruned by importance during training (peft-compatible)"
    )
    #: a module whose every rank was pruned saves 0-row tensors, exactly as peft does
    may_save_empty_tensors: ClassVar[bool] = True

    # --- building -------------------------------------------------------------------------------
    def inject(
        self, model: nn.Module, config: AdapterConfigBase, adapter_name: str = DEFAULT_ADAPTER_NAME
    ) -> None:
        ada_model.inject(model, _config(config), adapter_name)

    # --- checkpoints ----------------------------------------------------------------------------
    def adapter_state_dict(
        self, model: nn.Module, adapter_name: str = DEFAULT_ADAPTER_NAME
    ) -> dict[str, torch.Tensor]:
        return {ada_model.DISK_PREFIX + k: t for k, t in ada_model.saved_tensors(model, adapter_name).items()}

    @torch.no_grad()
    def load_adapter_state_dict(
        self, model: nn.Module, state_dict: dict[str, torch.Tensor], adapter_name: str = DEFAULT_ADAPTER_NAME
    ) -> None:
        """Copy a checkpoint into the adapter. A checkpoint cut to k < init_r kept ranks (what `save_adapter`
        writes once ranks were pruned) also loads into a full, unpruned adapter (Trainer resume): the k
        triplets go to ranks 0..k-1 and the other ranks are masked (Λ = 0). The update is a sum over
        triplets, so the model computes exactly what was saved; only the triplets' order changes."""
        rec = ada_model.record(model, adapter_name)
        params = {
            ada_model.DISK_PREFIX + k: p for k, p in ada_model.adapter_tensors(model, adapter_name).items()
        }
        missing = sorted(set(params) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(params))
        if missing or unexpected:
            raise AdapterError(
                f"AdaLoRA checkpoint does not fit adapter {adapter_name!r}",
                [f"missing: {k}" for k in missing[:10]] + [f"unexpected: {k}" for k in unexpected[:10]],
            )
        cut: dict[str, int] = {}  # target path -> kept ranks, for checkpoint triplets fewer than the model's
        wrong = []
        for key, param in params.items():
            shape, expected = tuple(state_dict[key].shape), tuple(param.shape)
            if shape == expected:
                continue
            path, _, kind = key[len(ada_model.DISK_PREFIX) :].rpartition(".")
            rank_dim = 1 if kind == "lora_B" else 0
            other = 1 - rank_dim
            if (
                kind in ("lora_A", "lora_E", "lora_B")
                and not rec.pruned
                and shape[other] == expected[other]
                and shape[rank_dim] < expected[rank_dim]
                and cut.setdefault(path, shape[rank_dim]) == shape[rank_dim]
            ):
                continue
            wrong.append(f"{key}: checkpoint {shape}, model {expected}")
        for path, k in cut.items():
            prefix = f"{ada_model.DISK_PREFIX}{path}."
            ranks = {
                state_dict[prefix + "lora_A"].shape[0],
                state_dict[prefix + "lora_E"].shape[0],
                state_dict[prefix + "lora_B"].shape[1],
            }
            if ranks != {k}:
                wrong.append(
                    f"{path}: lora_A/lora_E/lora_B disagree on the number of ranks ({sorted(ranks)})"
                )
        if wrong:
            raise AdapterError("AdaLoRA checkpoint tensor shapes do not fit the model", wrong[:10])
        for key, param in params.items():
            path, _, kind = key[len(ada_model.DISK_PREFIX) :].rpartition(".")
            if path in cut and kind in ("lora_A", "lora_E", "lora_B"):
                k = cut[path]
                if kind == "lora_B":
                    param[:, :k].copy_(state_dict[key])
                else:
                    param[:k].copy_(state_dict[key])
                if kind == "lora_E":
                    param[k:].zero_()
            else:
                param.copy_(state_dict[key])
        if cut:
            rec.rank_pattern = {
                path: [i < cut.get(path, layer.r[adapter_name]) for i in range(layer.r[adapter_name])]
                for path, layer in ada_model.layers(model, adapter_name).items()
            }

    def validate_for_save(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Refuse adapters that cannot come from a real AdaLoRA: P (lora_A) is never all zero after init."""
        a_keys = [k for k in state_dict if k.endswith(".lora_A") and state_dict[k].numel() > 0]
        if a_keys and all(not bool(state_dict[k].any()) for k in a_keys):
            raise AdapterError(
                "refusing to save AdaLoRA adapter: every lora_A matrix is all zeros (sharded parameters, e.g. "
                "DeepSpeed ZeRO-3, must be gathered before saving)"
            )

    def _find_record(self, model: nn.Module, config: AdaLoraConfig) -> tuple[str, ada_model.AdaLoraRecord]:
        adapters = ada_model.records(model)
        active = ada_model.active_adapter(model)
        matches = [n for n, rec in adapters.items() if rec.config == config]
        if not matches:
            raise AdapterError(
                "saved_config: this AdaLoRA config belongs to no adapter injected into the model"
            )
        name = active if active in matches else matches[0]
        return name, adapters[name]

    def saved_config(
        self,
        config: AdapterConfigBase,
        *,
        base_model_name_or_path: str | None,
        task_type: str | None,
        model: nn.Module,
    ) -> dict[str, Any]:
        config = _config(config)
        name, rec = self._find_record(model, config)
        total_step = rec.total_step or config.total_step or (config.tinit + config.tfinal + 1)
        saved: dict[str, Any] = {
            "peft_type": self.peft_type,
            "task_type": task_type,
            "base_model_name_or_path": base_model_name_or_path,
            "revision": None,
            "inference_mode": True,
            "r": 8,  # unused by AdaLoRA (peft warns when it is not its default 8)
            "lora_alpha": _number(config.alpha),
            "lora_dropout": config.dropout,
            "target_modules": ada_model.saved_target_modules(model, config, rec.targets),
            "bias": "none",
            "use_rslora": False,
            "use_dora": False,
            "init_lora_weights": True,
            "modules_to_save": effective_modules_to_save(model, config),
            "fan_in_fan_out": any(model.get_submodule(p).fan_in_fan_out for p in rec.targets),
            "layers_to_transform": None,
            "layers_pattern": None,
            "alpha_pattern": {},
            "init_r": config.init_r,
            "target_r": config.target_r,
            "tinit": config.tinit,
            "tfinal": config.tfinal,
            "deltaT": config.deltaT,
            "beta1": config.beta1,
            "beta2": config.beta2,
            "orth_reg_weight": config.orth_reg_weight,
            "total_step": total_step,
            "rank_pattern": ada_model.saved_rank_pattern(model, name),
        }
        if config.exclude_modules is not None:
            saved["exclude_modules"] = config.exclude_modules
        return saved

    def config_from_saved(self, saved: dict[str, Any]) -> AdapterConfigBase:
        problems = [
            f"{key}={saved[key]!r} (allowed: {allowed[0]!r})"
            for key, allowed in _UNSUPPORTED_UNLESS.items()
            if key in saved and saved[key] not in allowed
        ]
        if saved.get("target_modules") is None:
            problems.append("target_modules=None (allowed: a list of module names or a regex)")
        if problems:
            raise AdapterError(
                "adapter_config.json uses AdaLoRA features this framework does not support", problems
            )
        fields = {
            "init_r": saved.get("init_r", 12),
            "target_r": saved.get("target_r", 8),
            "alpha": saved.get("lora_alpha", 8),
            "dropout": saved.get("lora_dropout", 0.0),
            "tinit": saved.get("tinit", 0),
            "tfinal": saved.get("tfinal", 0),
            "deltaT": saved.get("deltaT", 1),
            "beta1": saved.get("beta1", 0.85),
            "beta2": saved.get("beta2", 0.85),
            "orth_reg_weight": saved.get("orth_reg_weight", 0.5),
            "total_step": saved.get("total_step"),
            "rank_pattern": saved.get("rank_pattern") or None,
            "target_modules": _listify(saved["target_modules"]),
            "exclude_modules": _listify(saved.get("exclude_modules")),
            "modules_to_save": saved.get("modules_to_save"),
        }
        try:
            return AdaLoraConfig(**fields)
        except pydantic.ValidationError as exc:
            raise AdapterError(
                "adapter_config.json has invalid AdaLoRA values",
                [
                    f"{'.'.join(map(str, e['loc'])) or 'config'}={e.get('input')!r}: {e['msg']}"
                    for e in exc.errors()
                ],
            ) from exc

    # --- merge ----------------------------------------------------------------------------------
    def merge(self, model: nn.Module, adapter_name: str = DEFAULT_ADAPTER_NAME) -> None:
        ada_model.merge(model, adapter_name)

    def unmerge(self, model: nn.Module, adapter_name: str = DEFAULT_ADAPTER_NAME) -> None:
        ada_model.unmerge(model, adapter_name)

    def unload(self, model: nn.Module) -> nn.Module:
        return ada_model.unload(model)

    # --- multi-adapter --------------------------------------------------------------------------
    def set_active(self, model: nn.Module, adapter_name: str | None) -> None:
        ada_model.set_active(model, adapter_name)

    def adapter_names(self, model: nn.Module) -> list[str]:
        return list(ada_model.records(model))

    def active_adapter(self, model: nn.Module) -> str | None:
        return ada_model.active_adapter(model)

    # --- training hooks -------------------------------------------------------------------------
    def training_callbacks(self, model: nn.Module, config: AdapterConfigBase, total_steps: int) -> list[Any]:
        """The rank allocator for the active adapter, run after every optimizer step."""
        from peft_framework.adapters.adalora.allocator import AdaLoraCallback, RankAllocator

        config = _config(config)
        name = ada_model.active_adapter(model)
        if name is None:
            raise AdapterError("AdaLoRA training needs an active adapter; inject one first")
        rec = ada_model.record(model, name)
        if rec.pruned:
            log.warning(
                "AdaLoRA adapter %r was loaded already cut to its rank_pattern: its ranks stay fixed (no allocation)",
                name,
            )
            return []
        total_step = config.total_step or total_steps
        if config.tinit >= total_step - config.tfinal:
            source = "adapter.total_step" if config.total_step else "the run's optimizer steps"
            problem = (
                f"adapter.tinit + adapter.tfinal ({config.tinit} + {config.tfinal}) must be smaller than "
                f"{source} ({total_step}) so that AdaLoRA has a budgeting phase"
            )
            raise ConfigError("invalid config", [problem])
        rec.total_step = total_step
        return [AdaLoraCallback(RankAllocator(model, name, total_step))]

    def extra_loss(self, model: nn.Module) -> torch.Tensor | None:
        """orth_reg_weight x the orthogonal regulariser of the active adapter (None when there is none)."""
        name = ada_model.active_adapter(model)
        if name is None:
            return None
        rec = ada_model.record(model, name)
        if rec.merged or rec.config.orth_reg_weight == 0:
            return None
        reg = ada_model.orthogonal_regularization(model, name)
        return None if reg is None else rec.config.orth_reg_weight * reg
