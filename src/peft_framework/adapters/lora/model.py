"""Put LoRA adapters into a model, switch between them, and map their tensors to peft's on-disk keys.

Per-model bookkeeping (which adapters exist, their configs and target paths) lives in a plain dict on the
model (`model._peft_framework_lora`), so the model itself stays a normal transformers model with some
modules swapped for `LoraLinear` / `ModulesToSave`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from peft_framework.adapters.lora import init as lora_init
from peft_framework.adapters.lora.config import LoraConfig
from peft_framework.adapters.lora.layer import LoraLinear, ModulesToSave
from peft_framework.adapters.model_state import adapter_state, wrapper_paths
from peft_framework.adapters.model_state import base_module_paths as shared_base_module_paths
from peft_framework.adapters.model_state import inside as _inside
from peft_framework.adapters.targeting import (
    ALL_LINEAR,
    LINEAR_TYPES,
    find_targets,
    name_matches,
    replace_module,
    short_names,
)
from peft_framework.errors import AdapterError

STATE_ATTR = "_peft_framework_lora"
#: peft's on-disk prefix (PeftModel -> LoraModel -> the base model)
DISK_PREFIX = "base_model.model."
#: heads peft adds to modules_to_save for sequence classification (missing ones are skipped, like peft)
SEQ_CLS_HEADS = ("classifier", "score")


@dataclass
class LoraRecord:
    config: LoraConfig
    targets: list[str]
    saved_modules: list[str] = field(default_factory=list)  # paths of modules_to_save wrappers
    merged: bool = False


_WRAPPERS = (LoraLinear, ModulesToSave)


def records(model: nn.Module) -> dict[str, LoraRecord]:
    """The LoRA adapters on `model`, by name (empty dict if none)."""
    return adapter_state(model, STATE_ATTR)["adapters"]


def active_adapter(model: nn.Module) -> str | None:
    return adapter_state(model, STATE_ATTR)["active"]


def _wrapper_paths(model: nn.Module) -> list[str]:
    return wrapper_paths(model, _WRAPPERS)


def base_module_paths(model: nn.Module) -> list[str]:
    """Module paths as the base model had them: wrappers stand for the module they wrap."""
    return shared_base_module_paths(model, _WRAPPERS)


# --------------------------------------------------------------------------------------------- targets
def resolve_targets(model: nn.Module, config: LoraConfig) -> list[str]:
    """Paths of the linear layers `config` adapts (`target_modules: null` means 'all-linear')."""
    target_modules = config.target_modules if config.target_modules is not None else ALL_LINEAR
    wrappers = _wrapper_paths(model)
    paths = find_targets(
        model, target_modules, config.exclude_modules, allowed_types=(*LINEAR_TYPES, LoraLinear)
    )
    paths = [p for p in paths if not _inside(p, wrappers)]
    if not paths:  # only adapter internals matched (e.g. 'lora_A')
        raise AdapterError(
            f"adapter.target_modules: {target_modules!r} matches only adapter-internal modules; "
            f"allowed: names or patterns of the base model's linear layers"
        )
    return paths


def saved_target_modules(model: nn.Module, config: LoraConfig, targets: list[str]) -> str | list[str]:
    """What to write as peft's `target_modules` so that peft selects exactly `targets` on the base model:
    the user's regex, else the short names (['q_proj', 'v_proj']), else the full paths."""
    view = base_module_paths(model)
    excluded = config.exclude_modules

    def reproduces(pattern: str | list[str]) -> bool:
        chosen = {
            p for p in view if name_matches(p, pattern) and not (excluded and name_matches(p, excluded))
        }
        return chosen == set(targets)

    user = config.target_modules
    if isinstance(user, str) and user != ALL_LINEAR and reproduces(user):
        return user
    short = short_names(targets)
    if reproduces(short):
        return short
    return sorted(targets)


def effective_modules_to_save(model: nn.Module, config: LoraConfig) -> list[str] | None:
    """config.modules_to_save, plus the classification head for *ForSequenceClassification models (as peft)."""
    names = list(config.modules_to_save or [])
    if type(model).__name__.endswith("ForSequenceClassification"):
        names += [
            h for h in SEQ_CLS_HEADS if h not in names and isinstance(getattr(model, h, None), nn.Module)
        ]
    return names or None


def resolve_modules_to_save(model: nn.Module, names: list[str] | None, targets: list[str]) -> list[str]:
    """Module paths ending with one of `names` (peft's rule: plain suffix match), outermost only."""
    if not names:
        return []
    wrappers = _wrapper_paths(model)
    found: list[str] = []
    used: set[str] = set()
    for path, module in model.named_modules():
        if not path or _inside(path, wrappers) or _inside(path, found):
            continue
        hits = [n for n in names if path.endswith(n)]
        if not hits or isinstance(module, LoraLinear):
            continue
        if path in targets or any(t.startswith(path + ".") for t in targets):
            raise AdapterError(
                f"adapter.modules_to_save: {hits[0]!r} selects {path!r}, which is or contains a LoRA target; "
                f"allowed: modules that adapter.target_modules does not touch (e.g. 'lm_head', 'score')"
            )
        found.append(path)
        used.update(hits)
    missing = [n for n in names if n not in used and n not in SEQ_CLS_HEADS]
    if missing:
        top = sorted({p.split(".")[0] for p in base_module_paths(model)})
        raise AdapterError(
            f"adapter.modules_to_save: {missing} match no module of the model; allowed: module names such as "
            f"{', '.join(top)} or deeper paths"
        )
    return found


# ----------------------------------------------------------------------------------------- injection
def inject_lora(model: nn.Module, config: LoraConfig, adapter_name: str) -> LoraRecord:
    adapters = records(model)
    if adapter_name in adapters:
        raise AdapterError(f"adapter name {adapter_name!r} is already used on this model; pick another name")
    _check_nothing_merged(model, except_name=None, action=f"add adapter {adapter_name!r}")
    targets = resolve_targets(model, config)
    saved = resolve_modules_to_save(model, effective_modules_to_save(model, config), targets)
    for path in targets:
        layer = model.get_submodule(path)
        if not isinstance(layer, LoraLinear):
            layer = LoraLinear(layer)
            replace_module(model, path, layer)
        layer.add_adapter(
            adapter_name,
            config.r,
            config.alpha,
            config.dropout,
            config.use_rslora,
            config.init,
            use_dora=config.use_dora,
        )
    for path in saved:
        module = model.get_submodule(path)
        if not isinstance(module, ModulesToSave):
            module = ModulesToSave(module)
            replace_module(model, path, module)
        module.add_adapter(adapter_name)
    record = LoraRecord(config=config, targets=targets, saved_modules=saved)
    adapters[adapter_name] = record
    set_active(model, adapter_name)
    mark_trainable(model, adapter_name)
    return record


def set_active(model: nn.Module, adapter_name: str | None) -> None:
    adapters = records(model)
    if adapter_name is not None and adapter_name not in adapters:
        raise AdapterError(
            f"no LoRA adapter named {adapter_name!r} on this model; allowed: {sorted(adapters)} or None"
        )
    _check_nothing_merged(model, except_name=adapter_name, action=f"activate {adapter_name!r}")
    for module in model.modules():
        if isinstance(module, (LoraLinear, ModulesToSave)):
            module.set_adapter(adapter_name)
    adapter_state(model, STATE_ATTR)["active"] = adapter_name


def _check_nothing_merged(model: nn.Module, except_name: str | None, action: str) -> None:
    merged = [n for n, rec in records(model).items() if rec.merged and n != except_name]
    if merged:
        raise AdapterError(
            f"cannot {action} while adapter {merged[0]!r} is merged into the base weights; unmerge it first"
        )


def mark_trainable(model: nn.Module, adapter_name: str) -> None:
    """Only `adapter_name`'s tensors (LoRA A/B, its module copies, biases per `bias`) require grad."""
    keep = {id(t) for t in adapter_tensors(model, adapter_name).values()}
    for param in model.parameters():
        param.requires_grad = id(param) in keep


# ------------------------------------------------------------------------------------------- tensors
def converted_tensors(model: nn.Module, adapter_name: str) -> dict[str, torch.Tensor]:
    """Like `adapter_tensors`, but an adapter initialised with PiSSA/OLoRA comes out as the plain rank-2r LoRA
    of the same update on the ORIGINAL base weight (init.py): what is saved."""
    tensors: dict[str, torch.Tensor] = dict(adapter_tensors(model, adapter_name))
    if not lora_init.mutates_base(records(model)[adapter_name].config.init):
        return tensors
    for path, module in model.named_modules():
        if isinstance(module, LoraLinear) and adapter_name in module.initial_lora:
            a0, b0 = module.initial_lora[adapter_name]
            a_key, b_key = f"{path}.lora_A.weight", f"{path}.lora_B.weight"
            tensors[a_key], tensors[b_key] = lora_init.converted_tensors(
                tensors[a_key].detach(), tensors[b_key].detach(), a0, b0
            )
    return tensors


def adapter_tensors(model: nn.Module, adapter_name: str) -> dict[str, nn.Parameter]:
    """The adapter's parameters under peft's on-disk keys (without the 'base_model.model.' prefix)."""
    adapters = records(model)
    if adapter_name not in adapters:
        raise AdapterError(
            f"no LoRA adapter named {adapter_name!r} on this model; allowed: {sorted(adapters)}"
        )
    bias = adapters[adapter_name].config.bias
    out: dict[str, nn.Parameter] = {}
    saved_wrappers: list[str] = []
    for path, module in model.named_modules():
        if isinstance(module, LoraLinear) and adapter_name in module.lora_A:
            out[f"{path}.lora_A.weight"] = module.lora_A[adapter_name].weight
            out[f"{path}.lora_B.weight"] = module.lora_B[adapter_name].weight
            if adapter_name in module.lora_magnitude_vector:  # DoRA; peft's key has no '.weight'
                out[f"{path}.lora_magnitude_vector"] = module.lora_magnitude_vector[adapter_name]
            if bias == "lora_only" and module.base_layer.bias is not None:
                out[f"{path}.base_layer.bias"] = module.base_layer.bias
        elif isinstance(module, ModulesToSave):
            saved_wrappers.append(path)
            if adapter_name in module.modules_to_save:
                for name, param in module.modules_to_save[adapter_name].named_parameters():
                    out[f"{path}.{name}"] = param
    if bias == "all":  # every bias of the base model (peft: names equal to or ending with 'bias')
        for name, param in model.named_parameters():
            if (name == "bias" or name.endswith(".bias")) and not _inside(name, saved_wrappers):
                out.setdefault(name, param)
    return out


# ----------------------------------------------------------------------------------------------- merge
def merge(model: nn.Module, adapter_name: str, exact: bool = False) -> None:
    adapters = records(model)
    set_active(model, adapter_name)  # also refuses when another adapter is merged
    record = adapters[adapter_name]
    if record.merged:
        raise AdapterError(f"adapter {adapter_name!r} is already merged")
    for module in model.modules():
        if isinstance(module, LoraLinear):
            module.merge(adapter_name, exact=exact)
    record.merged = True


def unmerge(model: nn.Module, adapter_name: str) -> None:
    adapters = records(model)
    if adapter_name not in adapters:
        raise AdapterError(
            f"no LoRA adapter named {adapter_name!r} on this model; allowed: {sorted(adapters)}"
        )
    for module in model.modules():
        if isinstance(module, LoraLinear):
            module.unmerge(adapter_name)
    adapters[adapter_name].merged = False


def unload(model: nn.Module) -> nn.Module:
    """Swap every wrapper back for its base module. Merged weights stay merged, and a merged adapter's
    trained module copies (modules_to_save) replace the originals; otherwise the originals come back."""
    merged = [n for n, rec in records(model).items() if rec.merged]
    for path, module in list(model.named_modules()):
        if isinstance(module, LoraLinear):
            for name in [n for n in module.initial_lora if n not in merged]:
                module._restore_base(name)  # PiSSA/OLoRA not merged: the original weight comes back
            replace_module(model, path, module.base_layer)
        elif isinstance(module, ModulesToSave):
            copy_name = next((n for n in merged if n in module.modules_to_save), None)
            replace_module(
                model, path, module.modules_to_save[copy_name] if copy_name else module.original_module
            )
    model.__dict__.pop(STATE_ATTR, None)
    return model


# --------------------------------------------------------------------------------------------- combine
@torch.no_grad()
def combine_adapters(model: nn.Module, weights: dict[str, float], new_name: str) -> LoraConfig:
    """A new adapter whose update is exactly sum_i w_i * s_i * B_i A_i (ranks concatenated, scaling 1;
    like peft's `add_weighted_adapter(..., combination_type="cat")`, w_i * s_i goes into A).

    Modules_to_save copies combine the same way: original + sum_i w_i * (copy_i - original). The new
    adapter becomes active. Returns its config (full target paths, so it saves and reloads as is).
    """
    adapters = records(model)
    unknown = [n for n in weights if n not in adapters]
    if not weights or unknown:
        raise AdapterError(f"combine_adapters: unknown adapters {unknown}; allowed: {sorted(adapters)}")
    names = list(weights)
    dora_names = [n for n in names if adapters[n].config.use_dora]
    if dora_names:
        raise AdapterError(
            f"combine_adapters: {dora_names} use DoRA, whose magnitudes do not add up linearly; allowed: plain LoRA"
        )
    rank = sum(adapters[n].config.r for n in names)
    targets = sorted({t for n in names for t in adapters[n].targets})
    saved = sorted({p for n in names for p in adapters[n].saved_modules})
    config = LoraConfig(
        r=rank, alpha=float(rank), dropout=0.0, target_modules=targets, modules_to_save=saved or None
    )
    inject_lora(model, config, new_name)
    for path in targets:
        layer: LoraLinear = model.get_submodule(path)
        a_new, b_new = layer.lora_A[new_name].weight, layer.lora_B[new_name].weight
        a_new.zero_()
        b_new.zero_()
        offset = 0
        for name in names:
            r = adapters[name].config.r
            if name in layer.lora_A:
                a_new[offset : offset + r] = layer.lora_A[name].weight * (weights[name] * layer.scaling[name])
                b_new[:, offset : offset + r] = layer.lora_B[name].weight
            offset += r
    for path in saved:
        wrapper: ModulesToSave = model.get_submodule(path)
        original = dict(wrapper.original_module.named_parameters())
        for pname, param in wrapper.modules_to_save[new_name].named_parameters():
            param.copy_(original[pname])
            for name in names:
                if name in wrapper.modules_to_save:
                    copy_param = dict(wrapper.modules_to_save[name].named_parameters())[pname]
                    param.add_(copy_param - original[pname], alpha=weights[name])
    return config
