"""DoRA (Liu et al. 2024): weight-decomposed LoRA, as peft computes it (peft/tuners/lora/dora.py).

    W' = m ⊙ (W + s·BA) / ‖W + s·BA‖_row        m: a trained magnitude per output feature

The row norm is detached (DoRA §4.3: it reflects BA but gets no gradient). So with dropout inactive the
layer computes

    y = b + (m / ‖W + s·BA‖) ⊙ (x Wᵀ + s · x Aᵀ Bᵀ)

which is the fused LoRA node (`fast.LoraLinearFunction`, without the bias) times one per-feature scale:
`forward_fused`. With dropout active peft feeds the dropped-out input to the rescaled base term too,
`forward_reference` writes that out as peft does. `m` starts at ‖W + s·BA‖ (so the layer starts as the base).
Merge: W ← (m / ‖W + s·BA‖) ⊙ (W + s·BA), the norm kept for unmerge (peft's merge/unmerge).
On a bitsandbytes 4-/8-bit base W is the dequantized weight (peft's `dequantize_module_weight`), the base
term the quantized layer's own output; nothing merges into a quantized weight (export merges into the
unquantized base).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from peft_framework.adapters.layer import dequantized_weight
from peft_framework.adapters.lora import fast

if TYPE_CHECKING:
    from peft_framework.adapters.lora.layer import LoraLinear


def forward(layer: LoraLinear, name: str, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """`layer`'s DoRA forward through adapter `name`: fused when `fast.eligible` and dropout is inactive,
    else peft's formula."""
    a, b, dropout = layer.lora_A[name], layer.lora_B[name], layer.lora_dropout[name]
    magnitude, s, fan = layer.lora_magnitude_vector[name], layer.scaling[name], layer.fan_in_fan_out
    dropout_active = isinstance(dropout, nn.Dropout) and dropout.training and dropout.p > 0
    if (
        not args
        and not kwargs
        and not dropout_active
        and magnitude.dtype == x.dtype
        and fast.eligible(layer, name, x)
    ):
        return forward_fused(x, layer.base_layer, a.weight, b.weight, magnitude, s, fan)
    result = layer.base_layer(x, *args, **kwargs)
    x = x.to(a.weight.dtype)
    out = forward_reference(x, result.to(x.dtype), layer.base_layer, a, b, dropout, magnitude, s, fan)
    return out.to(result.dtype)


@torch.no_grad()
def weight_norm(
    weight: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, scaling: float, fan_in_fan_out: bool
) -> torch.Tensor:
    """‖W + s·BA‖ per output feature (out,), in the adapter's dtype; never part of the autograd graph."""
    w = weight.T if fan_in_fan_out else weight
    # written as peft writes it (not one addmm): the same rounding, so magnitudes start bit-identical
    return torch.linalg.norm(w.to(lora_a.dtype) + scaling * (lora_b.to(lora_a.dtype) @ lora_a), dim=1)


def magnitude_scale(
    magnitude: torch.Tensor,
    weight: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    s: float,
    fan: bool,
) -> torch.Tensor:
    return magnitude / weight_norm(weight, lora_a, lora_b, s, fan)


def forward_fused(
    x: torch.Tensor,
    base: nn.Module,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    magnitude: torch.Tensor,
    scaling: float,
    fan_in_fan_out: bool,
) -> torch.Tensor:
    """b + scale ⊙ (x Wᵀ + s·x Aᵀ Bᵀ) with one fused node (dropout inactive; dtypes checked by the caller)."""
    scale = magnitude_scale(magnitude, base.weight, lora_a, lora_b, scaling, fan_in_fan_out)
    # without autograd the node keeps nothing for a backward (and may use the merged-weight forward)
    z = fast.LoraLinearFunction.apply(x, None, base.weight, None, lora_a, lora_b, scaling, fan_in_fan_out)
    y = z * scale
    return y if base.bias is None else y + base.bias


def forward_reference(
    x: torch.Tensor,
    result: torch.Tensor,
    base: nn.Module,
    lora_a: nn.Module,
    lora_b: nn.Module,
    dropout: nn.Module,
    magnitude: torch.Tensor,
    scaling: float,
    fan_in_fan_out: bool,
) -> torch.Tensor:
    """peft's DoraLinearLayer.forward added to `result` (= base(x)), in the adapter's dtype."""
    weight = dequantized_weight(base).to(x.dtype)  # a bitsandbytes base: dequantized, as peft
    norm = weight_norm(weight, lora_a.weight, lora_b.weight, scaling, fan_in_fan_out).to(x.dtype)
    mag_norm_scale = (magnitude / norm).view(1, -1)
    if isinstance(dropout, nn.Identity) or not dropout.training:
        base_result = result if base.bias is None else result - base.bias
    else:
        x = dropout(x)
        base_result = F.linear(x, weight.T if fan_in_fan_out else weight)
    lora_result = lora_b(lora_a(x))
    return result + (mag_norm_scale - 1) * base_result + mag_norm_scale * lora_result * scaling


@torch.no_grad()
def merge(
    weight: torch.Tensor, delta: torch.Tensor, magnitude: torch.Tensor, fan_in_fan_out: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(merged weight in fp32 laid out like `weight`, the norm to keep for unmerge). `delta` = s·BA, laid out
    like the weight."""
    combined = weight.to(torch.float32) + delta.to(torch.float32)
    norm = torch.linalg.norm(combined.T if fan_in_fan_out else combined, dim=1)
    factor = (magnitude.to(torch.float32) / norm).view(-1, 1)
    factor = factor.T if fan_in_fan_out else factor
    return factor * combined, norm


@torch.no_grad()
def unmerge(
    weight: torch.Tensor,
    delta: torch.Tensor,
    magnitude: torch.Tensor,
    norm: torch.Tensor,
    fan_in_fan_out: bool,
) -> torch.Tensor:
    """The weight before `merge` (fp32): W' / factor − s·BA."""
    factor = (magnitude.to(torch.float32) / norm).view(-1, 1)
    factor = factor.T if fan_in_fan_out else factor
    return weight.to(torch.float32) / factor - delta.to(torch.float32)
