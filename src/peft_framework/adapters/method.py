"""The base of adapter types whose adapters are wrapper layers swapped into the model (peft's `BaseTuner`,
small): inject, set_active, merge/unmerge/unload, trainable marking, checkpoint tensors and their check.

A type subclasses `WrapperMethod` and supplies only what is its own:

- `name`, `label`, `config_class`, `layer_class`, `peft_type`, `mergeable` (class attributes);
- `plan(model, config)`: which modules to wrap (an `AdapterRecord`; default: `adapter.target_modules`, or
  `default_targets` when null), and `add_to_layer`: what to add to each wrapper;
- `layer_tensors(layer, adapter_name, record)`: the adapter's tensors in one wrapper, under their checkpoint names;
- `saved_fields` / `config_from_saved` (its json), `never_all_zero`, and optionally training hooks.

Per-model bookkeeping (the adapters by name, which one is active) lives in a plain dict in the model's
`__dict__` (`model._peft_framework_<name>`), so the model stays a normal transformers model with some
modules swapped for wrappers; it is neither a submodule nor saved.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import pydantic
import torch
from torch import nn

from peft_framework.adapters.base import DEFAULT_ADAPTER_NAME, AdapterMethod
from peft_framework.adapters.layer import AdapterLayer
from peft_framework.adapters.modules_to_save import (
    ModulesToSave,
    effective_modules_to_save,
    resolve_modules_to_save,
)
from peft_framework.adapters.state_dict import check_state_dict
from peft_framework.adapters.targeting import ALL_LINEAR, replace_module, resolve_targets
from peft_framework.adapters.trainable_tokens import TrainableTokens, add_trainable_tokens, token_tensors
from peft_framework.config.schema import AdapterConfigBase
from peft_framework.errors import AdapterError
from peft_framework.models.parts import scoped_targets

#: peft's on-disk prefix (PeftModel -> <Type>Model -> the base model)
PEFT_PREFIX = "base_model.model."
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


@dataclass
class AdapterRecord:
    """One adapter on a model. Types with more to remember subclass it."""

    config: AdapterConfigBase
    targets: list[str]  # paths of the wrapped modules, in model order
    saved_modules: list[str] = field(default_factory=list)  # paths of its ModulesToSave wrappers
    token_layers: list[str] = field(default_factory=list)  # paths of its TrainableTokens wrappers
    merged: bool = False


class WrapperMethod(AdapterMethod):
    #: the type's name in messages ("LoRA")
    label: ClassVar[str]
    #: the wrapper this type puts around each target
    layer_class: ClassVar[type[AdapterLayer]]
    #: further wrappers of the type (LoRA's `LoraParams` for `adapter.target_parameters`), placed by `inject_extra`
    extra_layer_classes: ClassVar[tuple[type[AdapterLayer], ...]] = ()
    #: prefix of every on-disk tensor name
    disk_prefix: ClassVar[str] = PEFT_PREFIX
    #: name ending of saved tensors that are never all zero once initialised: all zero means sharded
    #: parameters (DeepSpeed ZeRO-3) were saved without being gathered
    never_all_zero: ClassVar[str | None] = None

    # --- what a type supplies ---------------------------------------------------------------------
    def default_targets(self, model: nn.Module) -> str | list[str]:
        """`target_modules` when the config leaves it null."""
        return ALL_LINEAR

    def plan(self, model: nn.Module, config: AdapterConfigBase) -> AdapterRecord:
        """The record of a new adapter: above all, the paths of the modules to wrap."""
        target_modules = config.target_modules
        if target_modules is None:
            target_modules = self.default_targets(model)
        return AdapterRecord(config=config, targets=self.module_targets(model, config, target_modules))

    def module_targets(self, model: nn.Module, config: AdapterConfigBase, target_modules: Any) -> list[str]:
        """Paths of the modules `target_modules` selects, scoped to a vision-language model's language model
        unless adapter.target_vision is set (models/parts.py)."""
        targets = resolve_targets(model, target_modules, config.exclude_modules, self.layer_class)
        targets = scoped_targets(model, targets, target_modules, getattr(config, "target_vision", False))
        if not targets:
            raise AdapterError(
                f"adapter.target_modules: {target_modules!r} matches only vision-tower or projector layers; "
                "allowed: language-model layers, adapter.target_vision: true for the vision tower, or "
                "adapter.modules_to_save for the projector"
            )
        return targets

    def wrap(self, module: nn.Module, path: str, record: AdapterRecord) -> AdapterLayer:
        return self.layer_class(module)

    def inject_extra(self, model: nn.Module, adapter_name: str, record: Any) -> None:
        """Place wrappers beyond `record.targets` (e.g. LoRA on parameters); none by default."""

    def wrapped_paths(self, record: Any) -> list[str]:
        """Paths of every wrapper holding the adapter of `record` (its targets and `inject_extra`'s)."""
        return record.targets

    def add_to_layer(self, layer: Any, adapter_name: str, record: Any, path: str) -> None:
        raise NotImplementedError

    def layer_tensors(self, layer: Any, adapter_name: str, record: Any) -> dict[str, nn.Parameter]:
        """Adapter `adapter_name`'s parameters in `layer`, by on-disk name relative to the layer's path."""
        raise NotImplementedError

    def extra_tensors(self, model: nn.Module, record: Any) -> dict[str, nn.Parameter]:
        """Further trainable base parameters that belong to the adapter (LoRA's `bias`)."""
        return {}

    def saved_fields(self, model: nn.Module, config: Any, record: Any) -> dict[str, Any]:
        """The type's own keys of `adapter_config.json` (peft's names for peft types)."""
        raise NotImplementedError

    # --- bookkeeping --------------------------------------------------------------------------------
    def _state(self, model: nn.Module) -> dict[str, Any]:
        attr = f"_peft_framework_{self.name}"
        if attr not in model.__dict__:
            model.__dict__[attr] = {"adapters": {}, "active": None}
        return model.__dict__[attr]

    def records(self, model: nn.Module) -> dict[str, Any]:
        """This type's adapters on `model`, by name (empty if none)."""
        return self._state(model)["adapters"]

    def record(self, model: nn.Module, adapter_name: str) -> Any:
        adapters = self.records(model)
        if adapter_name not in adapters:
            raise AdapterError(
                f"no {self.label} adapter named {adapter_name!r} on this model; allowed: {sorted(adapters)}"
            )
        return adapters[adapter_name]

    def adapter_names(self, model: nn.Module) -> list[str]:
        return list(self.records(model))

    def active_adapter(self, model: nn.Module) -> str | None:
        return self._state(model)["active"]

    def layers(self, model: nn.Module, adapter_name: str) -> dict[str, Any]:
        """Target path -> the wrapper holding adapter `adapter_name`."""
        return {
            path: model.get_submodule(path) for path in self.wrapped_paths(self.record(model, adapter_name))
        }

    def check_config(self, config: AdapterConfigBase) -> Any:
        if not isinstance(config, self.config_class):
            raise AdapterError(
                f"adapter.type: {self.label} needs a {self.config_class.__name__}, got "
                f"{type(config).__name__} ({config.type!r})"
            )
        return config

    # --- building -----------------------------------------------------------------------------------
    def inject(
        self, model: nn.Module, config: AdapterConfigBase, adapter_name: str = DEFAULT_ADAPTER_NAME
    ) -> None:
        config = self.check_config(config)
        adapters = self.records(model)
        if adapter_name in adapters:
            raise AdapterError(
                f"adapter name {adapter_name!r} is already used on this model; pick another name"
            )
        self._check_nothing_merged(model, None, f"add adapter {adapter_name!r}")
        record = self.plan(model, config)
        names = effective_modules_to_save(model, config)
        record.saved_modules = resolve_modules_to_save(model, names, self.wrapped_paths(record))
        for path in record.targets:
            layer = model.get_submodule(path)
            if not isinstance(layer, self.layer_class):
                layer = self.wrap(layer, path, record)
                replace_module(model, path, layer)
            self.add_to_layer(layer, adapter_name, record, path)
            layer.train(layer.base.training)  # new submodules follow the model's train/eval mode
        self.inject_extra(model, adapter_name, record)
        for path in record.saved_modules:
            module = model.get_submodule(path)
            if not isinstance(module, ModulesToSave):
                module = ModulesToSave(module)
                replace_module(model, path, module)
            module.add_adapter(adapter_name)
        token_indices = getattr(config, "trainable_token_indices", None)
        if token_indices:
            record.token_layers = add_trainable_tokens(model, adapter_name, token_indices)
        adapters[adapter_name] = record
        self.set_active(model, adapter_name)
        self.mark_trainable(model, adapter_name)

    def set_active(self, model: nn.Module, adapter_name: str | None) -> None:
        adapters = self.records(model)
        if adapter_name is not None and adapter_name not in adapters:
            raise AdapterError(
                f"no {self.label} adapter named {adapter_name!r} on this model; allowed: {sorted(adapters)} "
                f"or None"
            )
        self._check_nothing_merged(model, adapter_name, f"activate {adapter_name!r}")
        for module in model.modules():
            if isinstance(
                module, (self.layer_class, *self.extra_layer_classes, ModulesToSave, TrainableTokens)
            ):
                module.set_adapter(adapter_name)
        self._state(model)["active"] = adapter_name

    def _check_nothing_merged(self, model: nn.Module, except_name: str | None, action: str) -> None:
        merged = [n for n, rec in self.records(model).items() if rec.merged and n != except_name]
        if merged:
            raise AdapterError(
                f"cannot {action} while adapter {merged[0]!r} is merged into the base weights; unmerge it first"
            )

    def mark_trainable(self, model: nn.Module, adapter_name: str) -> None:
        """Only `adapter_name`'s tensors (and its module copies) require grad."""
        keep = {id(t) for t in self.adapter_tensors(model, adapter_name).values()}
        for param in model.parameters():
            param.requires_grad = id(param) in keep

    # --- checkpoints --------------------------------------------------------------------------------
    def adapter_tensors(self, model: nn.Module, adapter_name: str) -> dict[str, nn.Parameter]:
        """The adapter's parameters (full in-memory shapes) under their on-disk names without the prefix."""
        record = self.record(model, adapter_name)
        out: dict[str, nn.Parameter] = {}
        for path, layer in self.layers(model, adapter_name).items():
            for name, param in self.layer_tensors(layer, adapter_name, record).items():
                out[f"{path}.{name}"] = param
        for path in record.saved_modules:
            copy = model.get_submodule(path).modules_to_save[adapter_name]
            for name, param in copy.named_parameters():
                out[f"{path}.{name}"] = param
        out.update(token_tensors(model, record.token_layers, adapter_name))
        for name, param in self.extra_tensors(model, record).items():
            out.setdefault(name, param)
        return out

    def adapter_state_dict(
        self, model: nn.Module, adapter_name: str = DEFAULT_ADAPTER_NAME
    ) -> dict[str, torch.Tensor]:
        tensors = self.adapter_tensors(model, adapter_name).items()
        return {self.disk_prefix + k: t.detach() for k, t in tensors}

    @torch.no_grad()
    def load_adapter_state_dict(
        self, model: nn.Module, state_dict: dict[str, torch.Tensor], adapter_name: str = DEFAULT_ADAPTER_NAME
    ) -> None:
        params = {self.disk_prefix + k: p for k, p in self.adapter_tensors(model, adapter_name).items()}
        check_state_dict(params, state_dict, f"{self.label} checkpoint", f"adapter {adapter_name!r}")
        for key, param in params.items():
            param.copy_(state_dict[key])

    def validate_for_save(self, state_dict: dict[str, torch.Tensor]) -> None:
        suffix = self.never_all_zero
        keys = [k for k in state_dict if suffix and k.endswith(suffix) and state_dict[k].numel() > 0]
        if keys and all(not bool(state_dict[k].any()) for k in keys):
            raise AdapterError(
                f"refusing to save {self.label} adapter: every {suffix.strip('.')} tensor is all zeros (never "
                f"true once initialised: sharded parameters, e.g. DeepSpeed ZeRO-3, must be gathered before saving)"
            )

    def saved_config(
        self, config: AdapterConfigBase, *, model: nn.Module, adapter_name: str = DEFAULT_ADAPTER_NAME
    ) -> dict[str, Any]:
        config = self.check_config(config)
        fields = self.saved_fields(model, config, self.record(model, adapter_name))
        return {"modules_to_save": effective_modules_to_save(model, config), **fields}

    def fields_from_saved(
        self,
        saved: dict[str, Any],
        allowed: dict[str, tuple[Any, ...]],
        required: tuple[str, ...],
        *more: str,
    ) -> dict[str, Any]:
        """The config fields every peft type reads alike, after refusing what the type cannot compute:
        keys of `allowed` with other values, `required` keys that are null, and `more` problems."""
        problems = [
            f"{key}={saved[key]!r} (allowed: {values[0]!r})"
            for key, values in allowed.items()
            if key in saved and saved[key] not in values
        ]
        problems += [
            f"{k}=None (allowed: a list of module names or a regex)" for k in required if saved.get(k) is None
        ]
        if problems or more:
            raise AdapterError(
                f"adapter_config.json uses {self.label} features this framework does not support",
                [*problems, *more],
            )
        return {
            "target_modules": listify(saved["target_modules"]),
            "exclude_modules": listify(saved.get("exclude_modules")),
            "modules_to_save": saved.get("modules_to_save"),
        }

    def fan_in_fan_out(self, model: nn.Module, record: AdapterRecord) -> bool:
        return any(model.get_submodule(path).fan_in_fan_out for path in record.targets)

    def config_from_fields(self, fields: dict[str, Any]) -> AdapterConfigBase:
        """`config_class(**fields)` for a saved config; invalid values are an AdapterError naming each."""
        try:
            return self.config_class(**fields)
        except pydantic.ValidationError as exc:
            raise AdapterError(
                f"adapter_config.json has invalid {self.label} values",
                [
                    f"{'.'.join(map(str, e['loc'])) or 'config'}={e.get('input')!r}: {e['msg']}"
                    for e in exc.errors()
                ],
            ) from exc

    # --- merge --------------------------------------------------------------------------------------
    def merge(
        self, model: nn.Module, adapter_name: str = DEFAULT_ADAPTER_NAME, *, exact: bool = False
    ) -> None:
        if not self.mergeable:
            super().merge(model, adapter_name, exact=exact)
        self.set_active(model, adapter_name)  # also refuses when another adapter is merged
        record = self.record(model, adapter_name)
        if record.merged:
            raise AdapterError(f"adapter {adapter_name!r} is already merged")
        for layer in self.layers(model, adapter_name).values():
            layer.merge(adapter_name, exact=exact)
        for path in record.token_layers:
            model.get_submodule(path).merge(adapter_name)
        record.merged = True

    def unmerge(self, model: nn.Module, adapter_name: str = DEFAULT_ADAPTER_NAME) -> None:
        if not self.mergeable:
            super().unmerge(model, adapter_name)
        record = self.record(model, adapter_name)
        for layer in self.layers(model, adapter_name).values():
            layer.unmerge(adapter_name)
        for path in record.token_layers:
            model.get_submodule(path).unmerge(adapter_name)
        record.merged = False

    def unload(self, model: nn.Module) -> nn.Module:
        """Swap every wrapper back for its base module. Merged weights (and token rows) stay merged, and a merged adapter's
        trained module copies (modules_to_save) replace the originals; otherwise the originals come back."""
        merged = [n for n, rec in self.records(model).items() if rec.merged]
        for path, module in list(model.named_modules()):
            if isinstance(module, (self.layer_class, *self.extra_layer_classes, TrainableTokens)):
                replace_module(model, path, module.base)
            elif isinstance(module, ModulesToSave):
                copy_name = next((n for n in merged if n in module.modules_to_save), None)
                replace_module(model, path, module.modules_to_save[copy_name] if copy_name else module.base)
        model.__dict__.pop(f"_peft_framework_{self.name}", None)
        return model


def architecture_default(model: nn.Module, table: dict[str, Any], key: str, allowed: str) -> Any:
    """`table[model_type]`: a type's default for a config key left null (peft's per-architecture tables)."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in table:
        raise AdapterError(
            f"adapter.{key}: null has no default for model type {model_type!r} (defaults exist for "
            f"{', '.join(sorted(table))}); allowed: {allowed}"
        )
    return table[model_type]


def listify(value: Any) -> Any:
    """peft writes sets as lists, in arbitrary order; keep strings (regexes) as they are."""
    return sorted(value) if isinstance(value, (list, tuple, set)) else value
