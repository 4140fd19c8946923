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

Variants (maths in their own modules): DoRA (`use_dora`, dora.py: a magnitude per output feature in
`lora_magnitude_vector`), and PiSSA/OLoRA (init.py: the base weight becomes the residual; the initial A₀, B₀
are kept in `initial_lora` so the adapter can be saved relative to the original weight).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from peft_framework.adapters.lora import dora, fast
from peft_framework.adapters.lora import init as lora_init
from peft_framework.errors import AdapterError

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def lora_scaling(r: int, alpha: float, use_rslora: bool) -> float:
    return alpha / math.sqrt(r) if use_rslora else alpha / r


class LoraLinear(nn.Module):
    """`base_layer(x)` plus the active adapter's `B(A(dropout(x))) * scaling`."""

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        if not isinstance(base_layer, (nn.Linear, Conv1D)):
            raise TypeError(f"LoraLinear wraps nn.Linear or Conv1D, not {type(base_layer).__name__}")
        self.base_layer = base_layer
        self.fan_in_fan_out = isinstance(base_layer, Conv1D)
        w = base_layer.weight
        self.in_features, self.out_features = (
            (w.shape[0], w.shape[1]) if self.fan_in_fan_out else (w.shape[1], w.shape[0])
        )
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.lora_dropout = nn.ModuleDict()
        self.lora_magnitude_vector = nn.ParameterDict()  # DoRA adapters only
        self._dora_norm: dict[str, torch.Tensor] = {}  # merged DoRA adapters: the norm used, for unmerge
        # PiSSA/OLoRA adapters: (A₀, B₀), the part taken out of the base weight (which holds the residual)
        self.initial_lora: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
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
        self,
        name: str,
        r: int,
        alpha: float,
        dropout: float,
        use_rslora: bool,
        init: str = "kaiming",
        use_dora: bool = False,
    ) -> None:
        if name in self.lora_A:
            raise AdapterError(f"an adapter named {name!r} already exists on this layer")
        if self.initial_lora or (lora_init.mutates_base(init) and self.lora_A):
            held = next(iter(self.initial_lora), None) or name
            raise AdapterError(
                f"adapter {held!r} uses adapter.init pissa/olora, which rewrites the base weight of its layers into "
                f"a residual, so no other adapter can share them in memory; save it (it is saved as a plain LoRA "
                f"on the original weights) and load that instead"
            )
        weight = self.base_layer.weight
        # peft's default (autocast_adapter_dtype): adapters of fp16/bf16 models are kept in fp32
        dtype = torch.float32 if weight.dtype in _LOW_PRECISION else weight.dtype
        factory = {"device": weight.device, "dtype": dtype}
        self.lora_A[name] = nn.Linear(self.in_features, r, bias=False, **factory)
        self.lora_B[name] = nn.Linear(r, self.out_features, bias=False, **factory)
        self.lora_dropout[name] = nn.Dropout(p=dropout) if dropout > 0 else nn.Identity()
        self.r[name] = r
        self.scaling[name] = lora_scaling(r, alpha, use_rslora)
        self.reset_parameters(name, init)
        if use_dora:
            norm = dora.weight_norm(
                self.base_layer.weight, self.lora_A[name].weight, self.lora_B[name].weight,
                self.scaling[name], self.fan_in_fan_out,
            )  # fmt: skip
            self.lora_magnitude_vector[name] = nn.Parameter(norm.to(dtype))
        self.train(self.base_layer.training)  # new submodules follow the model's train/eval mode

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
        weight = self.base_layer.weight
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
    def _restore_base(self, name: str) -> None:
        """Give a PiSSA/OLoRA layer its original weight back (residual + s·B₀A₀)."""
        a0, b0 = self.initial_lora.pop(name)
        weight = self.base_layer.weight
        delta = (b0 @ a0).to(torch.float32) * self.scaling[name]
        weight.add_((delta.T if self.fan_in_fan_out else delta).to(weight.dtype))

    def delete_adapter(self, name: str) -> None:
        if name in self.merged_adapters:
            raise AdapterError(f"adapter {name!r} is merged; unmerge it before deleting it")
        if name in self.initial_lora:
            self._restore_base(name)
        for container in (self.lora_A, self.lora_B, self.lora_dropout):
            del container[name]
        if name in self.lora_magnitude_vector:
            del self.lora_magnitude_vector[name]
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
        magnitude = self.lora_magnitude_vector[name] if name in self.lora_magnitude_vector else None
        if (
            not args
            and not kwargs
            and fast.fast_path_applies(base, x, a, b)
            and type(dropout) in (nn.Dropout, nn.Identity)
            and not fast.has_hooks(self.lora_A[name], self.lora_B[name], dropout)
        ):
            scaling, fan = self.scaling[name], self.fan_in_fan_out
            dropout_active = isinstance(dropout, nn.Dropout) and dropout.training and dropout.p > 0
            if magnitude is not None:
                if not dropout_active and magnitude.dtype == x.dtype:
                    return dora.forward_fused(x, base, a, b, magnitude, scaling, fan)
                return self._forward_reference(x, name, *args, **kwargs)
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
        if name in self.lora_magnitude_vector:  # DoRA: peft's DoraLinearLayer formula
            out = dora.forward_reference(
                x, result.to(x.dtype), self.base_layer, lora_a, lora_b, self.lora_dropout[name],
                self.lora_magnitude_vector[name], self.scaling[name], self.fan_in_fan_out,
            )  # fmt: skip
            return out.to(result.dtype)
        update = lora_b(lora_a(self.lora_dropout[name](x))) * self.scaling[name]
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
        weight = self.base_layer.weight
        if exact:
            self._weight_backup[name] = weight.detach().clone()
        delta = self.delta_weight(name).to(torch.float32)
        if name in self.lora_magnitude_vector:
            merged, self._dora_norm[name] = dora.merge(
                weight, delta, self.lora_magnitude_vector[name], self.fan_in_fan_out
            )
            weight.copy_(merged.to(weight.dtype))
        else:
            weight.copy_((weight.to(torch.float32) + delta).to(weight.dtype))
        self.merged_adapters.append(name)

    @torch.no_grad()
    def unmerge(self, name: str) -> None:
        if name not in self.merged_adapters:
            return
        weight = self.base_layer.weight
        backup = self._weight_backup.pop(name, None)
        norm = self._dora_norm.pop(name, None)
        if backup is not None:
            weight.copy_(backup)
        elif norm is not None:
            magnitude = self.lora_magnitude_vector[name]
            delta = self.delta_weight(name)
            weight.copy_(dora.unmerge(weight, delta, magnitude, norm, self.fan_in_fan_out).to(weight.dtype))
        else:
            delta = self.delta_weight(name).to(torch.float32)
            weight.copy_((weight.to(torch.float32) - delta).to(weight.dtype))
        self.merged_adapters.remove(name)

    def extra_repr(self) -> str:
        kind = "Conv1D" if self.fan_in_fan_out else "Linear"
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
