"""The fused LoRA path under mixed precision, against the reference path (peft's formula with modules)
and against peft itself, in bf16 and fp16 on CPU:

- a half-precision base (x, W, b in bf16/fp16) with the fp32 adapter peft keeps, no autocast;
- autocast (bf16/fp16) over fp32 weights, and over a half-precision base.

Outputs and gradients agree within the rounding of the half-precision dtype (the fused node rounds a
sum once where the reference rounds twice); A's and B's gradients, computed in fp32 from the same
half-precision output gradient, agree tightly in the no-autocast case. Where the fused path still
steps aside, one debug line says why.
"""

from __future__ import annotations

import copy
import logging
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import peft
import pytest
import torch
from peft.utils import get_peft_model_state_dict
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from peft_framework.adapters.lora import LoraConfig, LoraLinear, LoraMethod, fast

IN, OUT = 24, 20
HALF = [torch.bfloat16, torch.float16]
#: |difference| allowed, relative to the largest |value|: about 2 ulps of the dtype
REL = {torch.bfloat16: 2e-2, torch.float16: 3e-3}
FUSED = {"LoraLinearFunctionBackward", "LoraLinearMixedFunctionBackward"}


@pytest.fixture(autouse=True)
def _defaults():
    saved = dict(fast.OPTIONS)
    fast.configure(fused=True, merged_forward=True)
    yield
    fast.configure(**saved)


def make_layer(base_dtype: torch.dtype, bias: bool = True, dropout: float = 0.0) -> LoraLinear:
    torch.manual_seed(0)
    base = nn.Linear(IN, OUT, bias=bias).to(base_dtype)
    base.weight.requires_grad_(False)
    layer = LoraLinear(base)
    layer.add_adapter("a", r=4, alpha=8, dropout=dropout, use_rslora=False)
    with torch.no_grad():
        layer.lora_B["a"].weight.normal_()
    layer.set_adapter("a")
    return layer


def run(layer: LoraLinear, x: torch.Tensor, fused: bool, autocast: torch.dtype | None = None):
    fast.configure(fused=fused)
    layer.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    torch.manual_seed(5)  # same dropout masks on both paths
    with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        y = layer(x)
    assert (type(y.grad_fn).__name__ in FUSED) == fused, type(y.grad_fn).__name__
    weights = torch.randn(y.shape, generator=torch.Generator().manual_seed(7)).to(y.dtype)
    (y * weights).float().sum().backward()
    grads = {"x": x.grad}
    grads.update({n: p.grad for n, p in layer.named_parameters() if p.grad is not None})
    return y.detach(), grads


def close(ref: torch.Tensor, got: torch.Tensor, rel: float) -> float:
    """Max |got - ref| relative to max |ref|; asserts dtype and shape agree."""
    assert got.dtype == ref.dtype and got.shape == ref.shape
    return float((got.float() - ref.float()).abs().max()) / max(float(ref.float().abs().max()), 1e-6)


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("bias", ["frozen", "trained"])
def test_half_precision_base_with_fp32_adapter_equals_the_reference(dtype: torch.dtype, bias: str) -> None:
    layer = make_layer(dtype)
    layer.base_layer.bias.requires_grad_(bias == "trained")
    assert layer.lora_A["a"].weight.dtype == torch.float32  # peft's default for half-precision bases
    x = torch.randn(2, 30, IN).to(dtype)
    (y_ref, g_ref), (y_got, g_got) = run(layer, x, fused=False), run(layer, x, fused=True)
    assert y_got.dtype == dtype
    assert close(y_ref, y_got, REL[dtype]) <= REL[dtype] / 2  # the same fp32 sum, rounded once
    assert set(g_got) == set(g_ref) and ("base_layer.bias" in g_got) == (bias == "trained")
    for name in ("lora_A.a.weight", "lora_B.a.weight"):  # fp32 maths from the same gradient
        assert g_got[name].dtype == torch.float32
        assert close(g_ref[name], g_got[name], 1e-5) <= 1e-5, name
    for name in set(g_ref) - {"lora_A.a.weight", "lora_B.a.weight"}:
        assert close(g_ref[name], g_got[name], REL[dtype]) <= REL[dtype], name


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_half_precision_base_with_dropout_uses_the_same_masks(dtype: torch.dtype) -> None:
    layer = make_layer(dtype, dropout=0.3).train()
    x = torch.randn(2, 16, IN).to(dtype)
    (y_ref, g_ref), (y_got, g_got) = run(layer, x, fused=False), run(layer, x, fused=True)
    assert close(y_ref, y_got, REL[dtype]) <= REL[dtype] / 2
    for name in g_ref:
        assert close(g_ref[name], g_got[name], REL[dtype]) <= REL[dtype], name
    layer.eval()
    assert close(run(layer, x, fused=True)[0], y_got, 0) > 1e-3  # the dropout really acted


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_half_precision_inference_equals_the_reference(dtype: torch.dtype) -> None:
    layer = make_layer(dtype).eval()
    x = torch.randn(3, 40, IN).to(dtype)
    with torch.no_grad():
        fast.configure(fused=False)
        ref = layer(x)
        fast.configure(fused=True)
        got = layer(x)
    assert not got.requires_grad and close(ref, got, REL[dtype]) <= REL[dtype] / 2


@pytest.mark.parametrize("base_dtype", [torch.float32, torch.bfloat16], ids=["fp32-weights", "bf16-base"])
@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_autocast_equals_the_reference(dtype: torch.dtype, base_dtype: torch.dtype) -> None:
    layer = make_layer(base_dtype).train()
    layer.base_layer.bias.requires_grad_(True)
    x = torch.randn(2, 30, IN)
    (y_ref, g_ref), (y_got, g_got) = run(layer, x, False, dtype), run(layer, x, True, dtype)
    assert y_got.dtype == dtype  # autocast's output dtype, as the reference
    assert close(y_ref, y_got, REL[dtype]) <= REL[dtype]
    assert set(g_got) == set(g_ref)
    for name in g_ref:  # every product in the autocast dtype on both paths; gradients cast back alike
        assert g_got[name].dtype == g_ref[name].dtype, name
        assert close(g_ref[name], g_got[name], REL[dtype]) <= 2 * REL[dtype], name


def test_steps_aside_with_one_debug_line_per_reason(caplog: pytest.LogCaptureFixture) -> None:
    fast._REPORTED.clear()
    layer = make_layer(torch.float32)
    layer.lora_A["a"].register_forward_hook(lambda *a: None)
    x = torch.randn(2, 4, IN)
    with caplog.at_level(logging.DEBUG, logger=fast.__name__):
        for _ in range(3):
            assert type(layer(x).grad_fn).__name__ not in FUSED
    lines = [r.getMessage() for r in caplog.records if r.name == fast.__name__]
    assert len(lines) == 1 and "hook" in lines[0], lines
    # fp32 input on a bf16 base without autocast: not a set-up peft runs either; stepped aside, said why
    layer = make_layer(torch.bfloat16)
    assert "mixed dtypes" in fast.why_not(layer, "a", torch.randn(1, IN))


# --------------------------------------------------------------------------------- whole model vs peft
def tiny_llama(dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=100,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(cfg).to(dtype)


@pytest.mark.parametrize(
    "weights,autocast",
    [(torch.bfloat16, None), (torch.float16, None), (torch.float32, torch.bfloat16)],
    ids=["bf16-base", "fp16-base", "fp32-autocast-bf16"],
)
def test_training_gradients_equal_peft_in_mixed_precision(weights, autocast) -> None:
    base = tiny_llama(weights)
    theirs = peft.get_peft_model(
        copy.deepcopy(base), peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear")
    )
    with torch.no_grad():
        gen = torch.Generator().manual_seed(0)
        for _, param in sorted(theirs.named_parameters()):
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=gen).to(param.dtype) * 0.1)
    ours = copy.deepcopy(base)
    method = LoraMethod()
    method.inject(ours, LoraConfig(r=4, alpha=8))
    method.load_adapter_state_dict(ours, get_peft_model_state_dict(theirs))
    ids = torch.randint(3, 100, (2, 40), generator=torch.Generator().manual_seed(1))
    losses = []
    for model in (theirs, ours):
        model.train()
        with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
            loss = model(input_ids=ids, labels=ids).loss
        loss.float().backward()
        losses.append(float(loss.detach()))
    layer = next(m for m in ours.modules() if isinstance(m, LoraLinear))
    x = torch.randn(1, 3, layer.in_features).to(weights)
    with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        assert type(layer(x).grad_fn).__name__ in FUSED  # our model ran the fused path throughout
    assert abs(losses[0] - losses[1]) <= 1e-2 * abs(losses[0])
    their_grads = {
        n.removeprefix("base_model.model."): p.grad for n, p in theirs.named_parameters() if p.requires_grad
    }
    our_grads = {n: p.grad for n, p in ours.named_parameters() if p.requires_grad}
    assert set(our_grads) == set(their_grads) and len(our_grads) > 0
    dtype = autocast or weights
    # per tensor, relative to its largest entry; and overall direction (cosine) within rounding
    worst = max(close(their_grads[n], our_grads[n], 0) for n in their_grads)
    assert worst <= 5 * REL[dtype], worst
    flat_ours = torch.cat([our_grads[n].flatten() for n in sorted(our_grads)])
    flat_theirs = torch.cat([their_grads[n].flatten() for n in sorted(their_grads)])
    assert float(torch.nn.functional.cosine_similarity(flat_ours, flat_theirs, dim=0)) > 0.999


@pytest.mark.parametrize("dtype", HALF, ids=["bf16", "fp16"])
def test_half_input_grad_equals_the_half_gemm(dtype: torch.dtype) -> None:
    """The base's input gradient, in fp32 where the CPU only emulates half GEMMs: the same product as
    torch's half-precision mm (both accumulate in fp32 and round once), in the input's dtype."""
    torch.manual_seed(0)
    g, w = torch.randn(64, 48).to(dtype), torch.randn(48, 40).to(dtype)
    got, want = fast.half_input_grad(g, w), torch.mm(g, w)
    assert got.dtype == dtype
    torch.testing.assert_close(got.float(), want.float(), rtol=REL[dtype], atol=REL[dtype])
