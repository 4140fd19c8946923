"""Fused LoRA linear: base projection and low-rank branch in one autograd node.

    y = x Wᵀ + b + s · (x' Aᵀ) Bᵀ        x' = x, or dropout(x) when dropout is active

The reference path (`LoraLinear.forward`, peft's formula written with modules) builds five
autograd nodes per layer and allocates three full-size temporaries per forward (the branch output, its
scaled copy, the sum) and two per backward (the scaled gradient, the branch's input gradient before it
is added to the base's); on CPU each fresh large tensor also costs page faults. Here, per layer, one
node, and (T tokens, r the rank):

- forward: `h = x' Aᵀ` (T × r), `y = b + s · h Bᵀ` written straight into the output, then the base GEMM
  accumulates onto it in place (`y.addmm_(x, Wᵀ)`, beta = 1, or beta = s without a bias): the scaling
  rides in a GEMM's alpha/beta, no full-size temporary, and the branch costs no extra pass over y;
- backward: `dh = s · g B` and `dB = s · gᵀ h` (small), `dA = dhᵀ x'`, `dx = dh A` then the base GEMM
  accumulates `g W` onto it in place; no gradient is ever formed for the frozen W;
- saved for backward: x' and h only (W, A, B are parameters, saved by reference);
- without autograd (inference) and many tokens ("merged_forward": T·(in+out) ≥ 2·in·out, fp32/fp64
  only), `y = x (W + s·BA)ᵀ + b` with the merged weight formed on the fly: an r-rank update of the
  in × out weight instead of two skinny GEMMs over the T tokens. W itself is never modified. It rounds
  differently from the reference (~1e-7 relative, far inside peft parity); in bf16/fp16 folding s·BA
  into the weight would lose the update's low bits, so it is not used there.

Measured and dropped (bench/README.md): the merged weight in the training forward (h is needed for dB
anyway) and for the input gradient (dx = g (W + s·BA)): both slower than the in-place updates here.

`eligible` is the one place that decides which calls of `LoraLinear.forward` come here; `lora_linear`
runs them. For comparisons (bench/, tests) `configure(fused=False)` sends every call to the reference
path and `configure(merged_forward=False)` turns off the merged inference forward; both are on by
default, and nothing else (no environment variable) changes them.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn.modules import module as _module_mod
from transformers.pytorch_utils import Conv1D

if TYPE_CHECKING:
    from peft_framework.adapters.lora.layer import LoraLinear

#: The switches, all on; change them with `configure` only (bench/ and tests do, to measure or check
#: each optimisation against the path without it).
OPTIONS: dict[str, bool] = {"fused": True, "merged_forward": True}
_MERGE_DTYPES = (torch.float32, torch.float64)
_FAST_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_FAST_BASE_TYPES = (nn.Linear, Conv1D)
_LOW_PRECISION = (torch.float16, torch.bfloat16)
log = logging.getLogger(__name__)


def configure(**switches: bool) -> dict[str, bool]:
    """Set some of OPTIONS (e.g. `configure(fused=False)`); returns the previous values of all, so that
    `configure(**previous)` restores them."""
    unknown = sorted(set(switches) - set(OPTIONS))
    if unknown:
        raise ValueError(f"unknown fast-path switches {unknown}; allowed: {sorted(OPTIONS)}")
    previous = dict(OPTIONS)
    OPTIONS.update({k: bool(v) for k, v in switches.items()})
    return previous


def has_hooks(*modules: nn.Module) -> bool:
    """Any forward/backward hook on these modules: the fused path would bypass them."""
    return any(
        m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
        for m in modules
    )


def _autocast_dtype(x: torch.Tensor) -> torch.dtype | None:
    """The dtype autocast computes linears in for x's device, or None when autocast is off there."""
    kind = x.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else None


def why_not(layer: LoraLinear, name: str, x: torch.Tensor) -> str | None:
    """Why the fused path would not compute what the reference formula computes for this call (None: it
    would). It does for a plain Linear/Conv1D base on one device, plain dropout, no hook on any module it
    would bypass, and one of three precision set-ups, each with peft's cast order:

    - one dtype throughout (x, base weight and bias, A and B);
    - mixed precision: x and the base in fp16/bf16, the adapter in fp32 (peft's default for half-precision
      bases): the base product in half precision, the branch in fp32 on x cast up, their sum rounded once;
    - autocast (fp16/bf16) with any weights: every product in the autocast dtype, as autocast runs them.
    """
    base, dropout = layer.base_layer, layer.lora_dropout[name]
    a, b = layer.lora_A[name].weight, layer.lora_B[name].weight
    weight, bias = base.weight, base.bias
    if not OPTIONS["fused"]:
        return "switched off (fast.configure(fused=False))"
    if type(base) not in _FAST_BASE_TYPES:
        return f"the base layer is a {type(base).__name__}, not a plain Linear/Conv1D (its own forward runs)"
    if not (x.device == weight.device == a.device == b.device) or x.dim() < 1:
        return "input, base weight and adapter are not on one device"
    if type(dropout) not in (nn.Dropout, nn.Identity):
        return f"the adapter's dropout is a {type(dropout).__name__}"
    if not torch.is_grad_enabled() and _dropout_active(dropout):
        return "dropout is active without autograd"
    if has_hooks(base, layer.lora_A[name], layer.lora_B[name], dropout) or (
        _module_mod._global_forward_hooks or _module_mod._global_forward_pre_hooks
    ):
        return "a forward/backward hook is registered on a module the fused path would bypass"
    dtypes = {x.dtype, weight.dtype, a.dtype, b.dtype} | ({bias.dtype} if bias is not None else set())
    if not dtypes <= set(_FAST_DTYPES):
        return f"dtypes {sorted(map(str, dtypes))} include one it does not handle"
    cast = _autocast_dtype(x)
    if cast is not None:
        if cast not in _LOW_PRECISION:
            return f"autocast to {cast} (only fp16/bf16 autocast is handled)"
        return None
    if len(dtypes) == 1:
        return None
    if x.dtype in _LOW_PRECISION and weight.dtype == x.dtype and (bias is None or bias.dtype == x.dtype):
        if a.dtype == b.dtype == torch.float32:
            return None
    return (
        f"mixed dtypes without autocast: input {x.dtype}, base weight {weight.dtype}, adapter {a.dtype}/{b.dtype} "
        "(handled: one dtype, or input and base in fp16/bf16 with an fp32 adapter)"
    )


_REPORTED: set[str] = set()


def eligible(layer: LoraLinear, name: str, x: torch.Tensor) -> bool:
    """Whether this call takes the fused path (`why_not` is None); each reason it steps aside for is
    logged once, at debug level."""
    reason = why_not(layer, name, x)
    if reason is None:
        return True
    if reason not in _REPORTED:
        _REPORTED.add(reason)
        log.debug("LoRA fused path not used, the reference path runs: %s", reason)
    return False


def _dropout_active(dropout: nn.Module) -> bool:
    return isinstance(dropout, nn.Dropout) and dropout.training and dropout.p > 0


def lora_linear(layer: LoraLinear, name: str, x: torch.Tensor) -> torch.Tensor:
    """`layer`'s forward through adapter `name` on the fused path (call only when `eligible`)."""
    base, dropout = layer.base_layer, layer.lora_dropout[name]
    a, b = layer.lora_A[name].weight, layer.lora_B[name].weight
    weight, bias = base.weight, base.bias
    scaling, fan = layer.scaling[name], layer.fan_in_fan_out
    # the branch reads x cast to the adapter's dtype, dropout applied there (peft's order)
    x_branch = dropout(x.to(a.dtype)) if _dropout_active(dropout) and torch.is_grad_enabled() else None
    cast = _autocast_dtype(x)
    if cast is not None:
        # autocast runs every linear in `cast`: cast inputs and weights as it would (A and B through
        # autograd, so their gradients come back in fp32), then run the one-dtype path with autocast off
        with torch.autocast(x.device.type, enabled=False):
            x, weight, a, b = x.to(cast), weight.to(cast), a.to(cast), b.to(cast)
            bias = None if bias is None else bias.to(cast)
            x_branch = None if x_branch is None else x_branch.to(cast)
            return _fused(x, x_branch, weight, bias, a, b, scaling, fan)
    if a.dtype != x.dtype:  # half-precision base, fp32 adapter
        return LoraLinearMixedFunction.apply(x, x_branch, weight, bias, a, b, scaling, fan)
    return _fused(x, x_branch, weight, bias, a, b, scaling, fan)


def _fused(x, x_branch, weight, bias, a, b, scaling, fan) -> torch.Tensor:
    if torch.is_grad_enabled():
        return LoraLinearFunction.apply(x, x_branch, weight, bias, a, b, scaling, fan)
    # no autograd (inference, dropout inactive): nothing kept for a backward
    return _forward(x, None, (weight, bias, a, b, scaling, fan), keep_h=False)[0]


# ------------------------------------------------------------------------------------------ helpers
def merged_weight(
    weight: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, s: float, fan_in_fan_out: bool
) -> torch.Tensor:
    """W + s·BA laid out like W ((in, out) for Conv1D), as a new tensor; W itself is untouched."""
    if fan_in_fan_out:
        return torch.addmm(weight, lora_a.t(), lora_b.t(), alpha=s)
    return torch.addmm(weight, lora_b, lora_a, alpha=s)


def project(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, fan_in_fan_out: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x through a Linear-layout (out, in) or Conv1D-layout (in, out) weight: returns y shaped like x with
    the last dimension `out`, and 2-D views (tokens, in) of x and (tokens, out) of y. y is a fresh tensor,
    not a view, so callers (and the model code after them) may modify it in place."""
    w = weight if fan_in_fan_out else weight.t()
    x2 = x.reshape(-1, x.shape[-1])
    y = torch.empty((*x.shape[:-1], w.shape[1]), dtype=x.dtype, device=x.device)
    y2 = y.view(-1, w.shape[1])
    if bias is None:
        torch.mm(x2, w, out=y2)
    else:
        torch.addmm(bias, x2, w, out=y2)
    return y, x2, y2


def _merge_for_forward(x: torch.Tensor, tokens: int, n_in: int, n_out: int) -> bool:
    # r·in·out (plus a copy of W) against r·T·(in+out): measured break-even near T·(in+out) = 2·in·out
    return (
        OPTIONS["merged_forward"] and x.dtype in _MERGE_DTYPES and tokens * (n_in + n_out) >= 2 * n_in * n_out
    )


#: W, b, A, B, s, fan_in_fan_out
Weights = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor, float, bool]


def _forward(
    x: torch.Tensor, x_branch: torch.Tensor | None, weights: Weights, keep_h: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(y, x' as 2-D, h or None). h is computed when kept or needed for y."""
    weight, bias, lora_a, lora_b, s, fan_in_fan_out = weights
    n_in = x.shape[-1]
    tokens = x.numel() // n_in if n_in else 0
    n_out = lora_b.shape[0]
    if not keep_h and x_branch is None and _merge_for_forward(x, tokens, n_in, n_out):
        y, x2, _ = project(x, merged_weight(weight, lora_a, lora_b, s, fan_in_fan_out), bias, fan_in_fan_out)
        return y, x2, None
    # the small product first, then the base GEMM accumulates onto it in place (beta): one pass over y
    # fewer than adding the branch afterwards
    x2 = x.reshape(-1, n_in)
    xb2 = x2 if x_branch is None else x_branch.reshape(-1, n_in)
    h = torch.mm(xb2, lora_a.t())
    y = torch.empty((*x.shape[:-1], n_out), dtype=x.dtype, device=x.device)
    y2 = y.view(-1, n_out)
    w = weight if fan_in_fan_out else weight.t()
    if bias is None:
        torch.mm(h, lora_b.t(), out=y2)
        y2.addmm_(x2, w, beta=s)
    else:
        torch.addmm(bias, h, lora_b.t(), alpha=s, out=y2)
        y2.addmm_(x2, w)
    return y, xb2, h


# ------------------------------------------------------------------------------------------ autograd
class LoraLinearFunction(torch.autograd.Function):
    """Inputs: x, x' (None: the branch reads x itself), W, b, A, B, s, fan_in_fan_out. Output: y."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        x_branch: torch.Tensor | None,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        lora_a: torch.Tensor,
        lora_b: torch.Tensor,
        scaling: float,
        fan_in_fan_out: bool,
    ) -> torch.Tensor:
        needs = ctx.needs_input_grad
        weights = (weight, bias, lora_a, lora_b, scaling, fan_in_fan_out)
        y, xb2, h = _forward(x, x_branch, weights, keep_h=needs[5])
        ctx.save_for_backward(xb2 if needs[4] else None, h if needs[5] else None, weight, lora_a, lora_b)
        ctx.scaling, ctx.fan_in_fan_out, ctx.in_shape = scaling, fan_in_fan_out, x.shape
        ctx.has_branch_input = x_branch is not None
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        xb2, h, weight, lora_a, lora_b = ctx.saved_tensors
        need_x, need_xb, _, need_bias, need_a, need_b = ctx.needs_input_grad[:6]
        s, shape, fan = ctx.scaling, ctx.in_shape, ctx.fan_in_fan_out
        g2 = grad.reshape(-1, grad.shape[-1])
        dx = dxb = dbias = da = db = dh = None
        if need_a or need_x or need_xb:
            dh = torch.mm(g2, lora_b).mul_(s)  # (T, r): small
        if need_b:
            db = torch.mm(g2.t(), h).mul_(s)  # (out, r)
        if need_a:
            da = torch.mm(dh.t(), xb2)  # (r, in)
        if need_x:
            w = weight.t() if fan else weight
            if ctx.has_branch_input:
                dx = torch.mm(g2, w)
            else:  # the branch's share first, the base GEMM accumulates onto it in place
                dx = torch.mm(dh, lora_a).addmm_(g2, w)
            dx = dx.view(shape)
        if ctx.has_branch_input and need_xb:
            dxb = torch.mm(dh, lora_a).view(shape)
        if need_bias:
            dbias = g2.sum(0)
        return dx, dxb, None, dbias, da, db, None, None


def _native_half_gemm(dtype: torch.dtype) -> bool:
    """Whether this CPU multiplies `dtype` matrices natively (AVX512-BF16 / AMX) rather than emulating."""
    cpu = torch.cpu
    if dtype == torch.bfloat16:
        return cpu._is_avx512_bf16_supported() or cpu._is_amx_tile_supported()
    return cpu._is_amx_fp16_supported()


_NATIVE_HALF_GEMM = {dtype: _native_half_gemm(dtype) for dtype in (torch.bfloat16, torch.float16)}


def half_input_grad(g2: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """`g2 @ w` for a frozen half-precision base: the input gradient, w in the weight's (out, in) layout.

    On a CPU without native bf16/fp16 GEMM (e.g. AVX2), torch's half-precision mm in this layout is over
    10x slower than fp32 with the casts (`python bench/half_gemm.py`; figures in bench/README.md);
    autograd's own `linear` backward pays it for every frozen layer. The fp32 product of the same
    half-precision values rounded once is what a half GEMM with fp32 accumulation returns (up to
    summation order), so there the product runs in fp32.
    """
    if g2.device.type == "cpu" and not _NATIVE_HALF_GEMM.get(g2.dtype, True):
        return torch.mm(g2.float(), w.float()).to(g2.dtype)
    return torch.mm(g2, w)


class LoraLinearMixedFunction(torch.autograd.Function):
    """Half-precision base (x, W, b in fp16/bf16), fp32 adapter, no autocast, in peft's cast order:

        y = (float(x Wᵀ + b) + s · (float(x') Aᵀ) Bᵀ).to(half)      x' = x, or dropout(float(x))

    the base product in half precision, the branch in fp32, their sum in fp32 rounded once. One node: the
    fp32 copy of x is made per call and not kept (x itself is saved, in half precision, and cast again
    in backward), where the reference keeps it for A's gradient. Backward: the base's input gradient
    `g W` in half precision, the branch's (`s · g B A`) in fp32 added onto it; A and B get fp32 gradients.
    Inputs as `LoraLinearFunction`'s (x' is fp32).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        x_branch: torch.Tensor | None,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        lora_a: torch.Tensor,
        lora_b: torch.Tensor,
        scaling: float,
        fan_in_fan_out: bool,
    ) -> torch.Tensor:
        needs = ctx.needs_input_grad
        n_in = x.shape[-1]
        y_half, x2, _ = project(x, weight, bias, fan_in_fan_out)
        xb32 = x2.to(lora_a.dtype) if x_branch is None else x_branch.reshape(-1, n_in)
        h = torch.mm(xb32, lora_a.t())  # (T, r), fp32
        y32 = y_half.to(lora_a.dtype)
        y32.view(-1, y32.shape[-1]).addmm_(h, lora_b.t(), alpha=scaling)
        del y_half
        # A's gradient needs x' in fp32: keep the half-precision x (cast again in backward), or x' itself
        kept_x = (x2 if x_branch is None else xb32) if needs[4] else None
        ctx.save_for_backward(kept_x, h if needs[5] else None, weight, lora_a, lora_b)
        ctx.scaling, ctx.fan_in_fan_out, ctx.in_shape = scaling, fan_in_fan_out, x.shape
        ctx.has_branch_input = x_branch is not None
        return y32.to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        kept_x, h, weight, lora_a, lora_b = ctx.saved_tensors
        need_x, need_xb, _, need_bias, need_a, need_b = ctx.needs_input_grad[:6]
        s, shape, fan = ctx.scaling, ctx.in_shape, ctx.fan_in_fan_out
        g2 = grad.reshape(-1, grad.shape[-1])
        dx = dxb = dbias = da = db = dh = None
        g32 = g2.to(lora_b.dtype) if (need_a or need_b or need_x or need_xb) else None
        if need_a or need_x or need_xb:
            dh = torch.mm(g32, lora_b).mul_(s)  # (T, r), fp32
        if need_b:
            db = torch.mm(g32.t(), h).mul_(s)
        if need_a:
            da = torch.mm(dh.t(), kept_x.to(lora_a.dtype))
        if need_x:
            dx = half_input_grad(g2, weight.t() if fan else weight)  # the base's share, half precision
            if not ctx.has_branch_input:
                dx.add_(torch.mm(dh, lora_a))  # + the branch's, fp32, rounded once into dx
            dx = dx.view(shape)
        if ctx.has_branch_input and need_xb:
            dxb = torch.mm(dh, lora_a).view(shape)
        if need_bias:
            dbias = g2.sum(0)
        return dx, dxb, None, dbias, da, db, None, None
