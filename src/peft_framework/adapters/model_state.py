"""Bookkeeping every adapter type keeps on a model: its adapters by name and which one is active,
and the base model's module paths seen through the wrappers an adapter injected."""

from __future__ import annotations

from typing import TypeVar

from torch import nn

from peft_framework.errors import AdapterError

R = TypeVar("R")


def adapter_state(model: nn.Module, attr: str) -> dict:
    """`{"adapters": {name: record}, "active": name | None}`, created on first use.

    Kept in `model.__dict__` (not as a module attribute) so it is neither a submodule nor saved."""
    state = model.__dict__.get(attr)
    if state is None:
        state = {"adapters": {}, "active": None}
        model.__dict__[attr] = state
    return state


def find_record(adapters: dict[str, R], adapter_name: str, kind: str) -> R:
    if adapter_name not in adapters:
        raise AdapterError(
            f"no {kind} adapter named {adapter_name!r} on this model; allowed: {sorted(adapters)}"
        )
    return adapters[adapter_name]


def inside(path: str, parents: list[str]) -> bool:
    return any(path.startswith(parent + ".") for parent in parents)


def wrapper_paths(model: nn.Module, wrapper_types: tuple[type[nn.Module], ...]) -> list[str]:
    return [p for p, m in model.named_modules() if isinstance(m, wrapper_types)]


def base_module_paths(model: nn.Module, wrapper_types: tuple[type[nn.Module], ...]) -> list[str]:
    """Module paths as the base model had them: wrappers stand for the module they wrap."""
    wrappers = wrapper_paths(model, wrapper_types)
    return [p for p, _ in model.named_modules() if p and not inside(p, wrappers)]
