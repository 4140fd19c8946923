"""LoRA's `AdapterMethod`: its config, checkpoint names and json (HuggingFace peft's, peft_type LORA)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from peft_framework.adapters.lora.config import LoraConfig
from peft_framework.adapters.lora.layer import LoraLinear
from peft_framework.adapters.method import AdapterRecord, WrapperMethod
from peft_framework.adapters.modules_to_save import ModulesToSave
from peft_framework.adapters.targeting import inside, saved_target_modules
from peft_framework.config.schema import AdapterConfigBase
from peft_framework.errors import AdapterError

#: peft config keys of the LoRA family (LoRA, AdaLoRA) whose non-default values change the maths in ways
#: this implementation does not reproduce: loading such an adapter is refused instead of silently computing
#: something else.
LORA_FAMILY_UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "use_dora": (False, None),
    "alpha_pattern": ({}, None),
    "layers_to_transform": (None, []),
    "lora_bias": (False, None),
    "target_parameters": (None, []),
    "trainable_token_indices": (None, {}, []),
    "layer_replication": (None, []),
    "use_qalora": (False, None),
    "megatron_config": (None, {}),
}
_UNSUPPORTED_UNLESS = {
    **LORA_FAMILY_UNSUPPORTED,
    "rank_pattern": ({}, None),
    "alora_invocation_tokens": (None, []),
    "use_bdlora": (None, False),
}
_INIT_FROM_PEFT = {True: "kaiming", False: "kaiming", "gaussian": "gaussian"}
_INIT_TO_PEFT = {"kaiming": True, "gaussian": "gaussian"}


class LoraMethod(WrapperMethod):
    name, label, peft_type = "lora", "LoRA", "LORA"
    config_class, layer_class, mergeable = LoraConfig, LoraLinear, True
    quantized_bases = True  # wraps bitsandbytes 4-/8-bit linears (adapters/layer.py)
    never_all_zero = "lora_A.weight"  # A starts random, B at zero
    description = "LoRA: low-rank updates B·A on linear layers (peft-compatible checkpoints)"

    def add_to_layer(self, layer: LoraLinear, adapter_name: str, record: AdapterRecord, path: str) -> None:
        c: LoraConfig = record.config
        layer.add_adapter(adapter_name, c.r, c.alpha, c.dropout, c.use_rslora, c.init)

    def layer_tensors(
        self, layer: LoraLinear, adapter_name: str, record: AdapterRecord
    ) -> dict[str, nn.Parameter]:
        out = {
            "lora_A.weight": layer.lora_A[adapter_name].weight,
            "lora_B.weight": layer.lora_B[adapter_name].weight,
        }
        if record.config.bias == "lora_only" and layer.base_layer.bias is not None:
            out["base_layer.bias"] = layer.base_layer.bias
        return out

    def extra_tensors(self, model: nn.Module, record: AdapterRecord) -> dict[str, nn.Parameter]:
        """bias 'all': every bias of the base model (peft: names equal to or ending with 'bias')."""
        if record.config.bias != "all":
            return {}
        saved = [p for p, m in model.named_modules() if isinstance(m, ModulesToSave)]
        return {
            name: param
            for name, param in model.named_parameters()
            if (name == "bias" or name.endswith(".bias")) and not inside(name, saved)
        }

    def validate_for_save(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Refuse adapters that cannot have come from a real LoRA (e.g. ZeRO-3 shards never gathered)."""
        a_keys = [k for k in state_dict if k.endswith(self.never_all_zero)]
        bad = [k for k in a_keys if state_dict[k].dim() != 2 or state_dict[k].numel() == 0]
        if bad:
            raise AdapterError(
                f"refusing to save LoRA adapter: lora_A tensors are empty or not 2-D: {bad[:5]}"
            )
        super().validate_for_save(state_dict)

    def saved_fields(self, model: nn.Module, config: LoraConfig, record: AdapterRecord) -> dict[str, Any]:
        user = config.target_modules
        alpha = int(config.alpha) if float(config.alpha).is_integer() else config.alpha
        saved: dict[str, Any] = {
            "r": config.r,
            "lora_alpha": alpha,
            "lora_dropout": config.dropout,
            "target_modules": saved_target_modules(
                model, record.targets, config.exclude_modules, [user] if isinstance(user, str) else []
            ),
            "bias": config.bias,
            "use_rslora": config.use_rslora,
            "use_dora": False,
            "init_lora_weights": _INIT_TO_PEFT[config.init],
            "fan_in_fan_out": self.fan_in_fan_out(model, record),
            "layers_to_transform": None,
            "layers_pattern": None,
            "rank_pattern": {},
            "alpha_pattern": {},
        }
        if config.exclude_modules is not None:  # key only known to peft >= 0.14: written only when used
            saved["exclude_modules"] = config.exclude_modules
        return saved

    def config_from_saved(self, saved: dict[str, Any]) -> AdapterConfigBase:
        init = saved.get("init_lora_weights", True)
        bad_init = (
            []
            if init in _INIT_FROM_PEFT
            else [f"init_lora_weights={init!r} (allowed: true, false, 'gaussian')"]
        )
        common = self.fields_from_saved(saved, _UNSUPPORTED_UNLESS, ("target_modules",), *bad_init)
        return self.config_from_fields(
            {
                **common,
                "r": saved.get("r", 8),
                "alpha": saved.get("lora_alpha", 8),
                "dropout": saved.get("lora_dropout", 0.0),
                "use_rslora": saved.get("use_rslora", False),
                "bias": saved.get("bias", "none"),
                "init": _INIT_FROM_PEFT[init],
            }
        )
