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
    adapter_dict: ClassVar[str] = "scale"

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.scale = nn.ParameterDict()

    def add_adapter(self, name: str, init_scale: float) -> None:
        self.check_new(name)
        self.scale[name] = nn.Parameter(torch.full((self.out_features,), init_scale, **self.factory()))

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = self.base_layer(x, *args, **kwargs)
        if self.active_adapter is None:
            return out
        return (out * self.scale[self.active_adapter]).to(out.dtype)


class ScaleMethod(WrapperMethod):
    name: ClassVar[str] = "scale"
    label: ClassVar[str] = "scale"
    config_class: ClassVar[type[AdapterConfigBase]] = ScaleConfig
    layer_class: ClassVar[type[ScaledLinear]] = ScaledLinear
    description: ClassVar[str] = "per-output-channel scale on linear layers (example plug-in)"

    def add_to_layer(self, layer: ScaledLinear, adapter_name: str, record: AdapterRecord, path: str) -> None:
        layer.add_adapter(adapter_name, record.config.init_scale)

    def layer_tensors(self, layer: ScaledLinear, adapter_name: str, record: AdapterRecord) -> dict[str, Any]:
        return {"scale": layer.scale[adapter_name]}

    def saved_config(
        self,
        config: Any,
        *,
        base_model_name_or_path: Any,
        task_type: Any,
        model: nn.Module,
        adapter_name: str,
    ) -> dict[str, Any]:
        return {
            "peft_framework_type": self.name,
            "base_model_name_or_path": base_model_name_or_path,
            "task_type": task_type,
            "target_modules": self.record(model, adapter_name).targets,
            "init_scale": config.init_scale,
        }

    def config_from_saved(self, saved: dict[str, Any]) -> AdapterConfigBase:
        return ScaleConfig(target_modules=saved["target_modules"], init_scale=saved.get("init_scale", 1.0))
