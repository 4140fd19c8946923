"""The contract every registered adapter type honours (the built-ins, and the example plug-in from
tests/plugin_example, registered here in-process): inject -> trainable count -> save -> load -> identical
logits; merge/unmerge round trip where mergeable; set_active(None) is the base; several adapters switch;
and, for the types peft knows, HuggingFace peft loads the checkpoint and computes the same logits."""

from __future__ import annotations

import copy
from pathlib import Path

import peft
import pytest
import torch

from peft_framework.adapters import load_adapter, registry, save_adapter
from peft_framework.adapters.adalora import AdaLoraConfig
from peft_framework.adapters.base import AdapterMethod
from peft_framework.adapters.bottleneck import BottleneckConfig
from peft_framework.adapters.ia3 import IA3Config
from peft_framework.adapters.lora import LoraConfig
from tiny_models import base, logits, n_trainable, randomize_trainables

PLUGIN_SRC = Path(__file__).resolve().parents[1] / "plugin_example"
TOL = 1e-5

#: a small config per type; a type not listed (another plug-in) is tried with its config's defaults
CONFIGS = {
    "lora": lambda: LoraConfig(r=4, target_modules=["q_proj", "v_proj"], modules_to_save=["lm_head"]),
    "adalora": lambda: AdaLoraConfig(init_r=4, target_r=2, target_modules=["q_proj", "v_proj"]),
    "ia3": lambda: IA3Config(),
    "bottleneck": lambda: BottleneckConfig(variant="houlsby"),
}
#: variants of a type that must honour the whole contract too: "<type>[<variant>]" -> its config. (PiSSA and
#: OLoRA rewrite the base weights, so they refuse a second adapter in memory by design and save converted
#: to the original base: tests/unit/test_lora_variants.py holds their contract.)
VARIANT_CONFIGS = {
    "lora[dora]": lambda: LoraConfig(r=4, target_modules=["q_proj", "v_proj"], use_dora=True),
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _types() -> list[str]:
    return sorted({*registry.available(), "scale", *VARIANT_CONFIGS})


@pytest.fixture(params=_types())
def method(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> AdapterMethod:
    name = request.param
    if name == "scale" and "scale" not in registry.available():  # the plug-in, unless pip-installed
        monkeypatch.syspath_prepend(str(PLUGIN_SRC))
        monkeypatch.setitem(
            registry._discover(),
            "scale",
            registry.AdapterSource("scale", "peft_framework_scaled_adapter:ScaleMethod", "tests"),
        )
        monkeypatch.delitem(registry._loaded, "scale", raising=False)
    if name in VARIANT_CONFIGS:  # the type's method, carrying the variant's config for config_for
        variant = copy.copy(registry.get(name.partition("[")[0]))
        variant.contract_config = VARIANT_CONFIGS[name]
        return variant
    return registry.get(name)


def config_for(method: AdapterMethod):
    if hasattr(method, "contract_config"):
        return method.contract_config()
    if method.name == "scale":
        return method.config_class(target_modules=["q_proj", "v_proj"], init_scale=1.0)
    return CONFIGS.get(method.name, method.config_class)()


def adapted(method: AdapterMethod, names=("default",), seed: int = 0) -> torch.nn.Module:
    model = base("llama")
    for i, name in enumerate(names):
        method.inject(model, config_for(method), name)
        randomize_trainables(model, seed + i)
    return model


def test_inject_marks_exactly_the_adapter_trainable_and_saves_and_loads_identically(
    method: AdapterMethod, tmp_path: Path
) -> None:
    plain = logits(base("llama"))
    model = base("llama")
    config = config_for(method)
    method.inject(model, config)
    assert method.adapter_names(model) == ["default"] and method.active_adapter(model) == "default"
    state = method.adapter_state_dict(model)
    trainable = {p.data_ptr() for p in model.parameters() if p.requires_grad}
    assert trainable == {t.data_ptr() for t in state.values()}  # the adapter's tensors, nothing of the base
    if method.name != "adalora":  # AdaLoRA starts at Λ = 0, LoRA at B = 0, ...: a fresh adapter is a no-op
        torch.testing.assert_close(logits(model), plain, atol=TOL, rtol=0)
    randomize_trainables(model)
    expected = logits(model)
    assert not torch.allclose(expected, plain, atol=1e-4)
    out = save_adapter(
        model, method, config, tmp_path / "a", base_model_name_or_path="tiny", task_type="causal_lm"
    )
    fresh = base("llama")
    loaded_method, loaded_config = load_adapter(fresh, out)
    assert loaded_method.name == method.name and type(loaded_config) is type(config)
    assert torch.equal(logits(fresh), expected)
    assert n_trainable(fresh) == 0  # loaded for inference


def test_set_active_none_is_the_base_model_and_adapters_switch(method: AdapterMethod) -> None:
    plain = logits(base("llama"))
    single_a = logits(adapted(method, ["a"], seed=0))
    model = adapted(method, ["a", "b"], seed=0)
    assert method.adapter_names(model) == ["a", "b"] and method.active_adapter(model) == "b"
    only_b = logits(model)
    assert not torch.allclose(only_b, single_a, atol=1e-4)
    method.set_active(model, None)
    assert method.active_adapter(model) is None and torch.equal(logits(model), plain)
    method.set_active(model, "a")
    assert torch.equal(logits(model), single_a)
    method.set_active(model, "b")
    assert torch.equal(logits(model), only_b)
    unloaded = method.unload(model)
    assert torch.equal(logits(unloaded), plain)


def test_merge_and_unmerge_round_trip_where_mergeable(method: AdapterMethod) -> None:
    if not method.mergeable:
        pytest.skip(f"{method.name} is not mergeable")
    model = adapted(method)
    expected = logits(model)
    method.merge(model)
    torch.testing.assert_close(logits(model), expected, atol=TOL, rtol=0)
    method.unmerge(model)
    torch.testing.assert_close(logits(model), expected, atol=TOL, rtol=0)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    method.merge(model, exact=True)
    method.unmerge(model)  # exact: the weights as they were, bit for bit
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    method.merge(model)
    merged = method.unload(model)
    torch.testing.assert_close(logits(merged), expected, atol=TOL, rtol=0)


def test_checkpoint_loads_in_peft_with_the_same_logits(method: AdapterMethod, tmp_path: Path) -> None:
    if method.peft_type is None:
        pytest.skip(f"{method.name} is not a peft type")
    model = adapted(method)
    out = save_adapter(
        model,
        method,
        config_for(method),
        tmp_path / "a",
        base_model_name_or_path="tiny",
        task_type="causal_lm",
    )
    theirs = peft.PeftModel.from_pretrained(base("llama"), str(out)).eval()
    torch.testing.assert_close(logits(theirs), logits(model), atol=TOL, rtol=0)
