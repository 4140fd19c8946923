"""IA3's `AdapterMethod`: targets with feed-forward sides, checkpoint names and json (peft's, peft_type IA3)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from torch import nn

from peft_framework.adapters.ia3.config import IA3Config
from peft_framework.adapters.ia3.defaults import DEFAULT_FEEDFORWARD, DEFAULT_TARGETS
from peft_framework.adapters.ia3.layer import IA3Linear
from peft_framework.adapters.method import (
    AdapterRecord,
    WrapperMethod,
    architecture_default,
    listify,
)
from peft_framework.adapters.targeting import resolve_targets, saved_target_modules
from peft_framework.config.schema import AdapterConfigBase

_UNSUPPORTED_UNLESS: dict[str, tuple[Any, ...]] = {"layers_to_transform": (None, [])}


@dataclass
class IA3Record(AdapterRecord):
    feedforward: list[str] | None = None  # target paths scaled on their input
    target_modules: str | list[str] = ""  # as resolved (the user's value or the architecture default)
    feedforward_modules: str | list[str] = ""


def is_feedforward(path: str, feedforward_modules: str | list[str]) -> bool:
    """peft's rule: a regex full-matches the path; a list entry is a plain suffix of it."""
    if isinstance(feedforward_modules, str):
        return re.fullmatch(feedforward_modules, path) is not None
    return any(path.endswith(key) for key in feedforward_modules)


class IA3Method(WrapperMethod):
    name, label, peft_type = "ia3", "IA3", "IA3"
    config_class, layer_class, mergeable = IA3Config, IA3Linear, True
    quantized_bases = True  # wraps bitsandbytes 4-/8-bit linears (adapters/layer.py)
    description = "IA3: learned scaling of keys, values and feed-forward inputs (peft-compatible)"

    def plan(self, model: nn.Module, config: IA3Config) -> IA3Record:
        target_modules = config.target_modules
        if target_modules is None:
            target_modules = architecture_default(
                model, DEFAULT_TARGETS, "target_modules", "module names or a regex"
            )
        feedforward_modules = config.feedforward_modules
        if feedforward_modules is None:
            feedforward_modules = architecture_default(
                model,
                DEFAULT_FEEDFORWARD,
                "feedforward_modules",
                "the target module names that should be scaled on their input (e.g. ['down_proj']), or []",
            )
        targets = resolve_targets(model, target_modules, config.exclude_modules, IA3Linear)
        return IA3Record(
            config=config,
            targets=targets,
            feedforward=[p for p in targets if is_feedforward(p, feedforward_modules)],
            target_modules=target_modules,
            feedforward_modules=feedforward_modules,
        )

    def add_to_layer(self, layer: IA3Linear, adapter_name: str, record: IA3Record, path: str) -> None:
        layer.add_adapter(
            adapter_name, is_feedforward=path in record.feedforward, init_ones=record.config.init_ia3_weights
        )

    def layer_tensors(
        self, layer: IA3Linear, adapter_name: str, record: IA3Record
    ) -> dict[str, nn.Parameter]:
        return {"ia3_l": layer.ia3_l[adapter_name]}

    def saved_fields(self, model: nn.Module, config: IA3Config, rec: IA3Record) -> dict[str, Any]:
        user = listify(rec.target_modules)
        targets = saved_target_modules(model, rec.targets, config.exclude_modules, [user])
        saved: dict[str, Any] = {
            "target_modules": targets,
            "feedforward_modules": _saved_feedforward_modules(rec, targets),
            "fan_in_fan_out": self.fan_in_fan_out(model, rec),
            "init_ia3_weights": config.init_ia3_weights,
        }
        if config.exclude_modules is not None:
            saved["exclude_modules"] = config.exclude_modules
        return saved

    def config_from_saved(self, saved: dict[str, Any]) -> AdapterConfigBase:
        required = ("target_modules", "feedforward_modules")
        return self.config_from_fields(
            {
                **self.fields_from_saved(saved, _UNSUPPORTED_UNLESS, required),
                "feedforward_modules": listify(saved["feedforward_modules"]),
                "init_ia3_weights": saved.get("init_ia3_weights", True),
            }
        )


def _saved_feedforward_modules(rec: IA3Record, saved_targets: str | list[str]) -> str | list[str]:
    """peft's `feedforward_modules` value selecting exactly the input-side targets. peft wants a list to be a
    subset of a list `target_modules`; when the user's list is not, the exact paths are written as a regex."""
    value = rec.feedforward_modules
    if isinstance(value, str):
        return value
    value = sorted(value)
    if not value or not isinstance(saved_targets, list) or set(value) <= set(saved_targets):
        return value
    return "|".join(re.escape(p) for p in rec.feedforward) if rec.feedforward else []
