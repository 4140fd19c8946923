"""The LoRA layer: a linear layer plus named low-rank updates.

    y = base(x) + B(A(dropout(x))) * s        s = alpha / r   (rsLoRA: alpha / sqrt(r))

A and B are always `nn.Linear(in, r)` and `nn.Linear(r, out)`, also on GPT-2's Conv1D; only merging
transposes the update. Attribute names (`base_layer`, `lora_A.<name>`, `lora_B.<name>`) are HuggingFace
peft's, so state-dict keys line up with peft's checkpoints once the adapter name is removed.

`forward` is the formula. Calls the fused path of `fast.py` computes identically (one autograd node, no
full-size temporaries) are handed to it in one line; `fast.eligible` decides which.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import nn

from peft_framework.adapters.layer import LinearAdapterLayer
from peft_framework.adapters.lora import fast
from peft_framework.errors import AdapterError


def lora_scaling(r: int, alpha: float, use_rslora: bool) -> float:
    return alpha / math.sqrt(r) if use_rslora else alpha / r


class LoraLinear(LinearAdapterLayer):
    """`base_layer(x)` plus the active adapter's `B(A(dropout(x))) * scaling`."""

    adapter_containers: ClassVar[dict[str, type[nn.Module]]] = dict.fromkeys(
        ("lora_A", "lora_B", "lora_dropout"), nn.ModuleDict
    )
    lora_A: nn.ModuleDict
    lora_B: nn.ModuleDict
    lora_dropout: nn.ModuleDict

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.r: dict[str, int] = {}
        self.scaling: dict[str, float] = {}

    def add_adapter(
        self, name: str, r: int, alpha: float, dropout: float, use_rslora: bool, init: str = "kaiming"
    ) -> None:
        self.check_new(name)
        self.lora_A[name] = nn.Linear(self.in_features, r, bias=False, **self.factory())
        self.lora_B[name] = nn.Linear(r, self.out_features, bias=False, **self.factory())
        self.lora_dropout[name] = nn.Dropout(p=dropout) if dropout > 0 else nn.Identity()
        self.r[name] = r
        self.scaling[name] = lora_scaling(r, alpha, use_rslora)
        self.reset_parameters(name, init)

    @torch.no_grad()
    def reset_parameters(self, name: str, init: str = "kaiming") -> None:
        a = self.lora_A[name].weight
        if init == "kaiming":  # peft's default (init_lora_weights=True)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        elif init == "gaussian":  # peft's "gaussian": std 1/r
            nn.init.normal_(a, std=1.0 / self.r[name])
        else:
            raise AdapterError(f"adapter.init: {init!r} is not supported; allowed: 'kaiming', 'gaussian'")
        nn.init.zeros_(self.lora_B[name].weight)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        name = self.active_adapter
        if name is None or name in self.merged_adapters:
            return self.base_layer(x, *args, **kwargs)
        if not args and not kwargs and fast.eligible(self, name, x):
            return fast.lora_linear(self, name, x)
        lora_a, lora_b, dropout = self.lora_A[name], self.lora_B[name], self.lora_dropout[name]
        result = self.base_layer(x, *args, **kwargs)
        update = lora_b(lora_a(dropout(x.to(lora_a.weight.dtype)))) * self.scaling[name]
        if self.quantized:  # peft's bitsandbytes layers round the update to the result's dtype, then add
            return result + update.to(result.dtype)
        return (result + update).to(result.dtype)  # summed in the adapter's precision, rounded once (as peft)

    def delta_weight(self, name: str) -> torch.Tensor:
        """s * B @ A, laid out like the base weight ((in, out) for Conv1D)."""
        delta = (self.lora_B[name].weight @ self.lora_A[name].weight) * self.scaling[name]
        return delta.T if self.fan_in_fan_out else delta
