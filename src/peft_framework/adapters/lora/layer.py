"""The LoRA layer: a linear layer plus named low-rank updates.

    y = base(x) + B(A(dropout(x))) * s        s = alpha / r   (rsLoRA: alpha / sqrt(r))

A and B are always `nn.Linear(in, r)` and `nn.Linear(r, out)`, also on GPT-2's Conv1D; only merging
transposes the update. Attribute names (`base_layer`, `lora_A.<name>`, `lora_B.<name>`) are HuggingFace
peft's, so state-dict keys line up with peft's checkpoints once the adapter name is removed.

`forward` is the formula. Calls the fused path of `fast.py` computes identically (one autograd node, no
full-size temporaries) are handed to it in one line; `fast.eligible` decides which.

Variants, their maths in their own modules: DoRA (`use_dora`; dora.py: a magnitude per output feature in
`lora_magnitude_vector`, forward and merge), PiSSA/OLoRA (`init`; init.py: A, B from the base weight, which
becomes the residual; A₀, B₀ kept in `initial_lora` so the adapter saves relative to the original weight).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import nn

from peft_framework.adapters.layer import LinearAdapterLayer, dequantized_weight
from peft_framework.adapters.lora import dora, fast
from peft_framework.adapters.lora import init as lora_init
from peft_framework.errors import AdapterError


def lora_scaling(r: int, alpha: float, use_rslora: bool) -> float:
    return alpha / math.sqrt(r) if use_rslora else alpha / r


class LoraLinear(LinearAdapterLayer):
    """`base_layer(x)` plus the active adapter's `B(A(dropout(x))) * scaling`."""

    adapter_containers: ClassVar[dict[str, type[nn.Module]]] = {
        **dict.fromkeys(("lora_A", "lora_B", "lora_dropout"), nn.ModuleDict),
        "lora_magnitude_vector": nn.ParameterDict,  # DoRA adapters only
    }
    lora_A: nn.ModuleDict
    lora_B: nn.ModuleDict
    lora_dropout: nn.ModuleDict
    lora_magnitude_vector: nn.ParameterDict

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self._dora_norm: dict[str, torch.Tensor] = {}  # merged DoRA adapters: the norm used, for unmerge
        # PiSSA/OLoRA adapters: (A₀, B₀), the part taken out of the base weight (which holds the residual)
        self.initial_lora: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.r: dict[str, int] = {}
        self.scaling: dict[str, float] = {}

    def add_adapter(
        self,
        name: str,
        r: int,
        alpha: float,
        dropout: float,
        use_rslora: bool,
        init: str = "kaiming",
        use_dora: bool = False,
    ) -> None:
        self.check_new(name)
        if self.initial_lora or (lora_init.mutates_base(init) and self.adapter_names):
            held = next(iter(self.initial_lora), None) or name
            raise AdapterError(
                f"adapter {held!r} uses adapter.init pissa/olora, which rewrites the base weight of its layers "
                "into a residual, so no other adapter can share them in memory; save it (it is saved as a plain "
                "LoRA on the original weights) and load that instead"
            )
        self.lora_A[name] = nn.Linear(self.in_features, r, bias=False, **self.factory())
        self.lora_B[name] = nn.Linear(r, self.out_features, bias=False, **self.factory())
        self.lora_dropout[name] = nn.Dropout(p=dropout) if dropout > 0 else nn.Identity()
        self.r[name] = r
        self.scaling[name] = lora_scaling(r, alpha, use_rslora)
        self.reset_parameters(name, init)
        if use_dora:  # m starts at ‖W + s·BA‖: the layer starts as the base
            a, b = self.lora_A[name].weight, self.lora_B[name].weight
            weight = dequantized_weight(self.base_layer)  # a 4-/8-bit base's weight as floats
            norm = dora.weight_norm(weight, a, b, self.scaling[name], self.fan_in_fan_out)
            self.lora_magnitude_vector[name] = nn.Parameter(norm.to(a.dtype))

    @torch.no_grad()
    def reset_parameters(self, name: str, init: str = "kaiming") -> None:
        a = self.lora_A[name].weight
        if lora_init.mutates_base(init):
            self._init_from_base(name, init)
            return
        if init == "kaiming":  # peft's default (init_lora_weights=True)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        elif init == "gaussian":  # peft's "gaussian": std 1/r
            nn.init.normal_(a, std=1.0 / self.r[name])
        else:
            raise AdapterError(f"adapter.init: {init!r} is not supported; allowed: 'kaiming', 'gaussian'")
        nn.init.zeros_(self.lora_B[name].weight)

    @torch.no_grad()
    def _init_from_base(self, name: str, init: str) -> None:
        """PiSSA/OLoRA: A, B from the base weight, which becomes the residual (init.py)."""
        weight = self.weight
        if weight.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise AdapterError(
                f"adapter.init: {init!r} needs float32/float16/bfloat16 base weights, got {weight.dtype}; "
                "allowed on this base: kaiming, gaussian"
            )
        a0, b0, residual = lora_init.decompose(
            weight, init, self.r[name], self.scaling[name], self.fan_in_fan_out
        )
        self.lora_A[name].weight.copy_(a0)
        self.lora_B[name].weight.copy_(b0)
        weight.copy_(residual)
        a, b = self.lora_A[name].weight, self.lora_B[name].weight
        self.initial_lora[name] = (a.detach().clone(), b.detach().clone())

    @torch.no_grad()
    def restore_base(self, name: str) -> None:
        """Give a PiSSA/OLoRA layer its original weight back (residual + s·B₀A₀)."""
        a0, b0 = self.initial_lora.pop(name)
        weight = self.weight
        delta = (b0 @ a0).to(torch.float32) * self.scaling[name]
        weight.add_((delta.T if self.fan_in_fan_out else delta).to(weight.dtype))

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        name = self.active_adapter
        if name is None or name in self.merged_adapters:
            return self.base_layer(x, *args, **kwargs)
        if name in self.lora_magnitude_vector:  # DoRA: m ⊙ (W + s·BA) / ‖W + s·BA‖ (dora.py)
            return dora.forward(self, name, x, *args, **kwargs)
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

    def merge_into_base(self, name: str) -> None:
        if name not in self.lora_magnitude_vector:
            return super().merge_into_base(name)
        weight, magnitude = self.weight, self.lora_magnitude_vector[name]
        merged, self._dora_norm[name] = dora.merge(
            weight, self.delta_weight(name), magnitude, self.fan_in_fan_out
        )
        weight.copy_(merged.to(weight.dtype))

    def unmerge_from_base(self, name: str) -> None:
        if name not in self.lora_magnitude_vector:
            return super().unmerge_from_base(name)
        weight, magnitude, norm = self.weight, self.lora_magnitude_vector[name], self._dora_norm.pop(name)
        weight.copy_(
            dora.unmerge(weight, self.delta_weight(name), magnitude, norm, self.fan_in_fan_out).to(
                weight.dtype
            )
        )
