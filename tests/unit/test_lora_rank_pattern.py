"""LoRA's per-target ranks and alphas (`adapter.rank_pattern` / `adapter.alpha_pattern`) against HuggingFace
peft (the oracle): the same keys give the same tensor shapes and logits, on modules and on adapted parameters
(MoE experts); the saved adapter_config.json carries them and checkpoints load both ways."""

from __future__ import annotations

import copy
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import peft
import pytest
import torch
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from tests.tiny_models import random_causal_lm
from transformers import Qwen2MoeConfig

from peft_framework.adapters.checkpoint import load_adapter, read_adapter_config, save_adapter
from peft_framework.adapters.lora import LoraConfig, LoraMethod
from peft_framework.adapters.lora.combine import combine_adapters
from peft_framework.errors import AdapterError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

EXPERTS = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]
MODULES = ["q_proj", "v_proj", "up_proj"]  # up_proj: the shared expert's
RANKS = {"layers.0.self_attn.q_proj": 5, "mlp.experts.down_proj": 3, "shared_expert.up_proj": 1}
ALPHAS = {"v_proj": 7, r"layers\.1\.mlp\.experts\.gate_up_proj": 9.5}


def base() -> torch.nn.Module:
    config = Qwen2MoeConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=48,
        moe_intermediate_size=16,
        shared_expert_intermediate_size=24,
        num_experts=4,
        num_experts_per_tok=2,
    )
    return random_causal_lm(config)


def tokens() -> torch.Tensor:
    return torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(3))


def ours_config(**kw) -> LoraConfig:
    return LoraConfig(
        r=2,
        alpha=4,
        target_modules=MODULES,
        target_parameters=EXPERTS,
        rank_pattern=RANKS,
        alpha_pattern=ALPHAS,
        **kw,
    )


def pair():
    model = base()
    ours = copy.deepcopy(model)
    theirs = peft.get_peft_model(
        model,
        peft.LoraConfig(
            r=2,
            lora_alpha=4,
            target_modules=MODULES,
            target_parameters=EXPERTS,
            rank_pattern=RANKS,
            alpha_pattern=ALPHAS,
        ),
    )
    torch.manual_seed(1)
    state = {k: torch.randn_like(v) * 0.3 for k, v in get_peft_model_state_dict(theirs).items()}
    set_peft_model_state_dict(theirs, state)
    method = LoraMethod()
    method.inject(ours, ours_config())
    method.load_adapter_state_dict(ours, state)  # refuses tensors of other shapes
    return theirs, ours, method, state


def test_patterns_set_the_same_ranks_and_logits_as_peft() -> None:
    theirs, ours, method, state = pair()
    mine = method.adapter_state_dict(ours)
    assert {k: v.shape for k, v in mine.items()} == {k: v.shape for k, v in state.items()}
    q0 = next(v for k, v in mine.items() if "layers.0.self_attn.q_proj.lora_A" in k)
    q1 = next(v for k, v in mine.items() if "layers.1.self_attn.q_proj.lora_A" in k)
    down = next(v for k, v in mine.items() if k.endswith("layers.0.mlp.experts.lora_A.weight"))
    assert (q0.shape[0], q1.shape[0], down.shape[0]) == (5, 2, 3 * 4)  # down_proj: r·E rows
    with torch.no_grad():
        expected, got = theirs(tokens()).logits, ours(tokens()).logits
        assert (expected - got).abs().max() < 1e-5
        method.set_active(ours, None)
        plain = ours(tokens()).logits
    # the alphas really differ from the default: a scaling changed by the pattern changes the logits
    layer = ours.get_submodule("model.layers.0.self_attn.v_proj")
    assert layer.scaling["default"] == pytest.approx(7 / 2)
    assert (plain - got).abs().max() > 1e-3


def test_patterns_are_saved_and_load_both_ways(tmp_path) -> None:
    theirs, ours, method, _ = pair()
    save_adapter(
        ours, method, ours_config(), tmp_path / "ours", base_model_name_or_path="tiny", task_type="causal_lm"
    )
    saved = read_adapter_config(tmp_path / "ours")
    assert saved["rank_pattern"] == RANKS and saved["alpha_pattern"] == ALPHAS
    with torch.no_grad():
        expected = ours(tokens()).logits
        by_peft = peft.PeftModel.from_pretrained(base(), str(tmp_path / "ours"))
        assert (by_peft(tokens()).logits - expected).abs().max() < 1e-5
        theirs.save_pretrained(str(tmp_path / "peft"))
        fresh = base()
        _, config = load_adapter(fresh, tmp_path / "peft")
        assert config.rank_pattern == RANKS and config.alpha_pattern == ALPHAS
        assert (fresh(tokens()).logits - theirs(tokens()).logits).abs().max() < 1e-5


def test_pattern_matching_nothing_is_an_error() -> None:
    with pytest.raises(AdapterError, match=r"adapter.rank_pattern: key 'k_proj' matches no adapted"):
        LoraMethod().inject(base(), LoraConfig(target_modules=["q_proj"], rank_pattern={"k_proj": 4}))
    with pytest.raises(ValueError, match=r"adapter.alpha_pattern.q_proj: -1"):
        LoraConfig(alpha_pattern={"q_proj": -1})


def test_pissa_saves_doubled_patterns(tmp_path) -> None:
    """PiSSA is saved as a plain LoRA of twice the rank: every pattern's rank doubles, its scaling stays."""
    model = base()
    method = LoraMethod()
    config = LoraConfig(
        r=2,
        alpha=4,
        target_modules=["q_proj"],
        init="pissa",
        rank_pattern={"layers.0.self_attn.q_proj": 3},
        alpha_pattern={"layers.1.self_attn.q_proj": 5},
    )
    method.inject(model, config)
    save_adapter(model, method, config, tmp_path, base_model_name_or_path="tiny", task_type="causal_lm")
    saved = read_adapter_config(tmp_path)
    assert saved["rank_pattern"] == {"layers.0.self_attn.q_proj": 6}
    assert saved["alpha_pattern"] == {"layers.1.self_attn.q_proj": 10}
    with torch.no_grad():
        expected = model(tokens()).logits
        by_peft = peft.PeftModel.from_pretrained(base(), str(tmp_path))
        assert (by_peft(tokens()).logits - expected).abs().max() < 1e-4


def test_combining_patterned_adapters_is_refused() -> None:
    model = base()
    method = LoraMethod()
    method.inject(model, LoraConfig(target_modules=["q_proj"], rank_pattern={"layers.0.self_attn.q_proj": 3}))
    method.inject(model, LoraConfig(target_modules=["q_proj"]), "other")
    with pytest.raises(AdapterError, match="rank_pattern"):
        combine_adapters(model, {"default": 1.0, "other": 1.0}, "both")
