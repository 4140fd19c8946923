"""`adapter.type` -> AdapterMethod. Built-ins and plug-ins both come from the
`peft_framework.adapters` entry-point group; nothing is imported until first asked for."""

from __future__ import annotations

import difflib
import importlib
import importlib.util
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from peft_framework.errors import ConfigError

if TYPE_CHECKING:
    from peft_framework.adapters.base import AdapterMethod
    from peft_framework.config.schema import AdapterConfigBase

ENTRY_POINT_GROUP = "peft_framework.adapters"

# Built-ins are listed here too, so a source checkout that was not pip-installed still finds them.
BUILTIN = {
    "lora": "peft_framework.adapters.lora:LoraMethod",
    "adalora": "peft_framework.adapters.adalora:AdaLoraMethod",
    "ia3": "peft_framework.adapters.ia3:IA3Method",
    "bottleneck": "peft_framework.adapters.bottleneck:BottleneckMethod",
}
# Their config models, in modules that import neither torch nor transformers: validating a config (every
# pipeline stage's cache check does) then loads no adapter layers. A test checks each equals the method's.
BUILTIN_CONFIGS = {
    "lora": "peft_framework.adapters.lora.config:LoraConfig",
    "adalora": "peft_framework.adapters.adalora.config:AdaLoraConfig",
    "ia3": "peft_framework.adapters.ia3.config:IA3Config",
    "bottleneck": "peft_framework.adapters.bottleneck.config:BottleneckConfig",
}


@dataclass(frozen=True)
class AdapterSource:
    name: str
    target: str  # "module:attr"
    origin: str  # "built-in" or the distribution that provides it


_sources: dict[str, AdapterSource] | None = None
_loaded: dict[str, AdapterMethod] = {}


def _discover() -> dict[str, AdapterSource]:
    global _sources
    if _sources is None:
        found: dict[str, AdapterSource] = {}
        for name, target in BUILTIN.items():
            module = target.split(":")[0]
            if importlib.util.find_spec(module) is not None:
                found[name] = AdapterSource(name, target, "built-in")
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in found and found[ep.name].target == ep.value:
                continue
            dist = getattr(ep, "dist", None)
            origin = f"{dist.name} {dist.version}" if dist is not None else "entry point"
            found[ep.name] = AdapterSource(ep.name, ep.value, origin)
        _sources = found
    return _sources


def available() -> dict[str, AdapterSource]:
    return dict(sorted(_discover().items()))


def _importable(name: str) -> bool:
    try:
        get(name)
    except Exception:
        return False
    return True


def get(name: str) -> AdapterMethod:
    """The AdapterMethod for `adapter.type == name`; a ConfigError with did-you-mean if unknown."""
    if name in _loaded:
        return _loaded[name]
    sources = _discover()
    if name not in sources:
        close = difflib.get_close_matches(name, list(sources), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            "invalid config",
            [
                f"adapter.type: {name!r} is not a registered adapter type; allowed: {', '.join(sorted(sources))}.{hint}"
            ],
        )
    module_name, _, attr = sources[name].target.partition(":")
    obj = getattr(importlib.import_module(module_name), attr)
    method = obj() if isinstance(obj, type) else obj
    _loaded[name] = method
    return method


def config_class(name: str) -> type[AdapterConfigBase]:
    """The config model of `adapter.type == name`. A built-in's comes from its light config module (no torch);
    a plug-in's from its method. Unknown names raise the ConfigError of `get`."""
    if name in _loaded:
        return _loaded[name].config_class
    source = _discover().get(name)
    if source is not None and source.origin == "built-in" and name in BUILTIN_CONFIGS:
        module_name, _, attr = BUILTIN_CONFIGS[name].partition(":")
        return getattr(importlib.import_module(module_name), attr)
    return get(name).config_class


def config_classes() -> dict[str, type[AdapterConfigBase]]:
    """The config model of every type that imports cleanly (a broken plug-in must not break the others)."""
    out: dict[str, type[AdapterConfigBase]] = {}
    for name in available():
        try:
            out[name] = config_class(name)
        except Exception:  # noqa: BLE001 -- reported when that type is chosen (config loading)
            continue
    return out


def all_methods() -> dict[str, AdapterMethod]:
    """Every type that imports cleanly (a broken plug-in must not break configs of other types)."""
    return {name: get(name) for name in available() if _importable(name)}


def by_peft_type(peft_type: str) -> AdapterMethod | None:
    for method in all_methods().values():
        if method.peft_type == peft_type:
            return method
    return None
