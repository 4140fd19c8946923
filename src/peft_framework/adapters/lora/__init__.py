"""LoRA (Hu et al. 2021): our own layers, checkpoints in HuggingFace peft's format.

from peft_framework.adapters.lora import LoraConfig, LoraMethod
method = LoraMethod()
method.inject(model, LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
"""

from __future__ import annotations

from typing import Any, ClassVar

import pydantic
import torch
from torch import nn

from peft_framework.adapters.base import DEFAULT_ADAPTER_NAME, AdapterMethod
from peft_framework.adapters.lora import model as lora_model
from peft_framework.adapters.lora.config import LoraConfig
from peft_framework.adapters.lora.layer import LoraLinear, ModulesToSave
from peft_framework.adapters.lora.model import DISK_PREFIX, combine_adapters
from peft_framework.config.schema import AdapterConfigBase
from peft_framework.errors import AdapterError

__all__ = ["LoraConfig", "LoraLinear", "LoraMethod", "ModulesToSave", "combine_adapters"]

# peft config keys whose non-default values change the maths in ways this implementation does not
# reproduce: loading such an adapter is refused instead of silently computing something else.
_UNSUPPORTED_UNLESS: dict[str, tuple[Any, ...]] = {
    "use_dora": (False, None),
    "rank_pattern": ({}, None),
    "alpha_pattern": ({}, None),
    "layers_to_transform": (None, []),
    "lora_bias": (False, None),
    "target_parameters": (None, []),
    "trainable_token_indices": (None, {}, []),
    "layer_replication": (None, []),
    "use_qalora": (False, None),
    "alora_invocation_tokens": (None, []),
    "use_bdlora": (None, False),
    "megatron_config": (None, {}),
}
_INIT_FROM_PEFT = {True: "kaiming", False: "kaiming", "gaussian": "gaussian"}
_INIT_TO_PEFT = {"kaiming": True, "gaussian": "gaussian"}


def _config(config: AdapterConfigBase) -> LoraConfig:
    if not isinstance(config, LoraConfig):
        raise AdapterError(
            f"adapter.type: LoRA needs a LoraConfig, got {type(config).__name__} ({config.type!r})"
        )
    return config


class LoraMethod(AdapterMethod):
    name: ClassVar[str] = "lora"
    config_class: ClassVar[type[AdapterConfigBase]] = LoraConfig
    peft_type: ClassVar[str | None] = "LORA"
    mergeable: ClassVar[bool] = True
    quantized_bases: ClassVar[bool] = True  # wraps bitsandbytes 4-/8-bit linears (adapters/base_layers.py)
    description: ClassVar[str] = "LoRA: low-rank updates B·A on linear layers (peft-compatible checkpoints)"

    # --- building -------------------------------------------------------------------------------
    def inject(
        self, model: nn.Module, config: AdapterConfigBase, adapter_name: str = DEFAULT_ADAPTER_NAME
    ) -> None:
        lora_model.inject_lora(model, _config(config), adapter_name)

    # --- checkpoints ----------------------------------------------------------------------------
    def adapter_state_dict(
        self, model: nn.Module, adapter_name: str = DEFAULT_ADAPTER_NAME
    ) -> dict[str, torch.Tensor]:
        return {
            DISK_PREFIX + k: t.detach() for k, t in lora_model.adapter_tensors(model, adapter_name).items()
        }

    @torch.no_grad()
    def load_adapter_state_dict(
        self, model: nn.Module, state_dict: dict[str, torch.Tensor], adapter_name: str = DEFAULT_ADAPTER_NAME
    ) -> None:
        params = {DISK_PREFIX + k: p for k, p in lora_model.adapter_tensors(model, adapter_name).items()}
        missing = sorted(set(params) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(params))
        if missing or unexpected:
            raise AdapterError(
                f"LoRA checkpoint does not fit adapter {adapter_name!r}: missing keys {missing[:10]}"
                f"{' ...' if len(missing) > 10 else ''}, unexpected keys {unexpected[:10]}"
                f"{' ...' if len(unexpected) > 10 else ''}"
            )
        for key, param in params.items():
            tensor = state_dict[key]
            if tensor.shape != param.shape:
                raise AdapterError(
                    f"LoRA checkpoint tensor {key!r} has shape {tuple(tensor.shape)}, the model expects "
                    f"{tuple(param.shape)}"
                )
            param.copy_(tensor)

    def validate_for_save(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Refuse adapters that cannot have come from a real LoRA (e.g. ZeRO-3 shards never gathered)."""
        a_keys = [k for k in state_dict if k.endswith("lora_A.weight")]
        bad = [k for k in a_keys if state_dict[k].dim() != 2 or state_dict[k].numel() == 0]
        if bad:
            raise AdapterError(
                f"refusing to save LoRA adapter: lora_A tensors are empty or not 2-D: {bad[:5]}"
            )
        if a_keys and all(not bool(state_dict[k].any()) for k in a_keys):
            raise AdapterError(
                "refusing to save LoRA adapter: every lora_A matrix is all zeros (A is never zero after init; "
                "this usually means sharded parameters, e.g. DeepSpeed ZeRO-3, were not gathered before saving)"
            )

    def saved_config(
        self,
        config: AdapterConfigBase,
        *,
        base_model_name_or_path: str | None,
        task_type: str | None,
        model: nn.Module,
    ) -> dict[str, Any]:
        config = _config(config)
        targets = lora_model.resolve_targets(model, config)
        alpha = int(config.alpha) if float(config.alpha).is_integer() else config.alpha
        saved: dict[str, Any] = {
            "peft_type": self.peft_type,
            "task_type": task_type,
            "base_model_name_or_path": base_model_name_or_path,
            "revision": None,
            "inference_mode": True,
            "r": config.r,
            "lora_alpha": alpha,
            "lora_dropout": config.dropout,
            "target_modules": lora_model.saved_target_modules(model, config, targets),
            "bias": config.bias,
            "use_rslora": config.use_rslora,
            "use_dora": False,
            "init_lora_weights": _INIT_TO_PEFT[config.init],
            "modules_to_save": lora_model.effective_modules_to_save(model, config),
            "fan_in_fan_out": any(model.get_submodule(p).fan_in_fan_out for p in targets),
            "layers_to_transform": None,
            "layers_pattern": None,
            "rank_pattern": {},
            "alpha_pattern": {},
        }
        if config.exclude_modules is not None:  # key only known to peft >= 0.14: written only when used
            saved["exclude_modules"] = config.exclude_modules
        return saved

    def config_from_saved(self, saved: dict[str, Any]) -> AdapterConfigBase:
        problems = [
            f"{key}={saved[key]!r} (allowed: {allowed[0]!r})"
            for key, allowed in _UNSUPPORTED_UNLESS.items()
            if key in saved and saved[key] not in allowed
        ]
        init = saved.get("init_lora_weights", True)
        if init not in _INIT_FROM_PEFT:
            problems.append(f"init_lora_weights={init!r} (allowed: true, false, 'gaussian')")
        if saved.get("target_modules") is None:
            problems.append("target_modules=None (allowed: a list of module names or a regex)")
        if problems:
            raise AdapterError(
                "adapter_config.json uses LoRA features this framework does not support", problems
            )
        fields = {
            "r": saved.get("r", 8),
            "alpha": saved.get("lora_alpha", 8),
            "dropout": saved.get("lora_dropout", 0.0),
            "use_rslora": saved.get("use_rslora", False),
            "bias": saved.get("bias", "none"),
            "init": _INIT_FROM_PEFT[init],
            "target_modules": _listify(saved["target_modules"]),
            "exclude_modules": _listify(saved.get("exclude_modules")),
            "modules_to_save": saved.get("modules_to_save"),
        }
        try:
            return LoraConfig(**fields)
        except pydantic.ValidationError as exc:
            raise AdapterError(
                "adapter_config.json has invalid LoRA values",
                [f"{'.'.join(map(str, e['loc']))}={e.get('input')!r}: {e['msg']}" for e in exc.errors()],
            ) from exc

    # --- merge ----------------------------------------------------------------------------------
    def merge(
        self, model: nn.Module, adapter_name: str = DEFAULT_ADAPTER_NAME, *, exact: bool = False
    ) -> None:
        """Fold `adapter_name` into the base weights (it becomes the active adapter). With exact=True the
        pre-merge weights are kept so that unmerge restores them bit for bit (costs their memory)."""
        lora_model.merge(model, adapter_name, exact=exact)

    def unmerge(self, model: nn.Module, adapter_name: str = DEFAULT_ADAPTER_NAME) -> None:
        lora_model.unmerge(model, adapter_name)

    def unload(self, model: nn.Module) -> nn.Module:
        return lora_model.unload(model)

    # --- multi-adapter --------------------------------------------------------------------------
    def set_active(self, model: nn.Module, adapter_name: str | None) -> None:
        lora_model.set_active(model, adapter_name)

    def adapter_names(self, model: nn.Module) -> list[str]:
        return list(lora_model.records(model))

    def active_adapter(self, model: nn.Module) -> str | None:
        return lora_model.active_adapter(model)


def _listify(value: Any) -> Any:
    """peft writes sets as lists, in arbitrary order; keep strings (regexes) as they are."""
    return sorted(value) if isinstance(value, (list, tuple, set)) else value
