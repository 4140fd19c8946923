"""Llama4 (text MoE) against HuggingFace peft: its experts module carries no `@use_experts_implementation` flags
(`gate_up_proj [E, H, 2D]`, every expert on every token) and its router is an `nn.Linear`. LoRA on its expert
and router weights gives peft's logits and gradients; `all-linear` also adapts the routed experts and leaves
the router frozen; the saved adapter loads in peft."""

from __future__ import annotations

import copy
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import peft
import pytest
import torch
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from tests.tiny_models import random_causal_lm
from transformers import Llama4TextConfig

from peft_framework.adapters.checkpoint import read_adapter_config, save_adapter
from peft_framework.adapters.lora import LoraConfig, LoraMethod
from peft_framework.models.moe import is_moe, router_params

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PARAMS = ["experts.gate_up_proj", "experts.down_proj", "router.weight"]


def base() -> torch.nn.Module:
    config = Llama4TextConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=16,
        intermediate_size_mlp=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        num_local_experts=4,
        num_experts_per_tok=1,
        interleave_moe_layer_step=1,
        no_rope_layers=[1, 1],
        attention_chunk_size=64,
    )
    return random_causal_lm(config)


def tokens() -> torch.Tensor:
    return torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(3))


def test_llama4_expert_and_router_lora_matches_peft() -> None:
    model = base()
    ours = copy.deepcopy(model)
    theirs = peft.get_peft_model(
        model, peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], target_parameters=PARAMS)
    )
    torch.manual_seed(1)
    state = {k: torch.randn_like(v) * 0.3 for k, v in get_peft_model_state_dict(theirs).items()}
    set_peft_model_state_dict(theirs, state)
    method = LoraMethod()
    method.inject(ours, LoraConfig(r=2, alpha=4, target_modules=["q_proj"], target_parameters=PARAMS))
    method.load_adapter_state_dict(ours, state)
    assert set(method.adapter_state_dict(ours)) == set(state)
    with torch.no_grad():
        expected, got = theirs(tokens()).logits, ours(tokens()).logits
        assert (expected - got).abs().max() < 1e-5
        method.set_active(ours, None)
        assert (ours(tokens()).logits - got).abs().max() > 1e-3
    method.set_active(ours, "default")
    for m in (theirs, ours):
        m.train()
        m(tokens(), labels=tokens()).loss.backward()
    peft_grads = {k.replace(".default", ""): p.grad for k, p in theirs.named_parameters() if p.requires_grad}
    grads = method.adapter_tensors(ours, "default")
    assert len(grads) == len(peft_grads) == 16
    for key, param in grads.items():
        peft_key = next(k for k in peft_grads if k.endswith(key))
        assert torch.allclose(param.grad, peft_grads[peft_key], atol=1e-6), key


def test_llama4_all_linear_adapts_experts_not_the_router(tmp_path) -> None:
    model = base()
    assert is_moe(model) and router_params(model)[0].endswith("feed_forward.router.weight")
    method = LoraMethod()
    config = LoraConfig(target_modules="all-linear")
    method.inject(model, config)
    names = set(method.adapter_state_dict(model))
    assert any(".feed_forward.experts.base_layer.lora_A." in n for n in names)  # gate_up_proj
    assert any(".feed_forward.experts.lora_A." in n for n in names)  # down_proj
    assert any(".shared_expert.down_proj.lora_A." in n for n in names)
    assert not any(".router." in n for n in names)
    save_adapter(model, method, config, tmp_path, base_model_name_or_path="tiny", task_type="causal_lm")
    assert read_adapter_config(tmp_path)["target_parameters"] == [
        "feed_forward.experts.down_proj",
        "feed_forward.experts.gate_up_proj",
    ]
    loaded = peft.PeftModel.from_pretrained(base(), str(tmp_path))
    with torch.no_grad():
        assert (loaded(tokens()).logits - model(tokens()).logits).abs().max() < 1e-5
