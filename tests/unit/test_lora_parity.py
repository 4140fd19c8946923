"""Our LoRA against HuggingFace peft (the oracle, test-only): same weights -> same logits, same trainable
parameters, same initialisation; merge/unmerge, multi-adapter switching, weighted combination."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import peft
import pytest
import torch
from peft.utils import get_peft_model_state_dict

from peft_framework.adapters import get_adapter
from peft_framework.adapters.lora import LoraConfig, LoraLinear, LoraMethod, combine_adapters
from peft_framework.errors import AdapterError
from tiny_models import base as tiny_base
from tiny_models import logits, n_trainable, randomize_trainables, tokens

TOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_torch_thread")


SIZES = {"llama": {"hidden": 64}, "gpt2": {}}


def base(kind: str) -> torch.nn.Module:
    return tiny_base(kind, **SIZES[kind])


def peft_kwargs(cfg: LoraConfig) -> dict:
    return dict(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        use_rslora=cfg.use_rslora,
        bias=cfg.bias,
        target_modules=cfg.target_modules or "all-linear",
        exclude_modules=cfg.exclude_modules,
        modules_to_save=cfg.modules_to_save,
        init_lora_weights={"kaiming": True, "gaussian": "gaussian"}[cfg.init],
    )


# (model, our config) — peft gets the same settings through peft_kwargs
CASES = {
    "llama-list": ("llama", LoraConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"])),
    "llama-regex": (
        "llama",
        LoraConfig(r=8, alpha=16, target_modules=r"model\.layers\.\d+\.mlp\.(up|down)_proj"),
    ),
    "llama-all-linear-rslora-dropout": ("llama", LoraConfig(r=4, alpha=8, use_rslora=True, dropout=0.1)),
    "llama-exclude": (
        "llama",
        LoraConfig(r=2, alpha=4, target_modules="all-linear", exclude_modules=["o_proj"]),
    ),
    "llama-bias-all-save-head-gaussian": (
        "llama",
        LoraConfig(
            r=4,
            alpha=4,
            target_modules=["k_proj", "o_proj"],
            bias="all",
            init="gaussian",
            modules_to_save=["lm_head"],
        ),
    ),
    "gpt2-all-linear-bias-all": ("gpt2", LoraConfig(r=4, alpha=8, bias="all")),
    "gpt2-c_attn-lora_only": ("gpt2", LoraConfig(r=4, alpha=8, target_modules=["c_attn"], bias="lora_only")),
    "gpt2-regex-save-wpe": (
        "gpt2",
        LoraConfig(r=2, alpha=8, target_modules=r".*\.attn\.c_proj", modules_to_save=["wpe"]),
    ),
}


def build_pair(kind: str, cfg: LoraConfig):
    """(peft model, our model) from the same base, with peft's (randomised) adapter weights copied into ours."""
    ours = base(kind)
    get_adapter("lora").inject(ours, cfg)
    theirs = peft.get_peft_model(base(kind), peft.LoraConfig(**peft_kwargs(cfg)))
    randomize_trainables(theirs)
    LoraMethod().load_adapter_state_dict(ours, get_peft_model_state_dict(theirs))
    return theirs.eval(), ours.eval()


@pytest.mark.parametrize("case", list(CASES))
def test_logits_and_trainable_params_match_peft(case: str) -> None:
    kind, cfg = CASES[case]
    theirs, ours = build_pair(kind, cfg)
    assert n_trainable(ours) == n_trainable(theirs)
    assert set(LoraMethod().adapter_state_dict(ours)) == set(get_peft_model_state_dict(theirs))
    diff = (logits(ours) - logits(theirs)).abs().max().item()
    assert diff <= TOL, f"{case}: max abs diff {diff}"
    # the adapter really changes the output (the comparison above is not base vs base)
    assert (logits(ours) - logits(base(kind))).abs().max().item() > 1e-3


@pytest.mark.parametrize("init", ["kaiming", "gaussian"])
def test_initialisation_is_peft_s_bit_for_bit(init: str) -> None:
    ours = base("llama")
    torch.manual_seed(7)
    LoraMethod().inject(ours, LoraConfig(r=4, init=init))
    torch.manual_seed(7)
    theirs = peft.get_peft_model(base("llama"), peft.LoraConfig(**peft_kwargs(LoraConfig(r=4, init=init))))
    expected = get_peft_model_state_dict(theirs)
    got = LoraMethod().adapter_state_dict(ours)
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert torch.equal(got[key], value), key
    b_values = [v for k, v in got.items() if "lora_B" in k]
    assert all(not v.any() for v in b_values)  # B starts at zero: the adapter is a no-op before training
    assert torch.equal(logits(ours), logits(base("llama")))


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_merge_unmerge_restores_base_weights(kind: str) -> None:
    model = base(kind)
    method = LoraMethod()
    method.inject(model, LoraConfig(r=4, alpha=8, bias="none"))
    randomize_trainables(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "base_layer" in n}
    unmerged = logits(model)
    method.merge(model)
    merged = logits(model)
    assert (merged - unmerged).abs().max().item() <= TOL
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters() if n in before)
    method.unmerge(model)
    restore = max((p - before[n]).abs().max().item() for n, p in model.named_parameters() if n in before)
    assert restore <= 1e-6
    assert (logits(model) - unmerged).abs().max().item() <= TOL
    # exact=True keeps the pre-merge weights: bit-for-bit restore
    current = {n: p.detach().clone() for n, p in model.named_parameters() if n in before}
    method.merge(model, exact=True)
    method.unmerge(model)
    assert all(torch.equal(current[n], p) for n, p in model.named_parameters() if n in current)


def test_merge_and_unload_gives_a_plain_model_with_the_merged_outputs() -> None:
    model = base("gpt2")
    method = LoraMethod()
    method.inject(model, LoraConfig(r=4, alpha=8, modules_to_save=["wpe"]))
    randomize_trainables(model)
    adapted = logits(model)
    method.merge(model)
    plain = method.unload(model)
    assert not any(isinstance(m, LoraLinear) for m in plain.modules())
    assert type(plain.transformer.wpe) is torch.nn.Embedding
    assert (logits(plain) - adapted).abs().max().item() <= TOL
    assert set(plain.state_dict()) == set(base("gpt2").state_dict())


def test_unload_without_merge_returns_the_base_model() -> None:
    model = base("llama")
    method = LoraMethod()
    method.inject(model, LoraConfig(r=4, modules_to_save=["lm_head"]))
    randomize_trainables(model)
    plain = method.unload(model)
    assert torch.equal(logits(plain), logits(base("llama")))


def test_targets_matching_nothing_list_the_linear_modules() -> None:
    with pytest.raises(AdapterError) as err:
        LoraMethod().inject(base("llama"), LoraConfig(target_modules=["qproj"]))
    message = str(err.value)
    assert "adapter.target_modules" in message and "'qproj'" in message
    for name in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        assert name in message
    with pytest.raises(AdapterError, match="c_attn"):
        LoraMethod().inject(base("gpt2"), LoraConfig(target_modules=r".*\.nothing"))


def test_unknown_modules_to_save_is_an_error_naming_it() -> None:
    with pytest.raises(AdapterError, match=r"modules_to_save.*lm_haed"):
        LoraMethod().inject(base("llama"), LoraConfig(modules_to_save=["lm_haed"]))


def test_only_adapter_parameters_train() -> None:
    model = base("llama")
    LoraMethod().inject(
        model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], modules_to_save=["lm_head"])
    )
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(
        ".lora_A." in n or ".lora_B." in n or ".modules_to_save." in n for n in trainable
    )
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    x = tokens()
    model(input_ids=x, labels=x).loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None for g in grads.values())
    # B starts at 0, so on the first step only B (and the head copy) get a non-zero gradient
    assert all(g.abs().sum() > 0 for n, g in grads.items() if "lora_B" in n or "modules_to_save" in n)
    assert all(not g.any() for n, g in grads.items() if "lora_A" in n)
    opt.step()
    assert all(torch.equal(p, frozen_before[n]) for n, p in model.named_parameters() if n in frozen_before)


def test_dropout_is_only_on_the_lora_branch() -> None:
    model = base("llama")
    LoraMethod().inject(model, LoraConfig(r=4, dropout=0.5))
    model.train()
    # B = 0: whatever dropout does to A's input, the output is the base output, so dropout is not on the base path
    base_model = base("llama").train()
    assert torch.equal(logits(model), logits(base_model))
    assert any(isinstance(m, torch.nn.Dropout) for m in model.modules())
    no_dropout = base("llama")
    LoraMethod().inject(no_dropout, LoraConfig(r=4, dropout=0.0))
    assert not any(isinstance(m, torch.nn.Dropout) for m in no_dropout.modules())


def test_two_adapters_switch_exactly() -> None:
    cfg_a = LoraConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"], modules_to_save=["lm_head"])
    cfg_b = LoraConfig(r=2, alpha=2, target_modules="all-linear", use_rslora=True)
    method = LoraMethod()
    singles = {}
    for name, cfg, seed in (("a", cfg_a, 1), ("b", cfg_b, 2)):
        single = base("llama")
        method.inject(single, cfg)
        randomize_trainables(single, seed)
        singles[name] = single
    model = base("llama")
    method.inject(model, cfg_a, "a")
    method.load_adapter_state_dict(model, method.adapter_state_dict(singles["a"]), "a")
    method.inject(model, cfg_b, "b")
    method.load_adapter_state_dict(model, method.adapter_state_dict(singles["b"]), "b")
    assert method.active_adapter(model) == "b"
    # a freshly injected adapter is the only trainable one
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A.b." in n or ".lora_B.b." in n for n in trainable)
    out_b = logits(model)
    assert torch.equal(out_b, logits(singles["b"]))
    method.set_active(model, "a")
    out_a = logits(model)
    assert torch.equal(out_a, logits(singles["a"]))
    assert not torch.equal(out_a, out_b)
    method.set_active(model, None)
    assert torch.equal(logits(model), logits(base("llama")))
    method.set_active(model, "b")
    assert torch.equal(logits(model), out_b)
    # merged adapters pin the model: switching away needs an unmerge first
    method.merge(model, "b", exact=True)
    with pytest.raises(AdapterError, match="unmerge"):
        method.set_active(model, "a")
    method.unmerge(model, "b")
    method.set_active(model, "a")
    assert torch.equal(logits(model), out_a)
    with pytest.raises(AdapterError, match="no LoRA adapter named 'c'"):
        method.set_active(model, "c")


def test_combine_adapters_equals_weighted_sum_and_peft_cat() -> None:
    cfg_a = LoraConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"], modules_to_save=["lm_head"])
    cfg_b = LoraConfig(r=2, alpha=6, target_modules=["q_proj", "down_proj"], use_rslora=True)
    weights = {"a": 0.7, "b": -0.3}
    method = LoraMethod()
    model = base("llama")
    theirs = peft.get_peft_model(base("llama"), peft.LoraConfig(**peft_kwargs(cfg_a)), adapter_name="a")
    theirs.add_adapter("b", peft.LoraConfig(**peft_kwargs(cfg_b)))
    for name, cfg, seed in (("a", cfg_a, 1), ("b", cfg_b, 2)):
        theirs.base_model.set_adapter(name)
        randomize_trainables(theirs, seed)
        method.inject(model, cfg, name)
        method.load_adapter_state_dict(model, get_peft_model_state_dict(theirs, adapter_name=name), name)
    new_cfg = combine_adapters(model, weights, "ab")
    assert new_cfg.r == 6 and method.active_adapter(model) == "ab"
    for layer in (m for m in model.modules() if isinstance(m, LoraLinear)):
        expected = sum(w * layer.delta_weight(n) for n, w in weights.items() if n in layer.lora_A)
        assert (layer.delta_weight("ab") - expected).abs().max().item() <= 1e-6
    head = model.lm_head
    expected_head = head.original_module.weight + 0.7 * (
        head.modules_to_save["a"].weight - head.original_module.weight
    )
    assert torch.allclose(head.modules_to_save["ab"].weight, expected_head, atol=1e-6)
    # peft's own "cat" combination gives the same update on every layer
    theirs.add_weighted_adapter(["a", "b"], list(weights.values()), "ab", combination_type="cat")
    for path, layer in ((p, m) for p, m in model.named_modules() if isinstance(m, LoraLinear)):
        peft_layer = theirs.base_model.model.get_submodule(path)
        assert (layer.delta_weight("ab") - peft_layer.get_delta_weight("ab")).abs().max().item() <= 1e-6, path


def test_lora_method_is_registered() -> None:
    method = get_adapter("lora")
    assert isinstance(method, LoraMethod)
    assert (method.name, method.peft_type, method.mergeable) == ("lora", "LORA", True)
    assert method.config_class is LoraConfig


def test_bf16_model_keeps_fp32_adapters_like_peft() -> None:
    cfg = LoraConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"])
    ours = base("llama").to(torch.bfloat16)
    LoraMethod().inject(ours, cfg)
    theirs = peft.get_peft_model(base("llama").to(torch.bfloat16), peft.LoraConfig(**peft_kwargs(cfg)))
    randomize_trainables(theirs)
    LoraMethod().load_adapter_state_dict(ours, get_peft_model_state_dict(theirs))
    assert {p.dtype for n, p in ours.named_parameters() if "lora_" in n} == {torch.float32}
    out = logits(ours)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, logits(theirs.eval()))
    LoraMethod().merge(ours)
    assert (
        logits(ours).float() - out.float()
    ).abs().max().item() <= 0.1  # bf16 rounding of the merged weight
