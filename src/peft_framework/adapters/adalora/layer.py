"""AdaLoRA's SVD-form update on a linear layer.

    y = base(x) + (dropout(x) @ (P ⊙ Λ)ᵀ @ Qᵀ) * alpha / (ranknum + 1e-5)

P = `lora_A` (r, in), Λ = `lora_E` (r, 1), Q = `lora_B` (out, r); `ranknum` is init_r and stays init_r when
ranks are pruned, so pruning a triplet (Λ_i = 0) never rescales the others. Attribute names and the
order of operations are HuggingFace peft's (`SVDLinear`), so tensors and outputs line up with peft's.
GPT-2's Conv1D (weight stored (in, out), "fan_in_fan_out") is wrapped too; only merging transposes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from peft_framework.adapters import base_layers
from peft_framework.errors import AdapterError

RANKNUM_EPS = 1e-5


class SVDLinear(nn.Module):
    """`base_layer(x)` plus the active adapter's SVD-form update."""

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        info = base_layers.describe(base_layer, "SVDLinear")
        self.base_layer = base_layer
        self.fan_in_fan_out = info.fan_in_fan_out
        self.in_features, self.out_features = info.in_features, info.out_features
        self.lora_A = nn.ParameterDict()
        self.lora_E = nn.ParameterDict()
        self.lora_B = nn.ParameterDict()
        self.lora_dropout = nn.ModuleDict()
        self.r: dict[str, int] = {}
        self.ranknum: dict[str, float] = {}
        self.scaling: dict[str, float] = {}
        self.active_adapter: str | None = None
        self.merged_adapters: list[str] = []

    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    # --- adapters ---------------------------------------------------------------------------------
    def add_adapter(
        self, name: str, r: int, alpha: float, dropout: float, ranknum: int | None = None
    ) -> None:
        """Add ranks `r` (>= 0); `ranknum` (default r) is the divisor of the scaling: init_r, also when pruned."""
        if name in self.lora_A:
            raise AdapterError(f"an adapter named {name!r} already exists on this layer")
        info = base_layers.describe(self.base_layer, "SVDLinear")
        factory = {"device": info.device, "dtype": info.adapter_dtype}
        self.lora_A[name] = nn.Parameter(torch.empty(r, self.in_features, **factory))
        self.lora_E[name] = nn.Parameter(torch.empty(r, 1, **factory))
        self.lora_B[name] = nn.Parameter(torch.empty(self.out_features, r, **factory))
        self.lora_dropout[name] = nn.Dropout(p=dropout) if dropout > 0 else nn.Identity()
        self.r[name] = r
        self.ranknum[name] = float(r if ranknum is None else ranknum)
        self.scaling[name] = float(alpha)
        self.reset_parameters(name)

    @torch.no_grad()
    def reset_parameters(self, name: str) -> None:
        """peft's init: Λ = 0 (the update starts at zero), P and Q ~ N(0, 0.02)."""
        nn.init.zeros_(self.lora_E[name])
        nn.init.normal_(self.lora_A[name], mean=0.0, std=0.02)
        nn.init.normal_(self.lora_B[name], mean=0.0, std=0.02)

    def delete_adapter(self, name: str) -> None:
        if name in self.merged_adapters:
            raise AdapterError(f"adapter {name!r} is merged; unmerge it before deleting it")
        for container in (self.lora_A, self.lora_E, self.lora_B, self.lora_dropout):
            del container[name]
        del self.r[name], self.ranknum[name], self.scaling[name]
        if self.active_adapter == name:
            self.active_adapter = None

    def set_adapter(self, name: str | None) -> None:
        self.active_adapter = name if name in self.lora_A else None

    @torch.no_grad()
    def keep_ranks(self, name: str, mask: list[bool] | torch.Tensor) -> None:
        """Cut adapter `name` to the ranks where `mask` is True (peft's resize by rank pattern)."""
        keep = torch.as_tensor(mask, dtype=torch.bool, device="cpu").view(-1)
        if keep.numel() != self.r[name]:
            raise AdapterError(f"rank mask has {keep.numel()} entries, the adapter has rank {self.r[name]}")
        kept = int(keep.sum())
        for container, rows in ((self.lora_A, True), (self.lora_E, True), (self.lora_B, False)):
            old = container[name]
            if old.is_meta:  # export's skeleton models: shapes only (boolean indexing needs real data)
                shape = (kept, old.shape[1]) if rows else (old.shape[0], kept)
                new = torch.empty(shape, dtype=old.dtype, device="meta")
            else:
                index = keep.to(old.device)
                new = (old[index] if rows else old[:, index]).clone()
            container[name] = nn.Parameter(new, requires_grad=old.requires_grad)
        self.r[name] = int(keep.sum())

    # --- forward ----------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        result = self.base_layer(x, *args, **kwargs)
        name = self.active_adapter
        if name is None or name in self.merged_adapters:
            return result
        lora_a, lora_e, lora_b = self.lora_A[name], self.lora_E[name], self.lora_B[name]
        x = x.to(lora_a.dtype)
        update = (self.lora_dropout[name](x) @ (lora_a * lora_e).T @ lora_b.T) * self.scaling[name]
        update = update / (self.ranknum[name] + RANKNUM_EPS)
        return result + update.to(result.dtype)

    # --- merge --------------------------------------------------------------------------------------
    def delta_weight(self, name: str) -> torch.Tensor:
        """Q (P ⊙ Λ) * alpha / (ranknum + eps), laid out like the base weight ((in, out) for Conv1D)."""
        delta = (self.lora_B[name] @ (self.lora_A[name] * self.lora_E[name])) * self.scaling[name]
        delta = delta / (self.ranknum[name] + RANKNUM_EPS)
        return delta.T if self.fan_in_fan_out else delta

    @torch.no_grad()
    def merge(self, name: str) -> None:
        if name not in self.lora_A:
            return
        if name in self.merged_adapters:
            raise AdapterError(f"adapter {name!r} is already merged")
        base_layers.check_mergeable(self.base_layer, name)
        weight = self.base_layer.weight
        weight.copy_((weight.to(torch.float32) + self.delta_weight(name).to(torch.float32)).to(weight.dtype))
        self.merged_adapters.append(name)

    @torch.no_grad()
    def unmerge(self, name: str) -> None:
        if name not in self.merged_adapters:
            return
        weight = self.base_layer.weight
        weight.copy_((weight.to(torch.float32) - self.delta_weight(name).to(torch.float32)).to(weight.dtype))
        self.merged_adapters.remove(name)

    def extra_repr(self) -> str:
        kind = "Conv1D" if self.fan_in_fan_out else "Linear"
        return (
            f"{kind}({self.in_features} -> {self.out_features}), ranks={self.r}, active={self.active_adapter}"
        )
