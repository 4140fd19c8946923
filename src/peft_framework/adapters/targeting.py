"""Which modules of a base model an adapter wraps: module names, a regex, or 'all-linear'.

Matching follows HuggingFace peft: a string is `re.fullmatch`ed against the full module path; a list
matches a module whose path equals an entry or ends with `.entry`. 'all-linear' means every linear
layer (nn.Linear or GPT-2's Conv1D) except the output head.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from torch import nn
from transformers.pytorch_utils import Conv1D

from peft_framework.errors import AdapterError

ALL_LINEAR = "all-linear"
LINEAR_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, Conv1D)
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


def freeze_all_but(model: nn.Module, is_trainable: Callable[[str], bool]) -> None:
    for name, param in model.named_parameters():
        param.requires_grad = is_trainable(name)
