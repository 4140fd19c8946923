"""(IA)³ on a linear layer: a learned vector rescales the layer's output, or, for feed-forward modules,
its input.

    ordinary:      y = base(x) * l          l: (out, 1), saved as `ia3_l`
    feed-forward:  y = base(x * l)          l: (1, in)

Attribute names, shapes and the order of operations are HuggingFace peft's (`ia3.Linear`). GPT-2's Conv1D
(weight stored (in, out)) is wrapped too; only merging has to transpose the vector.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from peft_framework.adapters import base_layers
from peft_framework.errors import AdapterError

UNMERGE_EPS = 1e-8


class IA3Linear(nn.Module):
    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        info = base_layers.describe(base_layer, "IA3Linear")
        self.base_layer = base_layer
        self.fan_in_fan_out = info.fan_in_fan_out
        self.in_features, self.out_features = info.in_features, info.out_features
        self.ia3_l = nn.ParameterDict()
        self.is_feedforward: dict[str, bool] = {}
        self.active_adapter: str | None = None
        self.merged_adapters: list[str] = []
        self._weight_backup: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}

    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    # --- adapters ---------------------------------------------------------------------------------
    def add_adapter(self, name: str, is_feedforward: bool, init_ones: bool = True) -> None:
        if name in self.ia3_l:
            raise AdapterError(f"an adapter named {name!r} already exists on this layer")
        info = base_layers.describe(self.base_layer, "IA3Linear")
        shape = (1, self.in_features) if is_feedforward else (self.out_features, 1)
        vector = torch.randn(shape, device=info.device, dtype=info.adapter_dtype)
        if init_ones:
            nn.init.constant_(vector, 1.0)
        self.ia3_l[name] = nn.Parameter(vector)
        self.is_feedforward[name] = is_feedforward

    def delete_adapter(self, name: str) -> None:
        if name in self.merged_adapters:
            raise AdapterError(f"adapter {name!r} is merged; unmerge it before deleting it")
        del self.ia3_l[name]
        del self.is_feedforward[name]
        if self.active_adapter == name:
            self.active_adapter = None

    def set_adapter(self, name: str | None) -> None:
        self.active_adapter = name if name in self.ia3_l else None

    # --- forward ----------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        name = self.active_adapter
        if name is None or name in self.merged_adapters:
            return self.base_layer(x, *args, **kwargs)
        vector = self.ia3_l[name]
        scaling = vector.flatten()
        if self.is_feedforward[name]:
            previous_dtype = x.dtype
            interm = (x.to(vector.dtype) * scaling).to(previous_dtype)
            return self.base_layer(interm, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        return (result * scaling).to(result.dtype)

    # --- merge --------------------------------------------------------------------------------------
    def _weight_factor(self, name: str) -> torch.Tensor:
        """The vector shaped to broadcast over the stored weight ((out, in), or (in, out) for Conv1D)."""
        vector = self.ia3_l[name].detach()
        return vector.T if self.fan_in_fan_out else vector

    @torch.no_grad()
    def merge(self, name: str, exact: bool = False) -> None:
        """W ⊙ l (and the bias, for output-side vectors). exact=True keeps the old weights for unmerge."""
        if name not in self.ia3_l:
            return
        if name in self.merged_adapters:
            raise AdapterError(f"adapter {name!r} is already merged")
        base_layers.check_mergeable(self.base_layer, name)
        base = self.base_layer
        if exact:
            self._weight_backup[name] = (
                base.weight.detach().clone(),
                None if base.bias is None else base.bias.detach().clone(),
            )
        base.weight.copy_(torch.mul(base.weight, self._weight_factor(name)).to(base.weight.dtype))
        if not self.is_feedforward[name] and base.bias is not None:
            base.bias.copy_(
                torch.mul(base.bias, self.ia3_l[name].detach().reshape(base.bias.shape)).to(base.bias.dtype)
            )
        self.merged_adapters.append(name)

    @torch.no_grad()
    def unmerge(self, name: str) -> None:
        """Divide the vector back out (as peft; inexact where l is near 0) or restore the exact backup."""
        if name not in self.merged_adapters:
            return
        base = self.base_layer
        backup = self._weight_backup.pop(name, None)
        if backup is not None:
            base.weight.copy_(backup[0])
            if backup[1] is not None:
                base.bias.copy_(backup[1])
        else:
            base.weight.copy_(
                torch.div(base.weight, self._weight_factor(name) + UNMERGE_EPS).to(base.weight.dtype)
            )
            if not self.is_feedforward[name] and base.bias is not None:
                factor = self.ia3_l[name].detach().reshape(base.bias.shape) + UNMERGE_EPS
                base.bias.copy_(torch.div(base.bias, factor).to(base.bias.dtype))
        self.merged_adapters.remove(name)

    def extra_repr(self) -> str:
        kind = "Conv1D" if self.fan_in_fan_out else "Linear"
        sides = {n: ("input" if ff else "output") for n, ff in self.is_feedforward.items()}
        return f"{kind}({self.in_features} -> {self.out_features}), adapters={sides}, active={self.active_adapter}"
