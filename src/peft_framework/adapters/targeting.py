"""Which modules of a base model an adapter wraps: module names, a regex, or 'all-linear'.

Matching follows HuggingFace peft: a string is `re.fullmatch`ed against the full module path; a list
matches a module whose path equals an entry or ends with `.entry`. 'all-linear' means every linear
layer (nn.Linear or GPT-2's Conv1D) except the output head.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from torch import nn

from peft_framework.adapters.layer import BASE_LAYER_KINDS, AdapterLayer
from peft_framework.errors import AdapterError
from peft_framework.models.parts import LANGUAGE, model_parts

ALL_LINEAR = "all-linear"
LINEAR_TYPES = BASE_LAYER_KINDS
# Heads never adapted by 'all-linear' (peft excludes the output embedding the same way).
_HEAD_NAMES = {"lm_head", "score", "classifier", "cls", "qa_outputs", "pooler"}


def name_matches(path: str, pattern: str | Iterable[str]) -> bool:
    if isinstance(pattern, str):
        return re.fullmatch(pattern, path) is not None
    return any(path == key or path.endswith("." + key) for key in pattern)


def is_head(path: str) -> bool:
    return any(part in _HEAD_NAMES for part in path.split("."))


def linear_module_names(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if isinstance(module, LINEAR_TYPES)]


def short_names(paths: Iterable[str]) -> list[str]:
    """Distinct last path components, e.g. ['down_proj', 'q_proj', ...]: what users usually type."""
    return sorted({p.rsplit(".", 1)[-1] for p in paths})


def find_targets(
    model: nn.Module,
    target_modules: str | list[str],
    exclude_modules: str | list[str] | None = None,
    *,
    allowed_types: tuple[type[nn.Module], ...] = LINEAR_TYPES,
    key: str = "adapter.target_modules",
) -> list[str]:
    """Paths of the modules to adapt, in model order. AdapterError if nothing matches."""
    selected: list[str] = []
    for path, module in model.named_modules():
        if not path or not isinstance(module, allowed_types):
            continue
        if target_modules == ALL_LINEAR:
            if is_head(path):
                continue
        elif not name_matches(path, target_modules):
            continue
        if exclude_modules and name_matches(path, exclude_modules):
            continue
        selected.append(path)
    if not selected:
        candidates = linear_module_names(model)
        raise AdapterError(
            f"{key}: {target_modules!r} matches no module of the model "
            f"(allowed: module names, a regex on the full path, or 'all-linear'). "
            f"The model's linear modules are: {', '.join(short_names(candidates))} "
            f"(full paths like {candidates[0] if candidates else '-'!r})"
        )
    return selected


def replace_module(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, child = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, child, new)


def inside(path: str, parents: list[str]) -> bool:
    return any(path.startswith(parent + ".") for parent in parents)


def wrapper_paths(model: nn.Module) -> list[str]:
    """Paths of the adapter wrappers (of any type) in `model`."""
    return [p for p, m in model.named_modules() if isinstance(m, AdapterLayer)]


def base_module_paths(model: nn.Module) -> list[str]:
    """Module paths as the base model had them: wrappers stand for the module they wrap."""
    wrappers = wrapper_paths(model)
    return [p for p, _ in model.named_modules() if p and not inside(p, wrappers)]


def resolve_targets(
    model: nn.Module,
    target_modules: str | list[str],
    exclude_modules: str | list[str] | None,
    layer_class: type[nn.Module],
) -> list[str]:
    """`find_targets` on the base model as it was: a layer already wrapped by `layer_class` (an earlier
    adapter of the same type) is found again, modules inside any wrapper never are."""
    wrappers = wrapper_paths(model)
    paths = find_targets(model, target_modules, exclude_modules, allowed_types=(*LINEAR_TYPES, layer_class))
    paths = [p for p in paths if not inside(p, wrappers)]
    if not paths:  # only adapter internals matched (e.g. 'lora_A')
        raise AdapterError(
            f"adapter.target_modules: {target_modules!r} matches only adapter-internal modules; "
            f"allowed: names or patterns of the base model's linear layers"
        )
    return paths


def _prefixed_names(targets: list[str]) -> str:
    """A regex for `targets` by their short names under their common parent (e.g. only the language model's
    `q_proj` of a vision-language model, whose vision tower has `q_proj` layers too)."""
    parents = [t.split(".")[:-1] for t in targets]
    common: list[str] = []
    for parts in zip(*parents):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    names = "|".join(re.escape(n) for n in short_names(targets))
    prefix = re.escape(".".join(common)) + r"\." if common else ""
    return rf"{prefix}(.*\.)?({names})"


def saved_target_modules(
    model: nn.Module,
    targets: list[str],
    exclude_modules: str | list[str] | None,
    candidates: list[str | list[str]],
) -> str | list[str]:
    """What to write as peft's `target_modules` so that peft selects exactly `targets` on the base model:
    the first of `candidates` (e.g. the user's regex) that does, else the short names (['q_proj', ...]),
    else the full paths."""
    parts = model_parts(model)
    if parts.multimodal and any(parts.part_of(t) != LANGUAGE for t in targets):
        # adapted vision-tower layers: full paths, which our loader takes as meant (models/parts.py)
        return sorted(targets)
    view = base_module_paths(model)

    def reproduces(pattern: str | list[str]) -> bool:
        chosen = {
            p
            for p in view
            if name_matches(p, pattern) and not (exclude_modules and name_matches(p, exclude_modules))
        }
        return chosen == set(targets)

    # a VLM's language model shares layer names with its vision tower: the names under their common parent
    extra = [_prefixed_names(targets)] if parts.multimodal else []
    for pattern in [*candidates, short_names(targets), *extra]:
        if pattern != ALL_LINEAR and reproduces(pattern):
            return pattern
    return sorted(targets)
