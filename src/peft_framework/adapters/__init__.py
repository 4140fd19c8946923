"""Adapter types, their registry and checkpoint I/O.

    from peft_framework.adapters import get_adapter, save_adapter, load_adapter
    method = get_adapter("lora"); method.inject(model, config.adapter)

Names are resolved lazily, so importing `peft_framework.adapters.registry` (config validation, the CLI)
does not pull in torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from peft_framework.adapters.base import AdapterMethod
    from peft_framework.adapters.checkpoint import load_adapter, save_adapter
    from peft_framework.adapters.registry import available as available_adapters
    from peft_framework.adapters.registry import get as get_adapter

__all__ = ["AdapterMethod", "available_adapters", "get_adapter", "load_adapter", "save_adapter"]

_LAZY = {
    "AdapterMethod": ("peft_framework.adapters.base", "AdapterMethod"),
    "available_adapters": ("peft_framework.adapters.registry", "available"),
    "get_adapter": ("peft_framework.adapters.registry", "get"),
    "load_adapter": ("peft_framework.adapters.checkpoint", "load_adapter"),
    "save_adapter": ("peft_framework.adapters.checkpoint", "save_adapter"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
