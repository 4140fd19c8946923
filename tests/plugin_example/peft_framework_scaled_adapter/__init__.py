"""`adapter.type: scale` — a learned per-output-channel scale on targeted linear layers: y = base(x) * s.

A complete third-party adapter type in one file: config model, layer, and the AdapterMethod contract
(inject, checkpoint tensors and json). Not a peft type, so its checkpoint carries `peft_framework_type`.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import nn
from transformers.pytorch_utils import Conv1D

from peft_framework.adapters.base import DEFAULT_ADAPTER_NAME, AdapterMethod
from peft_framework.adapters.targeting import ALL_LINEAR, find_targets, freeze_all_but, replace_module
from peft_framework.config.schema import AdapterConfigBase
from peft_framework.errors import AdapterError

PREFIX = "base_model.model."


class ScaleConfig(AdapterConfigBase):
    type: Literal["scale"] = "scale"
    init_scale: float = Field(1.0, gt=0, description="starting value of every scale (1.0: the base model)")


class ScaledLinear(nn.Module):
    def __init__(self, base_layer: nn.Module, init_scale: float) -> None:
        super().__init__()
        self.base_layer = base_layer
        out_features = (
            base_layer.weight.shape[1] if isinstance(base_layer, Conv1D) else base_layer.weight.shape[0]
        )
        weight = base_layer.weight
        self.scale = nn.Parameter(
            torch.full((out_features,), init_scale, dtype=torch.float32, device=weight.device)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        return (out * self.scale).to(out.dtype)


def _scaled(model: nn.Module) -> dict[str, ScaledLinear]:
    return {path: m for path, m in model.named_modules() if isinstance(m, ScaledLinear)}


class ScaleMethod(AdapterMethod):
    name: ClassVar[str] = "scale"
    config_class: ClassVar[type[AdapterConfigBase]] = ScaleConfig
    description: ClassVar[str] = "per-output-channel scale on linear layers (example plug-in)"

    def inject(
        self, model: nn.Module, config: AdapterConfigBase, adapter_name: str = DEFAULT_ADAPTER_NAME
    ) -> None:
        assert isinstance(config, ScaleConfig)
        if _scaled(model):
            raise AdapterError("the 'scale' adapter supports one adapter per model")
        for path in find_targets(model, config.target_modules or ALL_LINEAR, config.exclude_modules):
            replace_module(model, path, ScaledLinear(model.get_submodule(path), config.init_scale))
        freeze_all_but(model, lambda name: name.endswith(".scale"))

    def adapter_state_dict(
        self, model: nn.Module, adapter_name: str = DEFAULT_ADAPTER_NAME
    ) -> dict[str, torch.Tensor]:
        return {f"{PREFIX}{path}.scale": m.scale.detach() for path, m in _scaled(model).items()}

    @torch.no_grad()
    def load_adapter_state_dict(
        self, model: nn.Module, state_dict: dict[str, torch.Tensor], adapter_name: str = DEFAULT_ADAPTER_NAME
    ) -> None:
        for path, module in _scaled(model).items():
            module.scale.copy_(state_dict[f"{PREFIX}{path}.scale"])

    def saved_config(
        self,
        config: AdapterConfigBase,
        *,
        base_model_name_or_path: str | None,
        task_type: str | None,
        model: nn.Module,
    ) -> dict[str, Any]:
        assert isinstance(config, ScaleConfig)
        return {
            "peft_framework_type": self.name,
            "base_model_name_or_path": base_model_name_or_path,
            "task_type": task_type,
            "target_modules": sorted(_scaled(model)),
            "init_scale": config.init_scale,
        }

    def config_from_saved(self, saved: dict[str, Any]) -> AdapterConfigBase:
        return ScaleConfig(target_modules=saved["target_modules"], init_scale=saved.get("init_scale", 1.0))
