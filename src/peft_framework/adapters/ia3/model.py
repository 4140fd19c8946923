"""Put (IA)³ adapters into a model, switch between them, and map their tensors to peft's on-disk keys.

Bookkeeping lives in a plain dict on the model (`model._peft_framework_ia3`); the model stays a normal
transformers model with some linear layers swapped for `IA3Linear`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from torch import nn

from peft_framework.adapters.ia3.config import IA3Config
from peft_framework.adapters.ia3.layer import IA3Linear
from peft_framework.adapters.lora.layer import ModulesToSave
from peft_framework.adapters.lora.model import effective_modules_to_save, resolve_modules_to_save
from peft_framework.adapters.model_state import adapter_state, find_record, wrapper_paths
from peft_framework.adapters.model_state import base_module_paths as shared_base_module_paths
from peft_framework.adapters.model_state import inside as _inside
from peft_framework.adapters.targeting import (
    LINEAR_TYPES,
    find_targets,
    name_matches,
    replace_module,
    short_names,
)
from peft_framework.errors import AdapterError

STATE_ATTR = "_peft_framework_ia3"
DISK_PREFIX = "base_model.model."

#: peft's TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING (0.21), used when target_modules is null
DEFAULT_TARGETS: dict[str, list[str]] = {
    "t5": ["k", "v", "wo"],
    "mt5": ["k", "v", "wi_1"],
    "gpt2": ["c_attn", "mlp.c_proj"],
    "bloom": ["query_key_value", "mlp.dense_4h_to_h"],
    "roberta": ["key", "value", "output.dense"],
    "opt": ["q_proj", "k_proj", "fc2"],
    "gptj": ["q_proj", "v_proj", "fc_out"],
    "gpt_neox": ["query_key_value", "dense_4h_to_h"],
    "gpt_neo": ["q_proj", "v_proj", "c_proj"],
    "bart": ["q_proj", "v_proj", "fc2"],
    "gpt_bigcode": ["c_attn", "mlp.c_proj"],
    "llama": ["k_proj", "v_proj", "down_proj"],
    "llama4": ["q_proj", "v_proj", "down_proj"],
    "mistral": ["k_proj", "v_proj", "down_proj"],
    "mixtral": ["k_proj", "v_proj", "w2"],
    "bert": ["key", "value", "output.dense"],
    "deberta-v2": ["key_proj", "value_proj", "output.dense"],
    "deberta": ["in_proj", "output.dense"],
    "falcon": ["query_key_value", "dense_4h_to_h"],
    "phi": ["q_proj", "v_proj", "fc2"],
    "gemma": ["q_proj", "v_proj", "down_proj"],
    "gemma2": ["q_proj", "v_proj", "down_proj"],
    "gemma3_text": ["q_proj", "v_proj", "down_proj"],
    "qwen2": ["q_proj", "v_proj", "down_proj"],
    "qwen3": ["q_proj", "v_proj", "down_proj"],
}
#: peft's TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING (0.21)
DEFAULT_FEEDFORWARD: dict[str, list[str]] = {
    "t5": ["wo"],
    "mt5": [],
    "gpt2": ["mlp.c_proj"],
    "bloom": ["mlp.dense_4h_to_h"],
    "roberta": ["output.dense"],
    "opt": ["fc2"],
    "gptj": ["fc_out"],
    "gpt_neox": ["dense_4h_to_h"],
    "gpt_neo": ["c_proj"],
    "bart": ["fc2"],
    "gpt_bigcode": ["mlp.c_proj"],
    "llama": ["down_proj"],
    "llama4": ["down_proj"],
    "mistral": ["down_proj"],
    "mixtral": ["w2"],
    "bert": ["output.dense"],
    "deberta-v2": ["output.dense"],
    "deberta": ["output.dense"],
    "falcon": ["dense_4h_to_h"],
    "phi": ["fc2"],
    "gemma": ["down_proj"],
    "gemma2": ["down_proj"],
    "gemma3_text": ["down_proj"],
    "qwen2": ["down_proj"],
    "qwen3": ["down_proj"],
}


@dataclass
class IA3Record:
    config: IA3Config
    targets: list[str]
    feedforward: list[str]
    target_modules: str | list[str]  # as resolved (user's value or the architecture default)
    feedforward_modules: str | list[str]
    saved_modules: list[str] = field(default_factory=list)
    merged: bool = False


def _state(model: nn.Module) -> dict:
    return adapter_state(model, STATE_ATTR)


def records(model: nn.Module) -> dict[str, IA3Record]:
    return _state(model)["adapters"]


def record(model: nn.Module, adapter_name: str) -> IA3Record:
    return find_record(records(model), adapter_name, "IA3")


def active_adapter(model: nn.Module) -> str | None:
    return _state(model)["active"]


_WRAPPERS = (IA3Linear, ModulesToSave)


def _wrapper_paths(model: nn.Module) -> list[str]:
    return wrapper_paths(model, _WRAPPERS)


def base_module_paths(model: nn.Module) -> list[str]:
    return shared_base_module_paths(model, _WRAPPERS)


# --------------------------------------------------------------------------------------------- targets
def _model_type(model: nn.Module) -> str | None:
    return getattr(getattr(model, "config", None), "model_type", None)


def resolve_modules(model: nn.Module, config: IA3Config) -> tuple[str | list[str], str | list[str]]:
    """(target_modules, feedforward_modules) with nulls replaced by the architecture's defaults (peft's)."""
    model_type = _model_type(model)
    targets, feedforward = config.target_modules, config.feedforward_modules
    if targets is None:
        if model_type not in DEFAULT_TARGETS:
            raise AdapterError(
                f"adapter.target_modules: null has no default for model type {model_type!r} (defaults exist for "
                f"{', '.join(sorted(DEFAULT_TARGETS))}); allowed: module names or a regex"
            )
        targets = DEFAULT_TARGETS[model_type]
    if feedforward is None:
        if model_type not in DEFAULT_FEEDFORWARD:
            raise AdapterError(
                f"adapter.feedforward_modules: null has no default for model type {model_type!r}; allowed: the "
                f"target module names that should be scaled on their input (e.g. ['down_proj']), or []"
            )
        feedforward = DEFAULT_FEEDFORWARD[model_type]
    return targets, feedforward


def is_feedforward(path: str, feedforward_modules: str | list[str]) -> bool:
    """peft's rule: a regex full-matches the path; a list entry is a plain suffix of it."""
    if isinstance(feedforward_modules, str):
        return re.fullmatch(feedforward_modules, path) is not None
    return any(path.endswith(key) for key in feedforward_modules)


def resolve_targets(model: nn.Module, config: IA3Config, target_modules: str | list[str]) -> list[str]:
    wrappers = _wrapper_paths(model)
    paths = find_targets(
        model, target_modules, config.exclude_modules, allowed_types=(*LINEAR_TYPES, IA3Linear)
    )
    paths = [p for p in paths if not _inside(p, wrappers)]
    if not paths:
        raise AdapterError(
            f"adapter.target_modules: {target_modules!r} matches only adapter-internal modules; "
            f"allowed: names or patterns of the base model's linear layers"
        )
    return paths


def saved_target_modules(model: nn.Module, rec: IA3Record) -> str | list[str]:
    """peft's `target_modules` value that selects exactly the adapted modules."""
    view = base_module_paths(model)
    excluded = rec.config.exclude_modules

    def reproduces(pattern: str | list[str]) -> bool:
        chosen = {
            p for p in view if name_matches(p, pattern) and not (excluded and name_matches(p, excluded))
        }
        return chosen == set(rec.targets)

    if rec.target_modules != "all-linear" and reproduces(rec.target_modules):
        return sorted(rec.target_modules) if isinstance(rec.target_modules, list) else rec.target_modules
    short = short_names(rec.targets)
    if reproduces(short):
        return short
    return sorted(rec.targets)


def saved_feedforward_modules(rec: IA3Record, saved_targets: str | list[str]) -> str | list[str]:
    """peft's `feedforward_modules` value selecting exactly the input-side targets. peft wants a list to be a
    subset of a list `target_modules`; when the user's list is not, the exact paths are written as a regex."""
    value = rec.feedforward_modules
    if isinstance(value, str):
        return value
    value = sorted(value)
    if not value or not isinstance(saved_targets, list) or set(value) <= set(saved_targets):
        return value
    return "|".join(re.escape(p) for p in rec.feedforward) if rec.feedforward else []


# ----------------------------------------------------------------------------------------- injection
def inject(model: nn.Module, config: IA3Config, adapter_name: str) -> IA3Record:
    adapters = records(model)
    if adapter_name in adapters:
        raise AdapterError(f"adapter name {adapter_name!r} is already used on this model; pick another name")
    _check_nothing_merged(model, except_name=None, action=f"add adapter {adapter_name!r}")
    target_modules, feedforward_modules = resolve_modules(model, config)
    targets = resolve_targets(model, config, target_modules)
    feedforward = [p for p in targets if is_feedforward(p, feedforward_modules)]
    saved = resolve_modules_to_save(model, effective_modules_to_save(model, config), targets)
    for path in targets:
        layer = model.get_submodule(path)
        if not isinstance(layer, IA3Linear):
            layer = IA3Linear(layer)
            replace_module(model, path, layer)
        layer.add_adapter(adapter_name, is_feedforward=path in feedforward, init_ones=config.init_ia3_weights)
    for path in saved:
        module = model.get_submodule(path)
        if not isinstance(module, ModulesToSave):
            module = ModulesToSave(module)
            replace_module(model, path, module)
        module.add_adapter(adapter_name)
    rec = IA3Record(
        config=config,
        targets=targets,
        feedforward=feedforward,
        target_modules=target_modules,
        feedforward_modules=feedforward_modules,
        saved_modules=saved,
    )
    adapters[adapter_name] = rec
    set_active(model, adapter_name)
    mark_trainable(model, adapter_name)
    return rec


def set_active(model: nn.Module, adapter_name: str | None) -> None:
    adapters = records(model)
    if adapter_name is not None and adapter_name not in adapters:
        raise AdapterError(
            f"no IA3 adapter named {adapter_name!r} on this model; allowed: {sorted(adapters)} or None"
        )
    _check_nothing_merged(model, except_name=adapter_name, action=f"activate {adapter_name!r}")
    for module in model.modules():
        if isinstance(module, (IA3Linear, ModulesToSave)):
            module.set_adapter(adapter_name)
    _state(model)["active"] = adapter_name


def _check_nothing_merged(model: nn.Module, except_name: str | None, action: str) -> None:
    merged = [n for n, rec in records(model).items() if rec.merged and n != except_name]
    if merged:
        raise AdapterError(
            f"cannot {action} while adapter {merged[0]!r} is merged into the base weights; unmerge it first"
        )


def mark_trainable(model: nn.Module, adapter_name: str) -> None:
    keep = {id(t) for t in adapter_tensors(model, adapter_name).values()}
    for param in model.parameters():
        param.requires_grad = id(param) in keep


def adapter_tensors(model: nn.Module, adapter_name: str) -> dict[str, nn.Parameter]:
    """The adapter's parameters under peft's keys without the 'base_model.model.' prefix."""
    record(model, adapter_name)
    out: dict[str, nn.Parameter] = {}
    for path, module in model.named_modules():
        if isinstance(module, IA3Linear) and adapter_name in module.ia3_l:
            out[f"{path}.ia3_l"] = module.ia3_l[adapter_name]
        elif isinstance(module, ModulesToSave) and adapter_name in module.modules_to_save:
            for name, param in module.modules_to_save[adapter_name].named_parameters():
                out[f"{path}.{name}"] = param
    return out


# ----------------------------------------------------------------------------------------------- merge
def merge(model: nn.Module, adapter_name: str, exact: bool = False) -> None:
    set_active(model, adapter_name)
    rec = record(model, adapter_name)
    if rec.merged:
        raise AdapterError(f"adapter {adapter_name!r} is already merged")
    for path in rec.targets:
        model.get_submodule(path).merge(adapter_name, exact=exact)
    rec.merged = True


def unmerge(model: nn.Module, adapter_name: str) -> None:
    rec = record(model, adapter_name)
    for path in rec.targets:
        model.get_submodule(path).unmerge(adapter_name)
    rec.merged = False


def unload(model: nn.Module) -> nn.Module:
    merged = [n for n, rec in records(model).items() if rec.merged]
    for path, module in list(model.named_modules()):
        if isinstance(module, IA3Linear):
            replace_module(model, path, module.base_layer)
        elif isinstance(module, ModulesToSave):
            copy_name = next((n for n in merged if n in module.modules_to_save), None)
            replace_module(
                model, path, module.modules_to_save[copy_name] if copy_name else module.original_module
            )
    model.__dict__.pop(STATE_ATTR, None)
    return model
