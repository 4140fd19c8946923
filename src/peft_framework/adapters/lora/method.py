"""LoRA's `AdapterMethod`: its config, checkpoint names and json (HuggingFace peft's, peft_type LORA)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from peft_framework.adapters.base import DEFAULT_ADAPTER_NAME
from peft_framework.adapters.lora import init as lora_init
from peft_framework.adapters.lora.config import LoraConfig
from peft_framework.adapters.lora.layer import LoraLinear
from peft_framework.adapters.lora.params import LoraParams
from peft_framework.adapters.lora.patterns import check_patterns_used
from peft_framework.adapters.method import LORA_FAMILY_UNSUPPORTED, AdapterRecord, WrapperMethod, listify
from peft_framework.adapters.modules_to_save import ModulesToSave
from peft_framework.adapters.param_targeting import (
    find_param_targets,
    saved_target_parameters,
    short_param_name,
)
from peft_framework.adapters.targeting import (
    ALL_LINEAR,
    inside,
    replace_module,
    saved_target_modules,
)
from peft_framework.config.schema import AdapterConfigBase
from peft_framework.errors import AdapterError
from peft_framework.models.moe import is_moe, linear_routers, routed_expert_params

_UNSUPPORTED_UNLESS = {
    # LoRA has DoRA (dora.py) and trainable tokens (adapters/trainable_tokens.py)
    **{
        k: v
        for k, v in LORA_FAMILY_UNSUPPORTED.items()
        if k not in ("use_dora", "trainable_token_indices", "target_parameters", "alpha_pattern")
    },
    "alora_invocation_tokens": (None, []),
    "use_bdlora": (None, False),
}
_INIT_FROM_PEFT = {True: "kaiming", False: "kaiming", "gaussian": "gaussian"}
_INIT_TO_PEFT = {"kaiming": True, "gaussian": "gaussian"}
_SAVED_AS_PLAIN_LORA = (
    "adapter.init {init!r} trains on a residual base weight; the adapter is saved converted to a plain LoRA of "
    "rank {r2} (r={r} doubled, alpha doubled, same update) relative to the ORIGINAL base model, so "
    "peft.PeftModel.from_pretrained(original_base, dir) and export reproduce the trained model"
)


def _number(value: float) -> int | float:
    """An alpha as peft writes it: an int where it is one."""
    return int(value) if float(value).is_integer() else value


@dataclass
class LoraRecord(AdapterRecord):
    """Also the parameters adapted directly (`adapter.target_parameters`): wrapper path -> parameter names."""

    params: dict[str, list[str]] = field(default_factory=dict)


class LoraMethod(WrapperMethod):
    name, label, peft_type = "lora", "LoRA", "LORA"
    config_class, layer_class, mergeable = LoraConfig, LoraLinear, True
    extra_layer_classes = (LoraParams,)
    quantized_bases = True  # wraps bitsandbytes 4-/8-bit linears (adapters/layer.py)
    never_all_zero = "lora_A.weight"  # A starts random, B at zero
    description = "LoRA: low-rank updates B·A on linear layers (peft-compatible checkpoints)"

    # --- targets: modules (LoraLinear) and parameters (LoraParams) ------------------------------------
    def plan(self, model: nn.Module, config: AdapterConfigBase) -> LoraRecord:
        """Modules as every type selects them; parameters from `target_parameters`. On an MoE base,
        `all-linear` and the default (null) also adapt every routed expert weight: routed experts are
        parameters, not linears, and must never be skipped without a word."""
        config = self.check_config(config)
        modules, params = config.target_modules, config.target_parameters
        if params is None and modules in (None, ALL_LINEAR) and is_moe(model):
            params = sorted({short_param_name(p) for p in routed_expert_params(model)})
        if modules is None and config.target_parameters is not None:
            targets: list[str] = []  # peft: target_parameters alone adapts only those
        else:
            modules = self.default_targets(model) if modules is None else modules
            targets = self.module_targets(model, config, modules)
            if modules == ALL_LINEAR:  # a router that is a linear (Llama4) stays frozen unless named
                routers = set(linear_routers(model))
                targets = [t for t in targets if t not in routers]
        found = find_param_targets(model, params, LoraParams) if params else {}
        clash = sorted(set(found) & set(targets))
        if clash:
            raise AdapterError(
                f"adapter.target_parameters: {clash[0]!r} is also selected by adapter.target_modules; allowed: "
                "adapt a module either whole (target_modules) or through its parameters, not both"
            )
        adapted = [*targets, *(f"{path}.{name}" for path, names in found.items() for name in names)]
        check_patterns_used(config.rank_pattern, config.alpha_pattern, adapted)
        return LoraRecord(config=config, targets=targets, params=found)

    def wrapped_paths(self, record: LoraRecord) -> list[str]:
        return [*record.targets, *record.params]

    def inject_extra(self, model: nn.Module, adapter_name: str, record: LoraRecord) -> None:
        c: LoraConfig = record.config
        for path, names in record.params.items():
            layer = model.get_submodule(path)
            if not isinstance(layer, LoraParams):
                layer = LoraParams(layer)
                replace_module(model, path, layer)
            ranks = {name: c.rank_alpha(f"{path}.{name}") for name in names}
            layer.add_adapter(adapter_name, ranks, c.dropout, c.use_rslora, c.init)
            layer.train(layer.base.training)

    def param_names(self, model: nn.Module, record: LoraRecord) -> set[str]:
        """Full names (as in the base model) of the parameters adapted directly."""
        return {f"{path}.{name}" for path, names in record.params.items() for name in names}

    def add_to_layer(self, layer: LoraLinear, adapter_name: str, record: AdapterRecord, path: str) -> None:
        c: LoraConfig = record.config
        r, alpha = c.rank_alpha(path)
        layer.add_adapter(adapter_name, r, alpha, c.dropout, c.use_rslora, c.init, use_dora=c.use_dora)

    def layer_tensors(
        self, layer: LoraLinear | LoraParams, adapter_name: str, record: AdapterRecord
    ) -> dict[str, nn.Parameter]:
        if isinstance(layer, LoraParams):  # peft's nested ParamWrapper keys
            out = {}
            for name in layer.params_of(adapter_name):
                prefix = layer.saved_prefix(adapter_name, name)
                out[f"{prefix}lora_A.weight"] = layer.lora_A[adapter_name][name].weight
                out[f"{prefix}lora_B.weight"] = layer.lora_B[adapter_name][name].weight
            return out
        out = {
            "lora_A.weight": layer.lora_A[adapter_name].weight,
            "lora_B.weight": layer.lora_B[adapter_name].weight,
        }
        if adapter_name in layer.lora_magnitude_vector:  # DoRA; peft's key has no '.weight'
            out["lora_magnitude_vector"] = layer.lora_magnitude_vector[adapter_name]
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

    def adapter_state_dict(
        self, model: nn.Module, adapter_name: str = DEFAULT_ADAPTER_NAME
    ) -> dict[str, torch.Tensor]:
        """peft's on-disk tensors. A PiSSA/OLoRA adapter comes out converted: [A; A₀] and [B, −B₀], the plain
        rank-2r LoRA of the same update on the ORIGINAL base weight (init.py)."""
        state = super().adapter_state_dict(model, adapter_name)
        if not lora_init.mutates_base(self.record(model, adapter_name).config.init):
            return state
        for path, layer in self.layers(model, adapter_name).items():
            a0, b0 = layer.initial_lora[adapter_name]
            a_key, b_key = (
                f"{self.disk_prefix}{path}.lora_A.weight",
                f"{self.disk_prefix}{path}.lora_B.weight",
            )
            state[a_key], state[b_key] = lora_init.converted_tensors(state[a_key], state[b_key], a0, b0)
        return state

    def unload(self, model: nn.Module) -> nn.Module:
        """As the base's, but a PiSSA/OLoRA layer not merged gets its original weight back first."""
        merged = {n for n, rec in self.records(model).items() if rec.merged}
        for module in model.modules():
            if isinstance(module, LoraLinear):
                for name in [n for n in module.initial_lora if n not in merged]:
                    module.restore_base(name)
        return super().unload(model)

    def manifest_extra(self, config: AdapterConfigBase) -> dict[str, Any]:
        """What the train manifest records about this adapter's variant and saved form."""
        config = self.check_config(config)
        extra: dict[str, Any] = {"use_dora": config.use_dora, "init": config.init}
        if config.dropout and config.target_parameters:
            extra["saved_as"] = (
                f"lora_dropout {config.dropout} trained, saved as 0.0: peft refuses dropout with target_parameters "
                "(it only acts in training)"
            )
        if lora_init.mutates_base(config.init):
            r2, _ = lora_init.converted_r_alpha(config.r, config.alpha, config.use_rslora)
            extra["saved_as"] = _SAVED_AS_PLAIN_LORA.format(init=config.init, r=config.r, r2=r2)
        return extra

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
        r, alpha = config.r, config.alpha
        rank_pattern, alpha_pattern = dict(config.rank_pattern or {}), dict(config.alpha_pattern or {})
        init = _INIT_TO_PEFT.get(config.init, True)  # PiSSA/OLoRA are saved converted: a plain LoRA
        if lora_init.mutates_base(config.init):  # every rank doubles, every alpha so that the scaling stays
            r, alpha = lora_init.converted_r_alpha(r, alpha, config.use_rslora)
            rank_pattern = {k: 2 * v for k, v in rank_pattern.items()}
            alpha_pattern = {
                k: lora_init.converted_r_alpha(1, v, config.use_rslora)[1] for k, v in alpha_pattern.items()
            }
        alpha = _number(alpha)
        saved: dict[str, Any] = {
            "r": r,
            "lora_alpha": alpha,
            "lora_dropout": config.dropout,
            "target_modules": saved_target_modules(
                model, record.targets, config.exclude_modules, [user] if isinstance(user, str) else []
            )
            if record.targets
            else None,
            "bias": config.bias,
            "use_rslora": config.use_rslora,
            "use_dora": config.use_dora,
            "init_lora_weights": init,
            "fan_in_fan_out": self.fan_in_fan_out(model, record),
            "layers_to_transform": None,
            "layers_pattern": None,
            "rank_pattern": rank_pattern,
            "alpha_pattern": {k: _number(v) for k, v in alpha_pattern.items()},
        }
        if config.exclude_modules is not None:  # key only known to peft >= 0.14: written only when used
            saved["exclude_modules"] = config.exclude_modules
        if config.trainable_token_indices:  # peft >= 0.15: written only when used
            saved["trainable_token_indices"] = config.trainable_token_indices
        if record.params:  # peft >= 0.17: written only when used
            saved["target_parameters"] = saved_target_parameters(
                model, self.param_names(model, record), LoraParams, config.target_parameters
            )
            # peft's ParamWrapper refuses lora_dropout != 0 at load; dropout only acts in training, and the
            # train manifest keeps the value trained with (manifest_extra)
            saved["lora_dropout"] = 0.0
        return saved

    def config_from_saved(self, saved: dict[str, Any]) -> AdapterConfigBase:
        init = saved.get("init_lora_weights", True)
        bad_init = (
            []
            if init in _INIT_FROM_PEFT
            else [f"init_lora_weights={init!r} (allowed: true, false, 'gaussian')"]
        )
        if isinstance(init, str) and lora_init.mutates_base(init):
            bad_init = [
                f"init_lora_weights={init!r}: an adapter saved relative to a PiSSA/OLoRA residual (allowed: true, "
                "false, 'gaussian'; save it with peft's path_initial_model_for_weight_conversion to get a plain "
                "LoRA on the original base, as this framework does)"
            ]
        params = saved.get("target_parameters") or None
        required = () if params else ("target_modules",)
        common = self.fields_from_saved(saved, _UNSUPPORTED_UNLESS, required, *bad_init)
        return self.config_from_fields(
            {
                **common,
                "r": saved.get("r", 8),
                "alpha": saved.get("lora_alpha", 8),
                "dropout": saved.get("lora_dropout", 0.0),
                "use_rslora": saved.get("use_rslora", False),
                "use_dora": bool(saved.get("use_dora") or False),
                "bias": saved.get("bias", "none"),
                "init": _INIT_FROM_PEFT[init],
                "trainable_token_indices": saved.get("trainable_token_indices") or None,
                "target_parameters": listify(params),
                "rank_pattern": saved.get("rank_pattern") or None,
                "alpha_pattern": saved.get("alpha_pattern") or None,
            }
        )
