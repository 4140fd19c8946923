"""AdaLoRA's SVD-form update on a linear layer.

    y = base(x) + (dropout(x) @ (P ⊙ Λ)ᵀ @ Qᵀ) * alpha / (ranknum + 1e-5)

P = `lora_A` (r, in), Λ = `lora_E` (r, 1), Q = `lora_B` (out, r); `ranknum` is init_r and stays init_r when
ranks are pruned, so pruning a triplet (Λ_i = 0) never rescales the others. Attribute names and the
order of operations are HuggingFace peft's (`SVDLinear`), so tensors and outputs line up with peft's.
GPT-2's Conv1D (weight stored (in, out), "fan_in_fan_out") is wrapped too; only merging transposes.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from peft_framework.adapters.layer import LinearAdapterLayer
from peft_framework.errors import AdapterError

RANKNUM_EPS = 1e-5


class SVDLinear(LinearAdapterLayer):
    """`base_layer(x)` plus the active adapter's SVD-form update."""

    adapter_containers: ClassVar[dict[str, type[nn.Module]]] = {
        **dict.fromkeys(("lora_A", "lora_E", "lora_B"), nn.ParameterDict),
        "lora_dropout": nn.ModuleDict,
    }
    lora_A: nn.ParameterDict  # P (r, in)
    lora_E: nn.ParameterDict  # Λ (r, 1)
    lora_B: nn.ParameterDict  # Q (out, r)
    lora_dropout: nn.ModuleDict

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.r: dict[str, int] = {}
        self.ranknum: dict[str, float] = {}
        self.scaling: dict[str, float] = {}

    def add_adapter(
        self, name: str, r: int, alpha: float, dropout: float, ranknum: int | None = None
    ) -> None:
        """Add ranks `r` (>= 0); `ranknum` (default r) is the divisor of the scaling: init_r, also when pruned."""
        self.check_new(name)
        factory = self.factory()
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

    def delta_weight(self, name: str) -> torch.Tensor:
        """Q (P ⊙ Λ) * alpha / (ranknum + eps), laid out like the base weight ((in, out) for Conv1D)."""
        delta = (self.lora_B[name] @ (self.lora_A[name] * self.lora_E[name])) * self.scaling[name]
        delta = delta / (self.ranknum[name] + RANKNUM_EPS)
        return delta.T if self.fan_in_fan_out else delta
