"""The kinds of base layer an adapter layer can wrap, and what an adapter needs to know about each.

    info = describe(base_layer)      # in/out features, layout, quantization, the adapter's dtype

- `nn.Linear`: weight (out, in);
- GPT-2's `Conv1D`: weight stored transposed, (in, out) ("fan_in_fan_out");
- bitsandbytes `Linear4bit` (QLoRA) and `Linear8bitLt` (LLM.int8): the weight is packed (4-bit: a
  (n/2, 1) uint8 tensor plus a quant state; 8-bit: int8 with row scales), so the shape comes from the
  layer's `in_features`/`out_features`. The base layer's own forward dequantizes; adapters only add to or
  scale around it, so their maths is unchanged. Adapter tensors are fp32 on them (as peft's), and nothing
  is ever merged into a quantized weight (a 4-/8-bit tensor cannot hold the update without a lossy
  requantization): export merges into the unquantized base instead.

Written once for every adapter type: LoRA, AdaLoRA and IA3 call it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from peft_framework.errors import AdapterError

_LOW_PRECISION = (torch.float16, torch.bfloat16)


@cache
def quantized_types() -> dict[type[nn.Module], str]:
    """bitsandbytes' layer classes -> '4bit' / '8bit' (empty when bitsandbytes is not installed)."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        return {}
    return {bnb.nn.Linear4bit: "4bit", bnb.nn.Linear8bitLt: "8bit"}


def quantization(base: nn.Module) -> str | None:
    """'4bit', '8bit' or None for a plain layer."""
    if not isinstance(base, nn.Linear):  # bitsandbytes' layers subclass nn.Linear
        return None
    for cls, kind in quantized_types().items():
        if isinstance(base, cls):
            return kind
    return None


@dataclass(frozen=True)
class BaseLayerInfo:
    in_features: int
    out_features: int
    fan_in_fan_out: bool  # weight stored (in, out): Conv1D
    quantized: str | None  # '4bit', '8bit' or None
    adapter_dtype: torch.dtype  # what the adapter's own tensors are created in
    device: torch.device

    @property
    def kind(self) -> str:
        if self.quantized:
            return f"Linear{self.quantized}"
        return "Conv1D" if self.fan_in_fan_out else "Linear"


def describe(base: nn.Module, wrapper: str = "an adapter layer") -> BaseLayerInfo:
    """What `wrapper` needs to know about `base`; TypeError for a kind of layer it cannot wrap."""
    quantized = quantization(base)
    weight = getattr(base, "weight", None)
    if quantized is not None:
        n_in, n_out, fan = base.in_features, base.out_features, False
    elif isinstance(base, Conv1D):
        n_in, n_out, fan = weight.shape[0], weight.shape[1], True
    elif isinstance(base, nn.Linear):
        n_in, n_out, fan = weight.shape[1], weight.shape[0], False
    else:
        raise TypeError(
            f"{wrapper} wraps nn.Linear, Conv1D or bitsandbytes Linear4bit/Linear8bitLt, not {type(base).__name__}"
        )
    # peft's default (autocast_adapter_dtype): adapters on fp16/bf16 or quantized weights are kept in fp32
    if quantized is not None or weight.dtype in _LOW_PRECISION:
        dtype = torch.float32
    else:
        dtype = weight.dtype
    return BaseLayerInfo(n_in, n_out, fan, quantized, dtype, weight.device)


def check_mergeable(base: nn.Module, adapter_name: str) -> None:
    """AdapterError when `base` holds a quantized weight: merging would requantize (lossy)."""
    quantized = quantization(base)
    if quantized is not None:
        raise AdapterError(
            f"cannot merge adapter {adapter_name!r} into a {quantized} quantized (bitsandbytes) weight: the "
            "update would be rounded away by requantization. Merge into the unquantized base instead: the "
            "export stage does (it loads the base without model.quantization), or load the base unquantized "
            "and the adapter on it"
        )
