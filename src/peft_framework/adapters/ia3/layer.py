"""(IA)³ on a linear layer: a learned vector rescales the layer's output, or, for feed-forward modules,
its input.

    ordinary:      y = base(x) * l          l: (out, 1), saved as `ia3_l`
    feed-forward:  y = base(x * l)          l: (1, in)

Attribute names, shapes and the order of operations are HuggingFace peft's (`ia3.Linear`). On GPT-2's
Conv1D only merging has to transpose the vector.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from peft_framework.adapters.layer import LinearAdapterLayer

UNMERGE_EPS = 1e-8


class IA3Linear(LinearAdapterLayer):
    adapter_containers: ClassVar[dict[str, type[nn.Module]]] = {"ia3_l": nn.ParameterDict}
    ia3_l: nn.ParameterDict

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.is_feedforward: dict[str, bool] = {}

    def add_adapter(self, name: str, is_feedforward: bool, init_ones: bool = True) -> None:
        self.check_new(name)
        shape = (1, self.in_features) if is_feedforward else (self.out_features, 1)
        vector = torch.randn(shape, **self.factory())
        if init_ones:
            nn.init.constant_(vector, 1.0)
        self.ia3_l[name] = nn.Parameter(vector)
        self.is_feedforward[name] = is_feedforward

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        name = self.active_adapter
        if name is None or name in self.merged_adapters:
            return self.base_layer(x, *args, **kwargs)
        vector = self.ia3_l[name]
        scaling = vector.flatten()
        if self.is_feedforward[name]:
            interm = (x.to(vector.dtype) * scaling).to(x.dtype)
            return self.base_layer(interm, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        return (result * scaling).to(result.dtype)

    # --- merge: W ⊙ l (and the bias, for output-side vectors); unmerge divides it back out, as peft -----
    def _weight_factor(self, name: str) -> torch.Tensor:
        """The vector shaped to broadcast over the stored weight ((out, in), or (in, out) for Conv1D)."""
        vector = self.ia3_l[name].detach()
        return vector.T if self.fan_in_fan_out else vector

    def _bias_factor(self, name: str) -> torch.Tensor | None:
        bias = self.bias
        if self.is_feedforward[name] or bias is None:
            return None
        return self.ia3_l[name].detach().reshape(bias.shape)

    def merge_into_base(self, name: str) -> None:
        weight, bias = self.weight, self.bias
        weight.copy_(torch.mul(weight, self._weight_factor(name)).to(weight.dtype))
        factor = self._bias_factor(name)
        if factor is not None:
            bias.copy_(torch.mul(bias, factor).to(bias.dtype))

    def unmerge_from_base(self, name: str) -> None:
        """Inexact where l is near 0; merge(..., exact=True) keeps the old weights instead."""
        weight, bias = self.weight, self.bias
        weight.copy_(torch.div(weight, self._weight_factor(name) + UNMERGE_EPS).to(weight.dtype))
        factor = self._bias_factor(name)
        if factor is not None:
            bias.copy_(torch.div(bias, factor + UNMERGE_EPS).to(bias.dtype))
