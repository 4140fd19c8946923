"""LoRA initialisations that start from the base weight: PiSSA (Meng et al. 2024) and OLoRA (Büyükakyüz 2024).

Both put the weight's principal part into the adapter and leave the rest in the base layer:

    W = W_res + s · B₀ A₀        (the base weight becomes the residual W_res; the model computes the same)

- PiSSA: W = U S Vᵀ, A₀ = sqrt(S_r / s) V_rᵀ, B₀ = U_r sqrt(S_r / s); exact SVD (`pissa`) or torch's randomised
  `svd_lowrank` with N subspace iterations (`pissa_niter_N`, much faster on large layers; it draws from the
  global RNG, which the train stage seeds, so runs repeat exactly on CPU).
- OLoRA: W = Q R, A₀ = R[:r], B₀ = Q[:, :r].

Computed in fp32 exactly as peft (`LoraLayer.pissa_init` / `olora_init`), so the same weights give the same
A₀, B₀ and residual. After training, W + ΔW = W_res + s·BA, i.e. ΔW = s (BA − B₀A₀) = s [B | −B₀][A ; A₀]:
a plain LoRA of rank 2r on the ORIGINAL weight, which is what is saved (`converted_tensors`, as peft's
`save_pretrained(path_initial_model_for_weight_conversion=...)`), with r and alpha doubled so s is unchanged.
"""

from __future__ import annotations

import math

import torch

from peft_framework.adapters.lora.init_names import BASIC_INITS, is_valid, mutates_base
from peft_framework.adapters.lora.init_names import PISSA_NITER as _PISSA_NITER

__all__ = ["BASIC_INITS", "converted_r_alpha", "converted_tensors", "decompose", "is_valid", "mutates_base"]


@torch.no_grad()
def decompose(
    weight: torch.Tensor, init: str, r: int, scaling: float, fan_in_fan_out: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(A₀ (r, in), B₀ (out, r), residual laid out and typed like `weight`), all computed in fp32."""
    w = weight.to(torch.float32)
    w = w.T if fan_in_fan_out else w  # (out, in)
    if init == "olora":
        q, rr = torch.linalg.qr(w)
        a, b = rr[:r].contiguous(), q[:, :r].contiguous()
    else:
        match = _PISSA_NITER.fullmatch(init)
        if match is None and init != "pissa":
            raise ValueError(f"not a base-weight init: {init!r}")
        if match is None:
            u, s, vh = torch.linalg.svd(w, full_matrices=False)
            ur, sr, vhr = u[:, :r], s[:r] / scaling, vh[:r]
        else:
            ur, sr, vr = torch.svd_lowrank(w, r, niter=int(match.group(1)))
            sr, vhr = sr / scaling, vr.t()
        a = torch.diag(torch.sqrt(sr)) @ vhr
        b = ur @ torch.diag(torch.sqrt(sr))
    residual = w - scaling * b @ a
    residual = residual.T if fan_in_fan_out else residual
    return a, b, residual.to(weight.dtype)


def converted_tensors(
    a: torch.Tensor, b: torch.Tensor, a0: torch.Tensor, b0: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(A', B') of rank 2r with B'A' = BA − B₀A₀: the trained update relative to the original weight."""
    return torch.cat([a, a0.to(a.dtype)], dim=0), torch.cat([b, -b0.to(b.dtype)], dim=1)


def converted_r_alpha(r: int, alpha: float, use_rslora: bool) -> tuple[int, float]:
    """Rank and alpha of the converted adapter: 2r, and alpha so that the scaling stays the same."""
    return 2 * r, alpha * (math.sqrt(2) if use_rslora else 2)
