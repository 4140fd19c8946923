"""LoraLinear on its own: the formula, Conv1D's transposed layout, merge bookkeeping, errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from peft_framework.adapters.lora import LoraConfig, LoraLinear, LoraMethod
from peft_framework.adapters.lora.layer import lora_scaling
from peft_framework.errors import AdapterError


def test_scaling() -> None:
    assert lora_scaling(8, 16, use_rslora=False) == 2.0
    assert lora_scaling(16, 8, use_rslora=True) == 2.0
    assert lora_scaling(3, 1.5, use_rslora=True) == pytest.approx(1.5 / math.sqrt(3))


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_forward_is_base_plus_scaled_low_rank_update_and_merge_matches(kind: str) -> None:
    torch.manual_seed(0)
    base = nn.Linear(6, 5) if kind == "linear" else Conv1D(5, 6)  # Conv1D(nf=out, nx=in): weight (in, out)
    layer = LoraLinear(base)
    assert (layer.in_features, layer.out_features, layer.fan_in_fan_out) == (6, 5, kind == "conv1d")
    layer.add_adapter("x", r=3, alpha=6, dropout=0.0, use_rslora=False)
    with torch.no_grad():
        layer.lora_B["x"].weight.normal_()
    layer.set_adapter("x")
    inp = torch.randn(4, 6)
    a, b = layer.lora_A["x"].weight, layer.lora_B["x"].weight
    expected = base(inp) + inp @ a.T @ b.T * 2.0
    assert torch.allclose(layer(inp), expected, atol=1e-6)
    weight_before = base.weight.detach().clone()
    layer.merge("x")
    assert layer.merged_adapters == ["x"]
    assert torch.allclose(layer(inp), expected, atol=1e-5)  # the merged weight, no second update
    with pytest.raises(AdapterError, match="already merged"):
        layer.merge("x")
    layer.unmerge("x")
    assert torch.allclose(base.weight, weight_before, atol=1e-6)
    layer.set_adapter(None)
    assert torch.equal(layer(inp), base(inp))


def test_layer_refuses_non_linear_modules_and_duplicate_names() -> None:
    with pytest.raises(TypeError, match="Embedding"):
        LoraLinear(nn.Embedding(3, 4))
    layer = LoraLinear(nn.Linear(4, 4))
    layer.add_adapter("x", r=2, alpha=2, dropout=0.0, use_rslora=False)
    with pytest.raises(AdapterError, match="'x' already exists"):
        layer.add_adapter("x", r=2, alpha=2, dropout=0.0, use_rslora=False)


def test_method_refuses_duplicate_adapter_names_and_foreign_configs() -> None:
    model = nn.Sequential()
    model.add_module("proj", nn.Linear(4, 4))
    method = LoraMethod()
    method.inject(model, LoraConfig(r=2, target_modules=["proj"]))
    with pytest.raises(AdapterError, match="'default' is already used"):
        method.inject(model, LoraConfig(r=2, target_modules=["proj"]))
    method.inject(model, LoraConfig(r=2, target_modules=["proj"]), "second")
    assert method.adapter_names(model) == ["default", "second"] and method.active_adapter(model) == "second"
    from peft_framework.config.schema import AdapterConfigBase

    with pytest.raises(AdapterError, match="LoraConfig"):
        method.inject(model, AdapterConfigBase(type="other"), "third")


def test_config_from_peft_json_maps_keys() -> None:
    saved = {
        "peft_type": "LORA",
        "r": 16,
        "lora_alpha": 32,
        "lora_dropout": 0.05,
        "use_rslora": True,
        "bias": "lora_only",
        "init_lora_weights": "gaussian",
        "target_modules": ["v_proj", "q_proj"],
        "modules_to_save": ["lm_head"],
        "exclude_modules": None,
        "use_dora": False,
        "rank_pattern": {},
        "alpha_pattern": {},
        "some_future_key": 1,
    }
    cfg = LoraMethod().config_from_saved(saved)
    assert cfg == LoraConfig(
        r=16,
        alpha=32,
        dropout=0.05,
        use_rslora=True,
        bias="lora_only",
        init="gaussian",
        target_modules=["q_proj", "v_proj"],
        modules_to_save=["lm_head"],
    )
    with pytest.raises(AdapterError, match=r"r=0"):
        LoraMethod().config_from_saved({**saved, "r": 0})
