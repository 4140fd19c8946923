"""LoRA layers: a linear layer plus named low-rank updates, and trainable copies of whole modules.

    y = base(x) + B(A(dropout(x))) * s        s = alpha / r   (rsLoRA: alpha / sqrt(r))

`LoraLinear` wraps an `nn.Linear` or GPT-2's `Conv1D` (whose weight is stored transposed, (in, out):
"fan_in_fan_out"). A and B are always `nn.Linear(in, r)` and `nn.Linear(r, out)`; only merging has to
transpose the update for Conv1D. Attribute names (`base_layer`, `lora_A.<name>`, `lora_B.<name>`,
`original_module`, `modules_to_save.<name>`) are HuggingFace peft's, so state-dict keys line up with
peft's checkpoints once the adapter name is removed.

Several adapters live side by side in the ModuleDicts; at most one is active. A merged adapter is folded
into the base weight and contributes nothing more through its branch.

The forward runs the fused path of `fast.py` (one autograd node, no full-size temporaries) whenever it
computes the same thing: plain Linear/Conv1D base, one dtype throughout, no autocast, no hooks on the
modules it would bypass. Everything else runs `_forward_reference`, peft's formula with modules.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from peft_framework.adapters import base_layers
from peft_framework.adapters.lora import fast
from peft_framework.errors import AdapterError


def lora_scaling(r: int, alpha: float, use_rslora: bool) -> float:
    return alpha / math.sqrt(r) if use_rslora else alpha / r


class LoraLinear(nn.Module):
    """`base_layer(x)` plus the active adapter's `B(A(dropout(x))) * scaling`."""

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        info = base_layers.describe(base_layer, "LoraLinear")
        self.base_layer = base_layer
        self.fan_in_fan_out = info.fan_in_fan_out
        self.in_features, self.out_features = info.in_features, info.out_features
        self.quantized = info.quantized  # '4bit' / '8bit' for bitsandbytes bases, else None
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.lora_dropout = nn.ModuleDict()
        self.r: dict[str, int] = {}
        self.scaling: dict[str, float] = {}
        self.active_adapter: str | None = None
        self.merged_adapters: list[str] = []
        # exact pre-merge weights, only kept when merge(..., exact=True) asked for them
        self._weight_backup: dict[str, torch.Tensor] = {}

    # peft's layers expose these; some model code reads `proj.weight.dtype` and the like
    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    # --- adapters ---------------------------------------------------------------------------------
    def add_adapter(
        self, name: str, r: int, alpha: float, dropout: float, use_rslora: bool, init: str = "kaiming"
    ) -> None:
        if name in self.lora_A:
            raise AdapterError(f"an adapter named {name!r} already exists on this layer")
        info = base_layers.describe(self.base_layer, "LoraLinear")
        factory = {"device": info.device, "dtype": info.adapter_dtype}
        self.lora_A[name] = nn.Linear(self.in_features, r, bias=False, **factory)
        self.lora_B[name] = nn.Linear(r, self.out_features, bias=False, **factory)
        self.lora_dropout[name] = nn.Dropout(p=dropout) if dropout > 0 else nn.Identity()
        self.r[name] = r
        self.scaling[name] = lora_scaling(r, alpha, use_rslora)
        self.reset_parameters(name, init)
        self.train(self.base_layer.training)  # new submodules follow the model's train/eval mode

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

    def delete_adapter(self, name: str) -> None:
        if name in self.merged_adapters:
            raise AdapterError(f"adapter {name!r} is merged; unmerge it before deleting it")
        for container in (self.lora_A, self.lora_B, self.lora_dropout):
            del container[name]
        del self.r[name], self.scaling[name]
        if self.active_adapter == name:
            self.active_adapter = None

    def set_adapter(self, name: str | None) -> None:
        if name is not None and name not in self.lora_A:
            name = None  # this layer is not targeted by that adapter: plain base
        self.active_adapter = name

    # --- forward ----------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        name = self.active_adapter
        if name is None or name in self.merged_adapters:
            return self.base_layer(x, *args, **kwargs)
        base = self.base_layer
        a, b = self.lora_A[name].weight, self.lora_B[name].weight
        dropout = self.lora_dropout[name]
        if (
            not args
            and not kwargs
            and fast.fast_path_applies(base, x, a, b)
            and type(dropout) in (nn.Dropout, nn.Identity)
            and not fast.has_hooks(self.lora_A[name], self.lora_B[name], dropout)
        ):
            scaling, fan = self.scaling[name], self.fan_in_fan_out
            dropout_active = isinstance(dropout, nn.Dropout) and dropout.training and dropout.p > 0
            if torch.is_grad_enabled():
                x_branch = dropout(x) if dropout_active else None
                return fast.LoraLinearFunction.apply(x, x_branch, base.weight, base.bias, a, b, scaling, fan)
            if not dropout_active:
                return fast.lora_linear_inference(x, base.weight, base.bias, a, b, scaling, fan)
        return self._forward_reference(x, name, *args, **kwargs)

    def _forward_reference(self, x: torch.Tensor, name: str, *args: Any, **kwargs: Any) -> torch.Tensor:
        """peft's formula with modules: y = base(x) + B(A(dropout(x))) * s."""
        result = self.base_layer(x, *args, **kwargs)
        lora_a, lora_b = self.lora_A[name], self.lora_B[name]
        x = x.to(lora_a.weight.dtype)
        update = lora_b(lora_a(self.lora_dropout[name](x))) * self.scaling[name]
        if self.quantized:  # peft's bitsandbytes layers round the update to the result's dtype, then add
            return result + update.to(result.dtype)
        return (result + update).to(result.dtype)  # summed in the adapter's precision, rounded once (as peft)

    # --- merge --------------------------------------------------------------------------------------
    def delta_weight(self, name: str) -> torch.Tensor:
        """s * B @ A, laid out like the base weight ((in, out) for Conv1D)."""
        delta = (self.lora_B[name].weight @ self.lora_A[name].weight) * self.scaling[name]
        return delta.T if self.fan_in_fan_out else delta

    @torch.no_grad()
    def merge(self, name: str, exact: bool = False) -> None:
        """Fold adapter `name` into the base weight. exact=True keeps a copy of the weight for unmerge."""
        if name not in self.lora_A:
            return
        if name in self.merged_adapters:
            raise AdapterError(f"adapter {name!r} is already merged")
        base_layers.check_mergeable(self.base_layer, name)
        weight = self.base_layer.weight
        if exact:
            self._weight_backup[name] = weight.detach().clone()
        delta = self.delta_weight(name).to(torch.float32)
        weight.copy_((weight.to(torch.float32) + delta).to(weight.dtype))
        self.merged_adapters.append(name)

    @torch.no_grad()
    def unmerge(self, name: str) -> None:
        if name not in self.merged_adapters:
            return
        weight = self.base_layer.weight
        backup = self._weight_backup.pop(name, None)
        if backup is not None:
            weight.copy_(backup)
        else:
            delta = self.delta_weight(name).to(torch.float32)
            weight.copy_((weight.to(torch.float32) - delta).to(weight.dtype))
        self.merged_adapters.remove(name)

    def extra_repr(self) -> str:
        kind = (
            f"Linear{self.quantized}" if self.quantized else ("Conv1D" if self.fan_in_fan_out else "Linear")
        )
        return f"{kind}({self.in_features} -> {self.out_features}), adapters={list(self.r)}, active={self.active_adapter}"


class ModulesToSave(nn.Module):
    """A module trained in full: one copy per adapter, the original kept untouched for the plain base."""

    def __init__(self, original_module: nn.Module) -> None:
        super().__init__()
        self.original_module = original_module
        self.modules_to_save = nn.ModuleDict()
        self.active_adapter: str | None = None

    def add_adapter(self, name: str) -> None:
        if name in self.modules_to_save:
            raise AdapterError(f"an adapter named {name!r} already exists on this module")
        clone = copy.deepcopy(self.original_module)
        for param in clone.parameters():
            param.requires_grad = True
        self.modules_to_save[name] = clone
        self.train(self.original_module.training)

    def delete_adapter(self, name: str) -> None:
        del self.modules_to_save[name]
        if self.active_adapter == name:
            self.active_adapter = None

    def set_adapter(self, name: str | None) -> None:
        self.active_adapter = name if name in self.modules_to_save else None

    @property
    def active_module(self) -> nn.Module:
        if self.active_adapter is None:
            return self.original_module
        return self.modules_to_save[self.active_adapter]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.active_module(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        # registered submodules/params first (nn.Module's lookup), then the wrapped module's attributes
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in {"original_module", "modules_to_save"} or "active_adapter" not in self.__dict__:
                raise
            return getattr(self.active_module, name)
