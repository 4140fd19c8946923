"""Put AdaLoRA adapters into a model, switch between them, and map their tensors to peft's on-disk keys.

Per-model bookkeeping (adapters, configs, targets, the current rank pattern) lives in a plain dict on the
model (`model._peft_framework_adalora`); the model stays a normal transformers model with some linear
layers swapped for `SVDLinear` (and trained module copies for `modules_to_save`, shared with LoRA).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from peft_framework.adapters.adalora.config import AdaLoraConfig
from peft_framework.adapters.adalora.layer import SVDLinear
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

STATE_ATTR = "_peft_framework_adalora"
#: peft's on-disk prefix (PeftModel -> AdaLoraModel -> the base model)
DISK_PREFIX = "base_model.model."
RANK_KEY_SUFFIX = ".lora_E"

#: peft's TRANSFORMERS_MODELS_TO_ADALORA_TARGET_MODULES_MAPPING (0.21), used when target_modules is null
DEFAULT_TARGETS: dict[str, list[str]] = {
    "t5": ["q", "k", "v", "o", "wi", "wo"],
    "mt5": ["q", "k", "v", "o", "wi_0", "wi_1", "wo"],
    "bart": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
    "gpt2": ["c_attn"],
    "bloom": ["query_key_value"],
    "opt": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
    "gptj": ["q_proj", "v_proj"],
    "gpt_neox": ["query_key_value"],
    "gpt_neo": ["q_proj", "v_proj"],
    "llama": ["q_proj", "v_proj"],
    "llama4": ["q_proj", "v_proj"],
    "bert": ["query", "value"],
    "roberta": ["query", "key", "value", "dense"],
    "deberta-v2": ["query_proj", "key_proj", "value_proj", "dense"],
    "gpt_bigcode": ["c_attn"],
    "deberta": ["in_proj"],
    "gemma": ["q_proj", "v_proj"],
    "gemma2": ["q_proj", "v_proj"],
    "gemma3_text": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
    "qwen3": ["q_proj", "v_proj"],
}


@dataclass
class AdaLoraRecord:
    config: AdaLoraConfig
    targets: list[str]
    saved_modules: list[str] = field(default_factory=list)
    merged: bool = False
    #: kept ranks per target path (init_r booleans); None until the allocator first masks
    rank_pattern: dict[str, list[bool]] | None = None
    #: True when the layers were built already cut to `rank_pattern` (a loaded, pruned checkpoint)
    pruned: bool = False
    #: the budget schedule's length as used by training (config.total_step or the run's step count)
    total_step: int | None = None
    #: the current total rank budget (set by the allocator)
    budget: int | None = None


def _state(model: nn.Module) -> dict:
    return adapter_state(model, STATE_ATTR)


def records(model: nn.Module) -> dict[str, AdaLoraRecord]:
    return _state(model)["adapters"]


def record(model: nn.Module, adapter_name: str) -> AdaLoraRecord:
    return find_record(records(model), adapter_name, "AdaLoRA")


def active_adapter(model: nn.Module) -> str | None:
    return _state(model)["active"]


_WRAPPERS = (SVDLinear, ModulesToSave)


def _wrapper_paths(model: nn.Module) -> list[str]:
    return wrapper_paths(model, _WRAPPERS)


def base_module_paths(model: nn.Module) -> list[str]:
    return shared_base_module_paths(model, _WRAPPERS)


# --------------------------------------------------------------------------------------------- targets
def default_targets(model: nn.Module) -> list[str]:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in DEFAULT_TARGETS:
        raise AdapterError(
            f"adapter.target_modules: null has no default for model type {model_type!r} (defaults exist for "
            f"{', '.join(sorted(DEFAULT_TARGETS))}); allowed: module names, a regex or 'all-linear'"
        )
    return DEFAULT_TARGETS[model_type]


def resolve_targets(model: nn.Module, config: AdaLoraConfig) -> list[str]:
    target_modules = config.target_modules if config.target_modules is not None else default_targets(model)
    wrappers = _wrapper_paths(model)
    paths = find_targets(
        model, target_modules, config.exclude_modules, allowed_types=(*LINEAR_TYPES, SVDLinear)
    )
    paths = [p for p in paths if not _inside(p, wrappers)]
    if not paths:
        raise AdapterError(
            f"adapter.target_modules: {target_modules!r} matches only adapter-internal modules; "
            f"allowed: names or patterns of the base model's linear layers"
        )
    return paths


def saved_target_modules(model: nn.Module, config: AdaLoraConfig, targets: list[str]) -> str | list[str]:
    """peft's `target_modules` value that selects exactly `targets`: the user's regex, else the short names,
    else the full paths."""
    view = base_module_paths(model)
    excluded = config.exclude_modules

    def reproduces(pattern: str | list[str]) -> bool:
        chosen = {
            p for p in view if name_matches(p, pattern) and not (excluded and name_matches(p, excluded))
        }
        return chosen == set(targets)

    user = config.target_modules
    if isinstance(user, str) and user != "all-linear" and reproduces(user):
        return user
    short = short_names(targets)
    if reproduces(short):
        return short
    return sorted(targets)


def _pattern_by_path(pattern: dict[str, list[bool]], targets: list[str]) -> dict[str, list[bool]]:
    """Saved keys ('<path>.lora_E', peft may add '.<adapter name>') -> target paths."""
    out: dict[str, list[bool]] = {}
    unknown = []
    for key, mask in pattern.items():
        path = key
        if RANK_KEY_SUFFIX + "." in key:
            path = key[: key.rindex(RANK_KEY_SUFFIX + ".")]
        elif key.endswith(RANK_KEY_SUFFIX):
            path = key[: -len(RANK_KEY_SUFFIX)]
        if path not in targets:
            unknown.append(key)
        out[path] = [bool(v) for v in mask]
    if unknown:
        raise AdapterError(
            f"adapter.rank_pattern: keys {unknown[:5]} name no adapted module; allowed: '<module path>.lora_E' "
            f"for the adapted modules, e.g. {targets[0] + RANK_KEY_SUFFIX!r}"
        )
    return out


# ----------------------------------------------------------------------------------------- injection
def inject(model: nn.Module, config: AdaLoraConfig, adapter_name: str) -> AdaLoraRecord:
    adapters = records(model)
    if adapter_name in adapters:
        raise AdapterError(f"adapter name {adapter_name!r} is already used on this model; pick another name")
    _check_nothing_merged(model, except_name=None, action=f"add adapter {adapter_name!r}")
    targets = resolve_targets(model, config)
    pattern = _pattern_by_path(config.rank_pattern, targets) if config.rank_pattern else None
    saved = resolve_modules_to_save(model, effective_modules_to_save(model, config), targets)
    for path in targets:
        layer = model.get_submodule(path)
        if not isinstance(layer, SVDLinear):
            layer = SVDLinear(layer)
            replace_module(model, path, layer)
        layer.add_adapter(adapter_name, config.init_r, config.alpha, config.dropout)
        if pattern is not None and path in pattern:
            layer.keep_ranks(adapter_name, pattern[path])
    for path in saved:
        module = model.get_submodule(path)
        if not isinstance(module, ModulesToSave):
            module = ModulesToSave(module)
            replace_module(model, path, module)
        module.add_adapter(adapter_name)
    rec = AdaLoraRecord(
        config=config, targets=targets, saved_modules=saved, rank_pattern=pattern, pruned=pattern is not None
    )
    adapters[adapter_name] = rec
    set_active(model, adapter_name)
    mark_trainable(model, adapter_name)
    return rec


def layers(model: nn.Module, adapter_name: str) -> dict[str, SVDLinear]:
    """Target path -> SVDLinear holding adapter `adapter_name`."""
    return {path: model.get_submodule(path) for path in record(model, adapter_name).targets}


def set_active(model: nn.Module, adapter_name: str | None) -> None:
    adapters = records(model)
    if adapter_name is not None and adapter_name not in adapters:
        raise AdapterError(
            f"no AdaLoRA adapter named {adapter_name!r} on this model; allowed: {sorted(adapters)} or None"
        )
    _check_nothing_merged(model, except_name=adapter_name, action=f"activate {adapter_name!r}")
    for module in model.modules():
        if isinstance(module, (SVDLinear, ModulesToSave)):
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


# ------------------------------------------------------------------------------------------- tensors
def adapter_tensors(model: nn.Module, adapter_name: str) -> dict[str, nn.Parameter]:
    """The adapter's parameters (full in-memory shapes) under peft's keys without 'base_model.model.'."""
    record(model, adapter_name)
    out: dict[str, nn.Parameter] = {}
    for path, module in model.named_modules():
        if isinstance(module, SVDLinear) and adapter_name in module.lora_A:
            for kind in ("lora_A", "lora_B", "lora_E"):
                out[f"{path}.{kind}"] = getattr(module, kind)[adapter_name]
        elif isinstance(module, ModulesToSave) and adapter_name in module.modules_to_save:
            for name, param in module.modules_to_save[adapter_name].named_parameters():
                out[f"{path}.{name}"] = param
    return out


def saved_tensors(model: nn.Module, adapter_name: str) -> dict[str, torch.Tensor]:
    """On-disk tensors: like peft, A/E/B are cut to the kept ranks of the current rank pattern."""
    rec = record(model, adapter_name)
    tensors = {k: t.detach() for k, t in adapter_tensors(model, adapter_name).items()}
    if rec.rank_pattern is not None and not rec.pruned:
        for path, mask in rec.rank_pattern.items():
            keep = torch.tensor(mask, dtype=torch.bool, device=tensors[f"{path}.lora_A"].device)
            tensors[f"{path}.lora_A"] = tensors[f"{path}.lora_A"][keep]
            tensors[f"{path}.lora_E"] = tensors[f"{path}.lora_E"][keep]
            tensors[f"{path}.lora_B"] = tensors[f"{path}.lora_B"][:, keep]
    return tensors


def saved_rank_pattern(model: nn.Module, adapter_name: str) -> dict[str, list[bool]] | None:
    rec = record(model, adapter_name)
    if rec.rank_pattern is None:
        return None
    return {f"{path}{RANK_KEY_SUFFIX}": list(mask) for path, mask in sorted(rec.rank_pattern.items())}


def orthogonal_regularization(model: nn.Module, adapter_name: str) -> torch.Tensor | None:
    """Mean over all P and Q matrices of ||PPᵀ - I||_F, ||QᵀQ - I||_F (peft's AdaLoraModel.forward)."""
    total: torch.Tensor | None = None
    count = 0
    for layer in layers(model, adapter_name).values():
        for cov in (
            layer.lora_A[adapter_name] @ layer.lora_A[adapter_name].T,
            layer.lora_B[adapter_name].T @ layer.lora_B[adapter_name],
        ):
            eye = torch.eye(*cov.size(), out=torch.empty_like(cov))
            term = torch.norm(cov - eye, p="fro")
            total = term if total is None else total + term
            count += 1
    return None if total is None else total / count


# ----------------------------------------------------------------------------------------------- merge
def merge(model: nn.Module, adapter_name: str) -> None:
    set_active(model, adapter_name)
    rec = record(model, adapter_name)
    if rec.merged:
        raise AdapterError(f"adapter {adapter_name!r} is already merged")
    for layer in layers(model, adapter_name).values():
        layer.merge(adapter_name)
    rec.merged = True


def unmerge(model: nn.Module, adapter_name: str) -> None:
    rec = record(model, adapter_name)
    for layer in layers(model, adapter_name).values():
        layer.unmerge(adapter_name)
    rec.merged = False


def unload(model: nn.Module) -> nn.Module:
    """Swap every wrapper back for its base module; merged weights and module copies stay merged."""
    merged = [n for n, rec in records(model).items() if rec.merged]
    for path, module in list(model.named_modules()):
        if isinstance(module, SVDLinear):
            replace_module(model, path, module.base_layer)
        elif isinstance(module, ModulesToSave):
            copy_name = next((n for n in merged if n in module.modules_to_save), None)
            replace_module(
                model, path, module.modules_to_save[copy_name] if copy_name else module.original_module
            )
    model.__dict__.pop(STATE_ATTR, None)
    return model
