"""`adapter.type: scale` — a learned per-output-channel scale on targeted linear layers: y = base(x) * s.

A complete third-party adapter type in one file, written on the framework's adapter core: its config, its
layer maths and its checkpoint json. Injection, several adapters side by side, switching, trainable
marking, checkpoint tensors and their checks come from `WrapperMethod`. Not a peft type, so its checkpoint
carries `peft_framework_type`.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from peft_framework.adapters.layer import LinearAdapterLayer
from peft_framework.adapters.method import AdapterRecord, WrapperMethod
from peft_framework.config.schema import AdapterConfigBase


class ScaleConfig(AdapterConfigBase):
    type: Literal["scale"] = "scale"
    init_scale: float = Field(1.0, gt=0, description="starting value of every scale (1.0: the base model)")


class ScaledLinear(LinearAdapterLayer):
    adapter_containers: ClassVar[dict[str, type[nn.Module]]] = {"scale": nn.ParameterDict}

    def add_adapter(self, name: str, init_scale: float) -> None:
        self.check_new(name)
        self.scale[name] = nn.Parameter(torch.full((self.out_features,), init_scale, **self.factory()))

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = self.base_layer(x, *args, **kwargs)
        if self.active_adapter is None:
            return out
        return (out * self.scale[self.active_adapter]).to(out.dtype)


class ScaleMethod(WrapperMethod):
    name = label = "scale"
    config_class, layer_class = ScaleConfig, ScaledLinear
    description = "per-output-channel scale on linear layers (example plug-in)"

    def add_to_layer(self, layer: ScaledLinear, adapter_name: str, record: AdapterRecord, path: str) -> None:
        layer.add_adapter(adapter_name, record.config.init_scale)

    def layer_tensors(self, layer: ScaledLinear, adapter_name: str, record: AdapterRecord) -> dict[str, Any]:
        return {"scale": layer.scale[adapter_name]}

    def saved_fields(self, model: nn.Module, config: ScaleConfig, record: AdapterRecord) -> dict[str, Any]:
        return {"target_modules": record.targets, "init_scale": config.init_scale}

    def config_from_saved(self, saved: dict[str, Any]) -> AdapterConfigBase:
        return ScaleConfig(target_modules=saved["target_modules"], init_scale=saved.get("init_scale", 1.0))
