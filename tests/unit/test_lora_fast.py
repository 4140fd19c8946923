"""The fused LoRA path (adapters/lora/fast.py) against the reference path (peft's formula with modules)
and against peft itself: outputs and gradients of inputs, A, B and biases agree to 1e-5 (fp32), for
Linear and Conv1D, with and without bias, dropout on and off, merged and unmerged, two adapters switched;
and the cases the fused path must leave to the reference path really do fall back."""

from __future__ import annotations

import copy
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import peft
import pytest
import torch
from peft.utils import get_peft_model_state_dict
from torch import nn
from transformers.pytorch_utils import Conv1D

import tiny_models as tiny
from peft_framework.adapters.lora import LoraConfig, LoraLinear, LoraMethod, fast

TOL = 1e-5
IN, OUT = 12, 10


@pytest.fixture(autouse=True)
def _one_thread_and_default_switches():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    saved = dict(fast.OPTIONS)
    fast.configure(fused=True, merged_forward=True)
    yield
    fast.configure(**saved)
    torch.set_num_threads(threads)


def make_layer(kind: str, bias: bool, dropout: float = 0.0, seed: int = 0) -> LoraLinear:
    """A LoraLinear with adapters 'a' (r=3) and 'b' (r=2), every tensor random (B too), 'a' active."""
    torch.manual_seed(seed)
    if kind == "linear":
        base = nn.Linear(IN, OUT, bias=bias)
    else:
        assert bias, "GPT-2's Conv1D always has a bias"
        base = Conv1D(OUT, IN)  # weight (in, out)
    layer = LoraLinear(base)
    layer.add_adapter("a", r=3, alpha=6, dropout=dropout, use_rslora=False)
    layer.add_adapter("b", r=2, alpha=3, dropout=dropout, use_rslora=True)
    with torch.no_grad():
        for name in ("a", "b"):
            layer.lora_B[name].weight.normal_()
        base.weight.requires_grad_(False)
    layer.set_adapter("a")
    return layer


def run(
    layer: LoraLinear, x: torch.Tensor, fused: bool, seed: int = 123
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Output and gradients (input and every trainable tensor) of sum(y * w) for a fixed random w."""
    fast.configure(fused=fused)
    layer.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    torch.manual_seed(seed)  # same dropout masks for both paths
    y = layer(x)
    assert (type(y.grad_fn).__name__ == "LoraLinearFunctionBackward") == fused, type(y.grad_fn).__name__
    weights = torch.randn(y.shape, generator=torch.Generator().manual_seed(7))
    (y * weights).sum().backward()
    grads = {"x": x.grad}
    grads.update({n: p.grad for n, p in layer.named_parameters() if p.requires_grad and p.grad is not None})
    return y.detach(), grads


def assert_same(ref: tuple, got: tuple) -> None:
    (y_ref, g_ref), (y_got, g_got) = ref, got
    assert torch.allclose(y_got, y_ref, atol=TOL, rtol=TOL), (y_got - y_ref).abs().max()
    assert set(g_got) == set(g_ref)
    for name in g_ref:
        diff = (g_got[name] - g_ref[name]).abs().max().item()
        assert diff <= TOL * max(1.0, g_ref[name].abs().max().item()), f"{name}: {diff}"


@pytest.mark.parametrize("tokens", [1, 40])  # 2 x 40 tokens: the merged weight applies where h is not kept
@pytest.mark.parametrize(
    "kind,bias",
    [
        ("linear", "none"),
        ("linear", "frozen"),
        ("linear", "trained"),
        ("conv1d", "frozen"),
        ("conv1d", "trained"),
    ],
)
def test_gradients_equal_the_reference_path(kind: str, bias: str, tokens: int) -> None:
    layer = make_layer(kind, bias != "none")
    if bias != "none":
        layer.base_layer.bias.requires_grad_(bias == "trained")  # adapter.bias "all" / "lora_only" train it
    x = torch.randn(2, tokens, IN)
    ref, got = run(layer, x, fused=False), run(layer, x, fused=True)
    assert {"x", "lora_A.a.weight", "lora_B.a.weight"} <= set(ref[1])
    assert ("base_layer.bias" in ref[1]) == (bias == "trained")
    assert_same(ref, got)
    # B frozen (h not needed for dB): the forward may use the merged weight; gradients still agree
    layer.lora_B["a"].weight.requires_grad_(False)
    ref, got = run(layer, x, fused=False), run(layer, x, fused=True)
    assert "lora_B.a.weight" not in got[1] and "lora_A.a.weight" in got[1]
    assert_same(ref, got)


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_dropout_in_training_uses_the_same_masks_and_gradients(kind: str) -> None:
    layer = make_layer(kind, bias=True, dropout=0.5).train()
    x = torch.randn(3, 8, IN)
    ref, got = run(layer, x, fused=False), run(layer, x, fused=True)
    assert_same(ref, got)
    # the dropout really acted (else this test would not cover it): without it the output differs
    layer.eval()
    no_drop = run(layer, x, fused=True)
    assert not torch.allclose(no_drop[0], got[0], atol=1e-3)
    assert_same(run(layer, x, fused=False), no_drop)  # dropout off in eval, on both paths


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_two_adapters_switched_train_only_the_active_one(kind: str) -> None:
    layer = make_layer(kind, bias=True)
    x = torch.randn(2, 5, IN)
    for name in ("a", "b", "a"):
        layer.set_adapter(name)
        ref, got = run(layer, x, fused=False), run(layer, x, fused=True)
        assert_same(ref, got)
        other = "b" if name == "a" else "a"
        assert f"lora_A.{name}.weight" in got[1] and f"lora_A.{other}.weight" not in got[1]
    layer.set_adapter(None)
    fast.configure(fused=True)
    assert torch.equal(layer(x), layer.base_layer(x))


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_merged_adapter_runs_the_base_only_and_unmerged_matches(kind: str) -> None:
    layer = make_layer(kind, bias=True)
    x = torch.randn(2, 6, IN)
    y_unmerged, _ = run(layer, x, fused=True)
    layer.merge("a")
    fast.configure(fused=True)
    y_merged = layer(x)
    assert y_merged.grad_fn is None or type(y_merged.grad_fn).__name__ != "LoraLinearFunctionBackward"
    assert torch.allclose(y_merged, y_unmerged, atol=TOL)
    layer.unmerge("a")
    assert_same(run(layer, x, fused=False), run(layer, x, fused=True))


@pytest.mark.parametrize("tokens", [1, 20])  # merged weight for 4 x 20 tokens, the in-place branch for 4 x 1
@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_inference_path_equals_the_reference(kind: str, tokens: int) -> None:
    layer = make_layer(kind, bias=True).eval()
    x = torch.randn(4, tokens, IN)
    with torch.no_grad():
        fast.configure(fused=False)
        ref = layer(x)
        fast.configure(fused=True)
        got = layer(x)
    assert torch.allclose(got, ref, atol=TOL)
    assert got.shape == (4, tokens, OUT) and not got.requires_grad


@pytest.mark.parametrize("tokens,expected_calls", [(1, 0), (3, 0), (40, 1)])
def test_merged_weight_is_used_only_where_it_is_cheaper(
    monkeypatch, tokens: int, expected_calls: int
) -> None:
    """W + s·BA is formed for a forward without autograd over many tokens (T·(in+out) >= 2·in·out), never
    for few tokens, never when training (h = xAᵀ is needed for dB anyway), never when switched off."""
    calls = []
    original = fast.merged_weight
    monkeypatch.setattr(fast, "merged_weight", lambda *a: calls.append(1) or original(*a))
    layer = make_layer("linear", bias=True)
    x = torch.randn(2, tokens, IN, requires_grad=True)
    with torch.no_grad():
        layer(x)
    assert len(calls) == expected_calls
    calls.clear()
    layer(x).sum().backward()
    assert calls == []
    fast.configure(merged_forward=False)
    with torch.no_grad():
        layer(x)
    assert calls == []


def test_half_precision_layer_runs_fused_close_to_the_reference() -> None:
    """A layer entirely in bf16 (base and adapter) takes the fused path, with the in-place branch."""
    layer = make_layer("linear", bias=True).to(torch.bfloat16)
    x = torch.randn(2, 24, IN).to(torch.bfloat16)
    ref, got = run(layer, x, fused=False), run(layer, x, fused=True)
    assert got[0].dtype == torch.bfloat16
    for a, b in [(ref[0], got[0])] + [(ref[1][k], got[1][k]) for k in ref[1]]:
        assert torch.allclose(a.float(), b.float(), atol=5e-2, rtol=2e-2)


def test_output_may_be_modified_in_place() -> None:
    """Model code does `q *= scale` and the like: the fused output is a fresh tensor, not a view."""
    layer = make_layer("linear", bias=True)
    x = torch.randn(2, 4, IN, requires_grad=True)
    y = layer(x)
    y.mul_(2.0)
    y.sum().backward()
    assert x.grad is not None and layer.lora_A["a"].weight.grad is not None


def test_frozen_input_and_adapter_still_compute_the_output() -> None:
    """No gradient wanted anywhere (e.g. evaluating a frozen adapter with grad mode on): same output."""
    layer = make_layer("linear", bias=True)
    for p in layer.parameters():
        p.requires_grad_(False)
    x = torch.randn(2, 4, IN)
    fast.configure(fused=False)
    ref = layer(x)
    fast.configure(fused=True)
    assert torch.allclose(layer(x), ref, atol=TOL)


def test_cases_outside_the_fused_path_fall_back_to_the_reference() -> None:
    x = torch.randn(2, 4, IN)
    # (mixed precision and autocast take the fused path now: tests/unit/test_lora_fast_mixed.py)
    # a hook on the base layer must still run
    layer = make_layer("linear", bias=True)
    seen = []
    layer.base_layer.register_forward_hook(lambda mod, inp, out: seen.append(out.shape))
    y = layer(x)
    assert seen == [(2, 4, OUT)] and type(y.grad_fn).__name__ != "LoraLinearFunctionBackward"
    # ... and one on the adapter's own modules
    layer = make_layer("linear", bias=True)
    layer.lora_A["a"].register_forward_hook(lambda mod, inp, out: seen.append("A"))
    y = layer(x)
    assert seen[-1] == "A" and type(y.grad_fn).__name__ != "LoraLinearFunctionBackward"
    # switched off
    fast.configure(fused=False)
    assert type(make_layer("linear", bias=True)(x).grad_fn).__name__ != "LoraLinearFunctionBackward"


def test_configure_rejects_unknown_switches() -> None:
    with pytest.raises(ValueError, match="merged_forward"):
        fast.configure(fused_everything=True)


# ------------------------------------------------------------------------------ whole models vs peft
def tiny_llama() -> nn.Module:
    return tiny.tiny_llama().train()


def tiny_gpt2() -> nn.Module:
    return tiny.tiny_gpt2(dropout=False).train()  # training mode without the model's own dropout


@pytest.mark.parametrize(
    "builder,cfg",
    [
        (tiny_llama, LoraConfig(r=4, alpha=8)),  # all linear layers
        (tiny_gpt2, LoraConfig(r=4, alpha=8, bias="all")),  # Conv1D, trainable biases
    ],
    ids=["llama-all-linear", "gpt2-conv1d-bias-all"],
)
def test_training_gradients_equal_peft(builder, cfg: LoraConfig) -> None:
    base = builder()
    theirs = peft.get_peft_model(
        copy.deepcopy(base),
        peft.LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, target_modules="all-linear", bias=cfg.bias),
    )
    with torch.no_grad():
        gen = torch.Generator().manual_seed(0)
        for _, param in sorted(theirs.named_parameters()):
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=gen) * 0.1)
    ours = copy.deepcopy(base)
    method = LoraMethod()
    method.inject(ours, cfg)
    method.load_adapter_state_dict(ours, get_peft_model_state_dict(theirs))
    ids = torch.randint(3, 100, (2, 40), generator=torch.Generator().manual_seed(1))
    theirs.train()
    ours.train()
    theirs(input_ids=ids, labels=ids).loss.backward()
    loss = ours(input_ids=ids, labels=ids).loss
    loss.backward()
    assert all(
        type(m(torch.randn(1, 3, m.in_features)).grad_fn).__name__ == "LoraLinearFunctionBackward"
        for m in ours.modules()
        if isinstance(m, LoraLinear)
    )
    # in memory both name tensors alike ('....q_proj.lora_A.default.weight'); peft adds its wrapper prefix
    their_grads = {
        n.removeprefix("base_model.model."): p.grad for n, p in theirs.named_parameters() if p.requires_grad
    }
    our_grads = {n: p.grad for n, p in ours.named_parameters() if p.requires_grad}
    assert set(our_grads) == set(their_grads) and len(our_grads) > 0
    for name, grad in their_grads.items():
        diff = (our_grads[name] - grad).abs().max().item()
        assert diff <= TOL * max(1.0, grad.abs().max().item()), f"{name}: {diff}"


@pytest.mark.parametrize("dropout", [0.0, 0.1])
@pytest.mark.parametrize("reentrant", [False, True])
def test_gradient_checkpointing_gives_the_same_gradients(reentrant: bool, dropout: float) -> None:
    """Checkpointing re-runs the forward (under no_grad first when reentrant): the fused node must
    recompute and save the same tensors."""
    grads = []
    ids = torch.randint(3, 100, (2, 40), generator=torch.Generator().manual_seed(1))
    for checkpointing in (False, True):
        model = tiny_llama()
        LoraMethod().inject(model, LoraConfig(r=4, alpha=8, dropout=dropout))
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.1, generator=torch.Generator().manual_seed(2))
        model.train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
            model.enable_input_require_grads()
        torch.manual_seed(3)  # same dropout masks (checkpointing restores the RNG state for the re-run)
        model(input_ids=ids, labels=ids).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert set(grads[0]) == set(grads[1])
    for name, grad in grads[0].items():
        assert torch.allclose(grads[1][name], grad, atol=TOL), name
