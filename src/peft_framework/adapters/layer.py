"""The base of every wrapper layer an adapter puts into a model (peft's `BaseTunerLayer`, small).

An `AdapterLayer` holds one base module and any number of named adapters, at most one of them active.
`LinearAdapterLayer` is the base for wrappers of linear layers; which base layer kinds it accepts and how
their in/out features and weight are read is decided here, once for every adapter type:

- `nn.Linear`: weight (out, in);
- GPT-2's `Conv1D`: weight stored transposed, (in, out) ("fan_in_fan_out"); merging transposes the update;
- bitsandbytes `Linear4bit` (QLoRA) and `Linear8bitLt` (LLM.int8), a quantized base (`model.quantization`):
  subclasses of nn.Linear whose weight is packed (4-bit: a (n/2, 1) uint8 tensor plus a quant state; 8-bit:
  int8 with row scales), so in/out features come from the layer's attributes. The base layer's own forward
  dequantizes; adapters add to or scale around it, so their maths is unchanged. Adapter tensors on them are
  fp32 (as peft's), and nothing is merged into a quantized weight (the update would be lost to a lossy
  requantization): export merges into the unquantized base instead. Maths that needs the weight itself
  (DoRA's row norm) reads `dequantized_weight`, as peft's `dequantize_module_weight`.

A new kind of base layer is added to `BASE_LAYER_KINDS` (or `quantized_kinds`) and `linear_features` /
`base_weight`, and every adapter type wraps it.
"""

from __future__ import annotations

from functools import cache
from typing import Any, ClassVar

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from peft_framework.errors import AdapterError

#: the base layer kinds `LinearAdapterLayer` wraps (and 'all-linear' selects)
BASE_LAYER_KINDS: tuple[type[nn.Module], ...] = (nn.Linear, Conv1D)
_LOW_PRECISION = (torch.float16, torch.bfloat16)


@cache
def quantized_kinds() -> dict[type[nn.Module], str]:
    """bitsandbytes' quantized linears -> '4bit' / '8bit' (empty without bitsandbytes). They subclass
    nn.Linear, so `BASE_LAYER_KINDS` (and 'all-linear') already select them; imported only when asked."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        return {}
    return {bnb.nn.Linear4bit: "4bit", bnb.nn.Linear8bitLt: "8bit"}


def quantization(base: nn.Module) -> str | None:
    """'4bit' or '8bit' for a bitsandbytes layer, None for a plain one."""
    if type(base) in BASE_LAYER_KINDS or not isinstance(base, nn.Linear):
        return None
    return next((kind for cls, kind in quantized_kinds().items() if isinstance(base, cls)), None)


def check_mergeable(base: nn.Module, name: str) -> None:
    """AdapterError when `base` holds a quantized weight: a merged update would be rounded away."""
    kind = quantization(base)
    if kind is not None:
        raise AdapterError(
            f"cannot merge adapter {name!r} into a {kind} quantized (bitsandbytes) weight: requantizing would "
            "round the update away. Merge into the unquantized base instead: the export stage does (it loads "
            "the base without model.quantization), or load the base unquantized and the adapter on it"
        )


def linear_features(base: nn.Module) -> tuple[int, int, bool]:
    """(in_features, out_features, fan_in_fan_out) of a base layer of one of `BASE_LAYER_KINDS`."""
    if not isinstance(base, BASE_LAYER_KINDS):
        kinds = ", ".join(k.__name__ for k in BASE_LAYER_KINDS)
        raise TypeError(
            f"adapter layers wrap {kinds} or bitsandbytes' Linear4bit/Linear8bitLt, not {type(base).__name__}"
        )
    if quantization(base) is not None:  # packed weight: its shape is not (out, in)
        return base.in_features, base.out_features, False
    fan_in_fan_out = isinstance(base, Conv1D)
    rows, cols = base.weight.shape
    return (rows, cols, True) if fan_in_fan_out else (cols, rows, False)


def base_weight(base: nn.Module) -> torch.Tensor:
    """The base layer's weight as stored ((out, in), or (in, out) for Conv1D)."""
    return base.weight


@torch.no_grad()
def dequantized_weight(base: nn.Module) -> torch.Tensor:
    """The base layer's weight as floats: the stored weight, or for a bitsandbytes layer its dequantized
    (out, in) weight, computed as peft's `dequantize_bnb_weight` does (DoRA needs ‖W + s·BA‖ per row).
    A new tensor for quantized layers (never written back), the stored one otherwise."""
    kind = quantization(base)
    if kind is None:
        return base_weight(base)
    import bitsandbytes.functional as bnbf

    weight = base.weight
    if kind == "4bit":
        return bnbf.dequantize_4bit(weight.data, weight.quant_state)
    state = getattr(base, "state", None)  # 8-bit: int8 rows times their absmax / 127
    scb = getattr(state, "SCB", None)
    scb = weight.SCB if scb is None else scb
    return bnbf.int8_vectorwise_dequant(weight.data, scb.to(weight.device))


def adapter_factory(reference: torch.Tensor | None) -> dict[str, Any]:
    """`dtype`/`device` for new adapter tensors: the base's, but fp32 for fp16/bf16 bases (peft's default,
    autocast_adapter_dtype), so small updates are not lost to rounding, and for quantized (integer-packed)
    weights."""
    if reference is None:
        return {"dtype": None, "device": None}
    low = reference.dtype in _LOW_PRECISION or not reference.dtype.is_floating_point
    dtype = torch.float32 if low else reference.dtype
    return {"dtype": dtype, "device": reference.device}


class AdapterLayer(nn.Module):
    """A base module plus named adapters; at most one active, merged ones folded into the base weights."""

    #: the per-adapter containers (attribute -> nn.ModuleDict or nn.ParameterDict) made for each layer;
    #: the first one's keys are the names of the adapters the layer holds
    adapter_containers: ClassVar[dict[str, type[nn.Module]]]
    #: the attribute holding the wrapped module (peft's names: 'base_layer', 'original_module')
    base_attr: ClassVar[str] = "base_layer"
    #: whether attributes this class lacks are read from the wrapped module (`layer_idx`, `config`, ...)
    delegate_attributes: ClassVar[bool] = False

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.active_adapter: str | None = None
        self.merged_adapters: list[str] = []
        setattr(self, self.base_attr, base)
        for attr, container in self.adapter_containers.items():
            setattr(self, attr, container())

    @property
    def base(self) -> nn.Module:
        return self._modules[self.base_attr]

    @property
    def adapter_names(self) -> list[str]:
        return list(self._modules[next(iter(self.adapter_containers))])

    def has_adapter(self, name: str | None) -> bool:
        return name is not None and name in self.adapter_names

    def set_adapter(self, name: str | None) -> None:
        """Activate `name`; a layer the adapter does not target runs its plain base."""
        self.active_adapter = name if self.has_adapter(name) else None

    def check_new(self, name: str) -> None:
        if self.has_adapter(name):
            raise AdapterError(f"an adapter named {name!r} already exists on this layer")

    def delegate(self) -> nn.Module:
        """The module whose attributes stand for this wrapper's (`delegate_attributes`)."""
        return self.base

    def __getattr__(self, name: str) -> Any:
        try:  # registered submodules and parameters first (nn.Module's lookup)
            return super().__getattr__(name)
        except AttributeError:
            own = (self.base_attr, *self.adapter_containers)
            modules = self.__dict__.get("_modules", {})  # not there yet while unpickling
            if not self.delegate_attributes or name in own or self.base_attr not in modules:
                raise
            return getattr(self.delegate(), name)


class LinearAdapterLayer(AdapterLayer):
    """Wrapper of a linear base layer (one of `BASE_LAYER_KINDS`). Types supply `adapter_containers`,
    `add_adapter`, `forward` and either `delta_weight` (an additive update) or their own `merge_into_base`/`unmerge_from_base`."""

    def __init__(self, base_layer: nn.Module) -> None:
        in_features, out_features, fan_in_fan_out = linear_features(base_layer)
        super().__init__(base_layer)
        self.in_features, self.out_features, self.fan_in_fan_out = in_features, out_features, fan_in_fan_out
        self.quantized = quantization(base_layer)  # '4bit' / '8bit' on a bitsandbytes base, else None
        # exact pre-merge weights, only kept when merge(..., exact=True) asked for them
        self._weight_backup: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}

    # peft's layers expose these; some model code reads `proj.weight.dtype` and the like
    @property
    def weight(self) -> torch.Tensor:
        return base_weight(self.base_layer)

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    def factory(self) -> dict[str, Any]:
        if self.quantized:  # the packed storage dtype says nothing about precision: fp32, as peft
            return {"dtype": torch.float32, "device": self.weight.device}
        return adapter_factory(self.weight)

    # --- merge ------------------------------------------------------------------------------------
    def delta_weight(self, name: str) -> torch.Tensor:
        """The update of adapter `name`, laid out like the base weight."""
        raise NotImplementedError

    def merge_into_base(self, name: str) -> None:
        weight = self.weight
        weight.copy_((weight.to(torch.float32) + self.delta_weight(name).to(torch.float32)).to(weight.dtype))

    def unmerge_from_base(self, name: str) -> None:
        weight = self.weight
        weight.copy_((weight.to(torch.float32) - self.delta_weight(name).to(torch.float32)).to(weight.dtype))

    @torch.no_grad()
    def merge(self, name: str, exact: bool = False) -> None:
        """Fold adapter `name` into the base weights. exact=True keeps the old weights so that unmerge
        restores them bit for bit (costs their memory)."""
        if not self.has_adapter(name):
            return
        if name in self.merged_adapters:
            raise AdapterError(f"adapter {name!r} is already merged")
        check_mergeable(self.base_layer, name)
        if exact:
            bias = self.bias
            self._weight_backup[name] = (
                self.weight.detach().clone(),
                None if bias is None else bias.detach().clone(),
            )
        self.merge_into_base(name)
        self.merged_adapters.append(name)

    @torch.no_grad()
    def unmerge(self, name: str) -> None:
        if name not in self.merged_adapters:
            return
        backup = self._weight_backup.pop(name, None)
        if backup is None:
            self.unmerge_from_base(name)
        else:
            self.weight.copy_(backup[0])
            if backup[1] is not None:
                self.bias.copy_(backup[1])
        self.merged_adapters.remove(name)

    def extra_repr(self) -> str:
        kind = type(self.base_layer).__name__
        return (
            f"{kind}({self.in_features} -> {self.out_features}), adapters={self.adapter_names}, "
            f"active={self.active_adapter}"
        )
