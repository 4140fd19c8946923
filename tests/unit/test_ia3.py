"""(IA)³ against HuggingFace peft (the oracle, test-only): same weights -> same logits, same trainable
parameters, default targets per architecture, input-side vectors for feed-forward modules, checkpoints
both ways, merge/unmerge."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import peft
import pytest
import torch
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file

import tiny_models as tiny
from peft_framework.adapters import get_adapter, load_adapter, registry, save_adapter
from peft_framework.adapters.ia3 import IA3Config, IA3Linear, IA3Method
from peft_framework.errors import AdapterError
from tiny_models import base as tiny_base
from tiny_models import logits, n_trainable

TOL = 1e-5


TASKS = {"llama": "CAUSAL_LM", "gpt2": "CAUSAL_LM", "bert": "SEQ_CLS"}
#: (our config, peft's IA3Config kwargs) - null targets mean the architecture's default on both sides
CASES = {
    "llama-default": ("llama", IA3Config(), {}),
    "gpt2-default": ("gpt2", IA3Config(), {}),
    "bert-default": ("bert", IA3Config(), {}),
    "llama-explicit": (
        "llama",
        IA3Config(
            target_modules=["q_proj", "v_proj", "up_proj", "down_proj"],
            feedforward_modules=["up_proj", "down_proj"],
        ),
        dict(
            target_modules=["q_proj", "v_proj", "up_proj", "down_proj"],
            feedforward_modules=["up_proj", "down_proj"],
        ),
    ),
    "llama-regex": (
        "llama",
        IA3Config(target_modules=r".*\.(k_proj|gate_proj)", feedforward_modules=r".*gate_proj"),
        dict(target_modules=r".*\.(k_proj|gate_proj)", feedforward_modules=r".*gate_proj"),
    ),
}


def base(kind: str) -> torch.nn.Module:
    return tiny_base(kind)


def randomize_trainables(model: torch.nn.Module, seed: int = 0) -> None:
    """IA3 vectors scale: around 1, not 0."""
    tiny.randomize_trainables(model, seed, center=1.0, std=0.5)


def peft_model(case: str) -> peft.PeftModel:
    kind, _, kwargs = CASES[case]
    return peft.get_peft_model(base(kind), peft.IA3Config(task_type=TASKS[kind], **kwargs))


def save(model: torch.nn.Module, cfg: IA3Config, out: Path, kind: str) -> Path:
    task = "sequence_classification" if kind == "bert" else "causal_lm"
    return save_adapter(model, get_adapter("ia3"), cfg, out, base_model_name_or_path="tiny", task_type=task)


def test_registered() -> None:
    method = registry.get("ia3")
    assert isinstance(method, IA3Method) and method.peft_type == "IA3" and method.mergeable
    assert registry.by_peft_type("IA3") is method


@pytest.mark.parametrize("case", list(CASES))
def test_same_weights_same_logits_and_trainable_count_as_peft(case: str) -> None:
    kind, cfg, _ = CASES[case]
    theirs = peft_model(case)
    ours = base(kind)
    method = get_adapter("ia3")
    method.inject(ours, cfg)
    assert n_trainable(ours) == theirs.get_nb_trainable_parameters()[0]
    assert torch.equal(logits(ours), logits(base(kind)))  # vectors start at ones
    state = get_peft_model_state_dict(theirs)
    assert set(state) == set(method.adapter_state_dict(ours))
    assert {k: v.shape for k, v in state.items()} == {
        k: v.shape for k, v in method.adapter_state_dict(ours).items()
    }
    randomize_trainables(theirs)
    method.load_adapter_state_dict(ours, get_peft_model_state_dict(theirs))
    diff = (logits(ours) - logits(theirs.eval())).abs().max().item()
    assert diff <= TOL, diff
    assert (logits(ours) - logits(base(kind))).abs().max().item() > 1e-3


def test_llama_defaults_scale_keys_values_outputs_and_down_proj_inputs() -> None:
    model = base("llama")
    get_adapter("ia3").inject(model, IA3Config())
    adapted = {p: m for p, m in model.named_modules() if isinstance(m, IA3Linear)}
    assert sorted(p.rsplit(".", 1)[1] for p in adapted if ".0." in p) == ["down_proj", "k_proj", "v_proj"]
    attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    assert attn.k_proj.ia3_l["default"].shape == (attn.k_proj.out_features, 1)  # output side
    assert not attn.k_proj.is_feedforward["default"]
    assert mlp.down_proj.ia3_l["default"].shape == (1, mlp.down_proj.in_features)  # input side
    assert mlp.down_proj.is_feedforward["default"]
    assert all(bool((m.ia3_l["default"] == 1).all()) for m in adapted.values())


def test_gpt2_conv1d_vectors_and_defaults() -> None:
    model = base("gpt2")
    get_adapter("ia3").inject(model, IA3Config())
    block = model.transformer.h[0]
    assert isinstance(block.attn.c_attn, IA3Linear) and block.attn.c_attn.fan_in_fan_out
    assert block.attn.c_attn.ia3_l["default"].shape == (96, 1)
    assert block.mlp.c_proj.ia3_l["default"].shape == (1, 128)  # feed-forward: input side
    assert not isinstance(block.attn.c_proj, IA3Linear)  # 'mlp.c_proj' does not select attn.c_proj


@pytest.mark.parametrize("case", ["llama-default", "gpt2-default", "bert-default", "llama-regex"])
def test_checkpoints_load_both_ways(case: str, tmp_path: Path) -> None:
    kind, cfg, _ = CASES[case]
    theirs = peft_model(case)
    randomize_trainables(theirs, seed=2)
    ours = base(kind)
    method = get_adapter("ia3")
    method.inject(ours, cfg)
    method.load_adapter_state_dict(ours, get_peft_model_state_dict(theirs))
    out = save(ours, cfg, tmp_path / "ours", kind)
    saved = json.loads((out / "adapter_config.json").read_text())
    assert saved["peft_type"] == "IA3" and saved["inference_mode"] is True
    assert set(saved) <= set(peft.IA3Config.__dataclass_fields__)
    loaded = peft.PeftModel.from_pretrained(base(kind), out).eval()
    assert (logits(loaded) - logits(ours)).abs().max().item() <= TOL
    theirs.save_pretrained(tmp_path / "peft")
    fresh = base(kind)
    method_loaded, loaded_cfg = load_adapter(fresh, tmp_path / "peft")
    assert method_loaded.name == "ia3" and loaded_cfg.init_ia3_weights is True
    assert (logits(fresh) - logits(theirs.eval())).abs().max().item() <= TOL
    if kind == "bert":  # the classifier head is trained and saved too, as peft does for SEQ_CLS
        assert "base_model.model.classifier.weight" in load_file(str(out / "adapter_model.safetensors"))


def test_saved_config_lists_targets_and_feedforward_modules(tmp_path: Path) -> None:
    cfg = IA3Config()
    model = base("llama")
    get_adapter("ia3").inject(model, cfg)
    saved = json.loads((save(model, cfg, tmp_path / "a", "llama") / "adapter_config.json").read_text())
    assert saved["target_modules"] == ["down_proj", "k_proj", "v_proj"]
    assert saved["feedforward_modules"] == ["down_proj"] and saved["fan_in_fan_out"] is False
    # all-linear with a feed-forward name that is not a target name: written so that peft selects the same
    cfg = IA3Config(target_modules="all-linear", feedforward_modules=["mlp.down_proj"])
    model = base("llama")
    get_adapter("ia3").inject(model, cfg)
    out = save(model, cfg, tmp_path / "b", "llama")
    saved = json.loads((out / "adapter_config.json").read_text())
    ff = saved["feedforward_modules"]
    assert isinstance(ff, str) and all(re.fullmatch(ff, f"model.layers.{i}.mlp.down_proj") for i in (0, 1))
    loaded = peft.PeftModel.from_pretrained(base("llama"), out)
    ff_layers = [n for n, m in loaded.named_modules() if getattr(m, "is_feedforward", False)]
    assert len(ff_layers) == 2 and all(n.endswith("mlp.down_proj") for n in ff_layers)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_merge_unmerge_and_exact_unmerge(kind: str) -> None:
    model = base(kind)
    method = get_adapter("ia3")
    method.inject(model, IA3Config())
    randomize_trainables(model, seed=4)
    before = logits(model)
    method.merge(model)
    assert (logits(model) - before).abs().max().item() <= TOL
    method.unmerge(model)  # divides by the vector (peft's way): close, not exact
    assert (logits(model) - before).abs().max().item() <= TOL
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if "base_layer" in n}
    method.merge(model, exact=True)
    assert not all(torch.equal(p, weights[n]) for n, p in model.named_parameters() if n in weights)
    method.unmerge(model)
    assert all(torch.equal(p, weights[n]) for n, p in model.named_parameters() if n in weights)
    method.merge(model)
    plain = method.unload(model)
    assert not any(isinstance(m, IA3Linear) for m in plain.modules())
    assert (logits(plain) - before).abs().max().item() <= TOL


def test_two_adapters_switch() -> None:
    model = base("llama")
    method = get_adapter("ia3")
    method.inject(model, IA3Config(), "a")
    randomize_trainables(model, seed=1)
    out_a = logits(model)
    method.inject(model, IA3Config(target_modules=["v_proj"], feedforward_modules=[]), "b")
    randomize_trainables(model, seed=2)
    out_b = logits(model)
    method.set_active(model, "a")
    assert torch.equal(logits(model), out_a) and not torch.equal(out_a, out_b)
    method.set_active(model, None)
    assert torch.equal(logits(model), logits(base("llama")))


def test_feedforward_modules_must_be_a_subset_of_targets() -> None:
    with pytest.raises(
        ValueError, match=r"feedforward_modules: \['down_proj'\] are not in adapter.target_modules"
    ):
        IA3Config(target_modules=["k_proj"], feedforward_modules=["down_proj"])


def test_unknown_architecture_without_targets_is_a_clear_error() -> None:
    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(4, 4)

    with pytest.raises(AdapterError, match="null has no default for model type None"):
        get_adapter("ia3").inject(Tiny(), IA3Config())
    with pytest.raises(AdapterError, match="feedforward_modules: null has no default"):
        get_adapter("ia3").inject(Tiny(), IA3Config(target_modules=["proj"]))
    model = Tiny()
    get_adapter("ia3").inject(model, IA3Config(target_modules=["proj"], feedforward_modules=[]))
    assert model.proj.ia3_l["default"].shape == (4, 1)
