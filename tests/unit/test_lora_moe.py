"""LoRA on Mixture-of-Experts bases (`adapter.target_parameters`) against HuggingFace peft's ParamWrapper (the
oracle): same tensors -> same logits and gradients on tiny random Qwen2-MoE (shared experts), Qwen3-MoE,
Mixtral, OLMoE and gpt-oss (transposed, with biases); checkpoints load both ways; nothing is skipped."""

from __future__ import annotations

import copy
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import peft
import pytest
import torch
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from tests.tiny_models import random_causal_lm
from transformers import (
    AutoModelForCausalLM,
    GptOssConfig,
    MixtralConfig,
    OlmoeConfig,
    Qwen2MoeConfig,
    Qwen3MoeConfig,
)

from peft_framework.adapters.checkpoint import load_adapter, read_adapter_config, save_adapter
from peft_framework.adapters.lora import LoraConfig, LoraMethod
from peft_framework.adapters.lora.params import LoraParams
from peft_framework.errors import AdapterError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TOL = 1e-5
_COMMON = dict(
    vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
)
EXPERTS = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]


def moe_config(family: str):
    if family == "qwen2_moe":  # shared experts (ordinary linears) beside the routed ones
        return Qwen2MoeConfig(
            **_COMMON,
            intermediate_size=48,
            moe_intermediate_size=16,
            shared_expert_intermediate_size=24,
            num_experts=4,
            num_experts_per_tok=2,
        )
    if family == "qwen3_moe":
        return Qwen3MoeConfig(
            **_COMMON,
            intermediate_size=48,
            moe_intermediate_size=16,
            num_experts=4,
            num_experts_per_tok=2,
            head_dim=8,
        )
    if family == "mixtral":
        return MixtralConfig(**_COMMON, intermediate_size=16, num_local_experts=4, num_experts_per_tok=2)
    if family == "olmoe":
        return OlmoeConfig(
            **_COMMON, intermediate_size=16, num_experts=4, num_experts_per_tok=2, eos_token_id=None
        )
    if family == "gpt_oss":  # experts stored transposed [E, in, out], with biases, gate/up interleaved
        return GptOssConfig(
            **_COMMON,
            intermediate_size=16,
            num_local_experts=4,
            num_experts_per_tok=2,
            head_dim=8,
            layer_types=["full_attention"] * 2,
        )
    raise ValueError(family)


FAMILIES = ["qwen2_moe", "qwen3_moe", "mixtral", "olmoe", "gpt_oss"]


def moe_base(family: str, implementation: str = "eager") -> torch.nn.Module:
    config = moe_config(family)
    config._experts_implementation = implementation
    return random_causal_lm(config)


def router_entry(family: str) -> str:
    return "mlp.router.weight" if family == "gpt_oss" else "mlp.gate.weight"


def pair(family: str, params: list[str], modules: list[str] | None, implementation: str = "eager", **kw):
    """(peft model, ours) on copies of one base, with the same random adapter tensors."""
    base = moe_base(family, implementation)
    ours = copy.deepcopy(base)
    theirs = peft.get_peft_model(
        base, peft.LoraConfig(r=2, lora_alpha=4, target_modules=modules, target_parameters=params, **kw)
    )
    state = get_peft_model_state_dict(theirs)
    torch.manual_seed(1)
    state = {k: torch.randn_like(v) * 0.3 for k, v in state.items()}
    set_peft_model_state_dict(theirs, state)
    method = LoraMethod()
    method.inject(ours, LoraConfig(r=2, alpha=4, target_modules=modules, target_parameters=params))
    method.load_adapter_state_dict(ours, state)
    return theirs, ours, method


def tokens() -> torch.Tensor:
    return torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_peft_target_parameters(family: str) -> None:
    params = [*EXPERTS, router_entry(family)]
    theirs, ours, method = pair(family, params, ["q_proj", "v_proj"])
    assert set(method.adapter_state_dict(ours)) == set(get_peft_model_state_dict(theirs))
    with torch.no_grad():
        expected, got = theirs(tokens()).logits, ours(tokens()).logits
    assert (expected - got).abs().max() < TOL
    method.set_active(ours, None)  # the adapter really changes the model
    with torch.no_grad():
        assert (ours(tokens()).logits - got).abs().max() > 1e-3


@pytest.mark.parametrize("implementation", ["eager", "batched_mm", "grouped_mm"])
def test_every_transformers_experts_implementation(implementation: str) -> None:
    theirs, ours, _ = pair("mixtral", EXPERTS, None, implementation)
    with torch.no_grad():
        assert (theirs(tokens()).logits - ours(tokens()).logits).abs().max() < TOL


@pytest.mark.parametrize("family", ["qwen2_moe", "gpt_oss"])
def test_gradients_match_the_materialised_delta(family: str) -> None:
    """peft folds every expert's full delta into the weight on each forward: the reference for our grouped
    low-rank path's gradients."""
    theirs, ours, method = pair(family, EXPERTS, None)
    for model in (theirs, ours):
        model.train()
        model(tokens(), labels=tokens()).loss.backward()
    expected = {k: p.grad for k, p in theirs.named_parameters() if p.requires_grad}
    got = {k: p.grad for k, p in method.adapter_tensors(ours, "default").items()}
    assert len(got) == len(expected) == 8
    for key, grad in got.items():
        peft_key = next(k for k in expected if k.replace(".default", "").endswith(key))
        assert torch.allclose(grad, expected[peft_key], atol=1e-5, rtol=1e-4), key


def test_dropout_runs_on_the_expert_branch_only() -> None:
    """peft refuses dropout on target_parameters; here it drops the branch input, the base is untouched."""
    base = moe_base("mixtral")
    model = copy.deepcopy(base)
    LoraMethod().inject(model, LoraConfig(r=2, target_parameters=EXPERTS, dropout=0.5))
    model.train()
    with torch.no_grad():  # B = 0: the branch adds nothing, dropout or not
        assert torch.allclose(model(tokens()).logits, base.train()(tokens()).logits, atol=1e-6)
    for layer in model.modules():
        if isinstance(layer, LoraParams):
            for b in layer.lora_B["default"].values():
                torch.nn.init.normal_(b.weight)
    torch.manual_seed(0)
    first = model(tokens()).logits
    torch.manual_seed(1)
    assert (model(tokens()).logits - first).abs().max() > 1e-4  # masks differ between calls
    first.sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


def test_checkpoints_load_both_ways(tmp_path) -> None:
    params = [*EXPERTS, "mlp.gate.weight"]
    theirs, ours, method = pair("qwen2_moe", params, ["q_proj"])
    config = LoraConfig(r=2, alpha=4, target_modules=["q_proj"], target_parameters=params)
    save_adapter(
        ours, method, config, tmp_path / "ours", base_model_name_or_path="tiny", task_type="causal_lm"
    )
    saved = read_adapter_config(tmp_path / "ours")
    assert saved["target_parameters"] == sorted(params)
    with torch.no_grad():
        expected = ours(tokens()).logits
        loaded_by_peft = peft.PeftModel.from_pretrained(moe_base("qwen2_moe"), str(tmp_path / "ours"))
        assert (loaded_by_peft(tokens()).logits - expected).abs().max() < TOL
        theirs.save_pretrained(str(tmp_path / "peft"))
        fresh = moe_base("qwen2_moe")
        load_adapter(fresh, tmp_path / "peft")
        assert (fresh(tokens()).logits - theirs(tokens()).logits).abs().max() < TOL


def test_params_only_config_saves_null_target_modules(tmp_path) -> None:
    model = moe_base("olmoe")
    method = LoraMethod()
    config = LoraConfig(target_parameters=["experts.down_proj"])
    method.inject(model, config)
    assert not any(p.requires_grad for n, p in model.named_parameters() if "self_attn" in n)
    save_adapter(model, method, config, tmp_path, base_model_name_or_path="tiny", task_type="causal_lm")
    saved = read_adapter_config(tmp_path)
    assert saved["target_modules"] is None and saved["target_parameters"] == ["experts.down_proj"]
    peft.PeftModel.from_pretrained(moe_base("olmoe"), str(tmp_path))  # peft accepts it


@pytest.mark.parametrize("target_modules", [None, "all-linear"])
def test_all_linear_and_default_also_adapt_routed_experts(target_modules, tmp_path) -> None:
    model = moe_base("qwen2_moe")
    method = LoraMethod()
    config = LoraConfig(target_modules=target_modules)
    method.inject(model, config)
    names = set(method.adapter_state_dict(model))
    assert any(".experts.base_layer.lora_A." in n for n in names)  # gate_up_proj
    assert any(".experts.lora_A." in n for n in names)  # down_proj
    assert any(".shared_expert.up_proj.lora_A." in n for n in names)
    assert not any(".gate.lora_A" in n for n in names)  # the router stays frozen
    save_adapter(model, method, config, tmp_path, base_model_name_or_path="tiny", task_type="causal_lm")
    assert read_adapter_config(tmp_path)["target_parameters"] == sorted(EXPERTS)


def test_parameter_matching_nothing_lists_expert_and_router_params() -> None:
    with pytest.raises(AdapterError) as err:
        LoraMethod().inject(moe_base("mixtral"), LoraConfig(target_parameters=["experts.w1", *EXPERTS]))
    text = str(err.value)
    assert "adapter.target_parameters" in text and "'experts.w1' matches no parameter" in text
    assert "mlp.experts.gate_up_proj" in text and "mlp.gate.weight" in text


def test_other_adapter_types_refuse_target_parameters() -> None:
    from pydantic import ValidationError

    from peft_framework.adapters.ia3.config import IA3Config

    with pytest.raises(ValidationError, match="adapter.target_parameters.*adapter.type lora"):
        IA3Config(target_parameters=EXPERTS)


def test_merge_into_3d_tensors_equals_the_adapter() -> None:
    _, ours, method = pair("gpt_oss", [*EXPERTS, "mlp.router.weight"], ["q_proj"])
    with torch.no_grad():
        expected = ours(tokens()).logits
        method.merge(ours)
        assert (ours(tokens()).logits - expected).abs().max() < TOL
        plain = method.unload(ours)
        assert not any(isinstance(m, LoraParams) for m in plain.modules())
        assert (plain(tokens()).logits - expected).abs().max() < TOL


def test_two_adapters_switch_on_experts() -> None:
    model = moe_base("qwen3_moe")
    method = LoraMethod()
    method.inject(model, LoraConfig(r=2, target_parameters=EXPERTS), "a")
    method.inject(model, LoraConfig(r=4, target_parameters=["experts.down_proj"]), "b")
    for layer in model.modules():
        if isinstance(layer, LoraParams):
            for name in ("a", "b"):
                for b in layer.lora_B[name].values():
                    torch.nn.init.normal_(b.weight)
    outs = {}
    with torch.no_grad():
        for name in ("a", "b", None):
            method.set_active(model, name)
            outs[name] = model(tokens()).logits
    assert (outs["a"] - outs["b"]).abs().max() > 1e-3 and (outs["a"] - outs[None]).abs().max() > 1e-3
    method.set_active(model, "a")
    with torch.no_grad():
        assert torch.equal(model(tokens()).logits, outs["a"])


@pytest.mark.parametrize("family", ["mixtral", "gpt_oss"])
def test_shard_by_shard_merge_fuses_per_expert_checkpoints(family: str, tmp_path) -> None:
    """Checkpoints keep one tensor per expert (Mixtral's `block_sparse_moe.experts.3.w1.weight`), the model
    fuses them: the streaming merge reads transformers' conversion table, merges into the fused tensors across
    shards, and plain transformers loads the result (gpt-oss: stored fused already, transposed with biases)."""
    from peft_framework.export.merge import Adapter, open_checkpoint, stream_merge

    params = [*EXPERTS, router_entry(family)]
    _, ours, method = pair(family, params, ["q_proj"])
    config = LoraConfig(r=2, alpha=4, target_modules=["q_proj"], target_parameters=params)
    save_adapter(
        ours, method, config, tmp_path / "adapter", base_model_name_or_path="t", task_type="causal_lm"
    )
    base = moe_base(family)
    base.save_pretrained(str(tmp_path / "base"), max_shard_size="20KB")
    checkpoint = open_checkpoint(tmp_path / "base")
    assert len(checkpoint.shards) >= 3
    (tmp_path / "out").mkdir()
    result = stream_merge(
        checkpoint,
        AutoModelForCausalLM,
        base.config,
        Adapter.read(tmp_path / "adapter"),
        tmp_path / "out",
        torch.float32,
    )
    assert not result.unused_keys and not result.left_out
    base.config.save_pretrained(str(tmp_path / "out"))
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out")).eval()
    with torch.no_grad():
        assert (merged(tokens()).logits - ours(tokens()).logits).abs().max() < 1e-4
    if family == "mixtral":  # the per-expert, renamed checkpoint layout really was exercised
        assert any(".block_sparse_moe.experts.0.w1." in k for k in checkpoint.weight_map)


def test_grouped_products_agree_with_the_per_expert_loop() -> None:
    """The low-rank products use torch's grouped_mm on CPU/bf16 and transformers' per-expert loop elsewhere
    (fp32 factors on a GPU): both give the same values and gradients, empty groups included."""
    from peft_framework.adapters.lora.params import grouped_mm

    offsets = torch.tensor([3, 3, 7, 10], dtype=torch.int32)
    results = []
    for native in (True, False):
        torch.manual_seed(0)
        x = torch.randn(10, 8, requires_grad=True)
        w = torch.randn(4, 4, 8, requires_grad=True)  # stored (E, r, in) like A, used transposed
        y = grouped_mm(x, w.transpose(1, 2), offsets, native=native)
        (y * torch.arange(40.0).view(10, 4)).sum().backward()
        results.append((y.detach(), x.grad, w.grad))
    for a, b in zip(*results, strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_odd_expert_sizes_take_the_per_expert_loop(monkeypatch) -> None:
    """grouped_mm on CPU wants 16-byte strides: an intermediate size of 15 runs the loop, same logits."""
    plain = moe_config

    def odd(family: str):
        config = plain(family)
        config.intermediate_size = 15
        return config

    monkeypatch.setitem(globals(), "moe_config", odd)
    theirs, ours, _ = pair("mixtral", EXPERTS, None)
    with torch.no_grad():
        assert (theirs(tokens()).logits - ours(tokens()).logits).abs().max() < TOL


def _train_step(model: torch.nn.Module, monkeypatch) -> tuple[dict[str, torch.Tensor], int, int]:
    """Gradients of one seeded training step; how many inputs of the low-rank products (grouped GEMMs with a
    trainable weight) and how many outputs of the frozen expert products were alive once the forward was done."""
    import weakref

    from peft_framework.adapters.lora import params as lora_params

    plain = lora_params.grouped_mm
    inputs: list[weakref.ref] = []
    outputs: list[weakref.ref] = []

    def recording(x, weight, offsets, native=None):
        y = plain(x, weight, offsets, native)
        (inputs if weight.requires_grad else outputs).append(weakref.ref(x if weight.requires_grad else y))
        return y

    monkeypatch.setattr(lora_params, "grouped_mm", recording)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(5)
    loss = model(tokens(), labels=tokens()).loss
    alive = sum(ref() is not None for ref in inputs)
    alive_base = sum(ref() is not None for ref in outputs)
    assert len(inputs) == 2 * 2 * 2  # layers x adapted weights x (first + second product)
    loss.backward()
    monkeypatch.setattr(lora_params, "grouped_mm", plain)
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}, alive, alive_base


@pytest.mark.parametrize("family", ["qwen3_moe", "gpt_oss"])
def test_low_rank_input_is_rebuilt_in_backward_not_kept(family: str, monkeypatch) -> None:
    """The expert LoRA's input (the gathered tokens; the gated activations) is rebuilt in backward from tensors
    the frozen graph keeps anyway: not kept alive for backward, and the same gradients."""
    from peft_framework.adapters.lora import params as lora_params

    model = moe_base(family)
    LoraMethod().inject(model, LoraConfig(r=2, target_parameters=EXPERTS))
    for layer in model.modules():
        if isinstance(layer, LoraParams):
            for b in layer.lora_B["default"].values():
                torch.nn.init.normal_(b.weight)
    model.train()
    grads, alive, _ = _train_step(model, monkeypatch)
    monkeypatch.setattr(lora_params, "RECOMPUTE_LORA_INPUT", False)
    expected, alive_without, _ = _train_step(model, monkeypatch)
    assert set(grads) == set(expected) and len(grads) == 8
    for name, grad in grads.items():
        assert torch.allclose(grad, expected[name], atol=1e-6), name
    # kept: the 4 inputs of the first products (A's gradient needs them) and the 4 (S, r) ones of the second
    assert alive_without == 8 and alive == 4


def test_no_recipe_under_activation_checkpointing(monkeypatch) -> None:
    """Under transformers' (non-reentrant) gradient checkpointing the recipe would keep its sources alive:
    it steps aside, and the gradients are those of the plain model."""
    model = moe_base("qwen3_moe")
    LoraMethod().inject(model, LoraConfig(r=2, target_parameters=EXPERTS))
    model.train()
    expected, _, kept_base = _train_step(model, monkeypatch)
    assert kept_base > 0  # without checkpointing the gate keeps the up-projection's output
    model.gradient_checkpointing_enable()
    grads, alive, alive_base = _train_step(model, monkeypatch)
    assert alive == alive_base == 0  # checkpointing drops what a layer saved; no recipe holds its sources
    for name, grad in grads.items():
        assert torch.allclose(grad, expected[name], atol=1e-6), name


def test_a_rebuilt_input_changed_in_place_is_an_error() -> None:
    """As autograd refuses a saved tensor modified in place, the recipe refuses a changed source."""
    from peft_framework.adapters.lora.params import kept_as_recipe

    source = torch.randn(6, 4)
    a = torch.randn(4, 3, requires_grad=True)
    x = source * 2
    with kept_as_recipe(x, (source,), lambda: source * 2):
        y = x @ a
    source.add_(1)
    with pytest.raises(RuntimeError, match="modified in place"):
        y.sum().backward()
    source.sub_(1)
    x = source * 2
    with kept_as_recipe(x, (source,), lambda: source * 2):
        y = x @ a
    y.sum().backward()
    assert torch.allclose(a.grad, x.sum(0, keepdim=True).T.expand(4, 3))
