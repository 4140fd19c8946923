"""Adapter checkpoints in HuggingFace peft's format: ours load in peft, peft's load here, strictly, and
nothing is ever pickled."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import pickle
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import peft
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import (
    LlamaConfig,
    LlamaForSequenceClassification,
)

from peft_framework.adapters import get_adapter, load_adapter, save_adapter
from peft_framework.adapters.lora import LoraConfig, LoraLinear
from peft_framework.errors import AdapterError
from tiny_models import base as tiny_base
from tiny_models import logits, randomize_trainables

TOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_torch_thread")


LLAMA_NAME = "tiny-llama-from-config"


def base(kind: str = "llama") -> torch.nn.Module:
    return tiny_base(kind, **({"hidden": 64} if kind == "llama" else {}))


def trained(kind: str, cfg: LoraConfig, name: str = "default") -> torch.nn.Module:
    model = base(kind)
    get_adapter("lora").inject(model, cfg, name)
    randomize_trainables(model)
    return model


def save(model, cfg, out, *, name="default", task_type="causal_lm") -> Path:
    return save_adapter(
        model,
        get_adapter("lora"),
        cfg,
        out,
        base_model_name_or_path=LLAMA_NAME,
        task_type=task_type,
        adapter_name=name,
    )


CASES = {
    "list": ("llama", LoraConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"])),
    "all-linear-rslora": ("llama", LoraConfig(r=4, alpha=6, use_rslora=True, dropout=0.05)),
    "regex": ("llama", LoraConfig(r=2, alpha=4, target_modules=r".*layers\.1\.mlp\.(gate|up)_proj")),
    "full-path-list": ("llama", LoraConfig(r=2, alpha=4, target_modules=["layers.0.self_attn.q_proj"])),
    # matches non-linear modules too (peft would try to wrap those): saved as the list of adapted paths
    "regex-overbroad": ("llama", LoraConfig(r=2, alpha=4, target_modules=r"model\.layers\.0\..*")),
    "exclude-bias-all-head": (
        "llama",
        LoraConfig(
            r=4,
            alpha=8,
            target_modules="all-linear",
            exclude_modules=["o_proj"],
            bias="all",
            modules_to_save=["lm_head"],
            init="gaussian",
        ),
    ),
    "gpt2-all-linear-lora_only": ("gpt2", LoraConfig(r=4, alpha=8, bias="lora_only")),
}


@pytest.mark.parametrize("case", list(CASES))
def test_our_adapter_loads_in_peft_with_equal_logits(case: str, tmp_path: Path) -> None:
    kind, cfg = CASES[case]
    model = trained(kind, cfg)
    out = save(model, cfg, tmp_path / "adapter")
    theirs = peft.PeftModel.from_pretrained(base(kind), out).eval()
    diff = (logits(theirs) - logits(model)).abs().max().item()
    assert diff <= TOL, f"{case}: {diff}"
    assert (logits(model) - logits(base(kind))).abs().max().item() > 1e-3
    # and it comes back here too, into a fresh base model
    fresh = base(kind)
    _, loaded_cfg = load_adapter(fresh, out)
    assert (logits(fresh) - logits(model)).abs().max().item() <= TOL
    assert loaded_cfg.r == cfg.r and loaded_cfg.bias == cfg.bias and loaded_cfg.use_rslora == cfg.use_rslora
    assert not any(p.requires_grad for p in fresh.parameters())  # loaded for inference by default


@pytest.mark.parametrize(
    "case", ["list", "all-linear-rslora", "exclude-bias-all-head", "gpt2-all-linear-lora_only"]
)
def test_peft_saved_adapter_loads_here_with_equal_logits(case: str, tmp_path: Path) -> None:
    kind, cfg = CASES[case]
    theirs = peft.get_peft_model(
        base(kind),
        peft.LoraConfig(
            r=cfg.r,
            lora_alpha=cfg.alpha,
            lora_dropout=cfg.dropout,
            use_rslora=cfg.use_rslora,
            bias=cfg.bias,
            target_modules=cfg.target_modules or "all-linear",
            exclude_modules=cfg.exclude_modules,
            modules_to_save=cfg.modules_to_save,
            task_type="CAUSAL_LM",
        ),
    )
    randomize_trainables(theirs)
    theirs.save_pretrained(tmp_path / "peft")
    ours = base(kind)
    method, loaded = load_adapter(ours, tmp_path / "peft")
    assert method.name == "lora" and loaded.r == cfg.r
    diff = (logits(ours) - logits(theirs.eval())).abs().max().item()
    assert diff <= TOL, f"{case}: {diff}"


def test_adapter_config_json_is_peft_s(tmp_path: Path) -> None:
    cfg = LoraConfig(r=4, alpha=8, target_modules="all-linear", modules_to_save=["lm_head"])
    out = save(trained("llama", cfg), cfg, tmp_path / "a")
    text = (out / "adapter_config.json").read_text()
    saved = json.loads(text)
    assert text == json.dumps(saved, indent=2, sort_keys=True) + "\n"
    peft_keys = {f.name for f in dataclasses.fields(peft.LoraConfig)}
    assert set(saved) <= peft_keys, sorted(set(saved) - peft_keys)
    assert (
        saved["peft_type"] == "LORA" and saved["task_type"] == "CAUSAL_LM" and saved["inference_mode"] is True
    )
    assert saved["base_model_name_or_path"] == LLAMA_NAME
    assert (saved["r"], saved["lora_alpha"], saved["lora_dropout"]) == (4, 8, 0.0)
    assert saved["target_modules"] == [
        "down_proj",
        "gate_proj",
        "k_proj",
        "o_proj",
        "q_proj",
        "up_proj",
        "v_proj",
    ]
    assert saved["modules_to_save"] == ["lm_head"] and saved["init_lora_weights"] is True
    assert saved["bias"] == "none" and saved["use_rslora"] is False and saved["fan_in_fan_out"] is False
    with safe_open(str(out / "adapter_model.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt"}
        keys = set(f.keys())
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in keys
    assert "base_model.model.model.layers.1.mlp.down_proj.lora_B.weight" in keys
    assert "base_model.model.lm_head.weight" in keys
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]


def test_saved_target_modules_select_exactly_the_adapted_layers(tmp_path: Path) -> None:
    expect = {
        "list": ["q_proj", "v_proj"],
        "regex": r".*layers\.1\.mlp\.(gate|up)_proj",
        "full-path-list": ["model.layers.0.self_attn.q_proj"],  # 'q_proj' alone would select layer 1 too
        "regex-overbroad": [
            f"model.layers.0.{m}"
            for m in (
                "mlp.down_proj",
                "mlp.gate_proj",
                "mlp.up_proj",
                "self_attn.k_proj",
                "self_attn.o_proj",
                "self_attn.q_proj",
                "self_attn.v_proj",
            )
        ],
    }
    for case, target_modules in expect.items():
        kind, cfg = CASES[case]
        out = save(trained(kind, cfg), cfg, tmp_path / case)
        assert json.loads((out / "adapter_config.json").read_text())["target_modules"] == target_modules
    kind, cfg = CASES["gpt2-all-linear-lora_only"]
    gpt2 = json.loads((save(trained(kind, cfg), cfg, tmp_path / "g") / "adapter_config.json").read_text())
    assert gpt2["target_modules"] == ["c_attn", "c_fc", "c_proj"] and gpt2["fan_in_fan_out"] is True


def test_non_default_adapter_goes_to_a_subfolder_like_peft(tmp_path: Path) -> None:
    cfg = LoraConfig(r=4, target_modules=["q_proj"])
    model = trained("llama", cfg, name="math")
    out = save(model, cfg, tmp_path / "adapters", name="math")
    assert out == tmp_path / "adapters" / "math"
    fresh = base()
    load_adapter(fresh, tmp_path / "adapters", adapter_name="math")
    assert torch.equal(logits(fresh), logits(model))
    theirs = peft.PeftModel.from_pretrained(base(), out, adapter_name="math").eval()
    assert (logits(theirs) - logits(model)).abs().max().item() <= TOL


def test_peft_multi_adapter_save_loads_by_name(tmp_path: Path) -> None:
    theirs = peft.get_peft_model(base(), peft.LoraConfig(r=2, target_modules=["q_proj"]))
    theirs.add_adapter("other", peft.LoraConfig(r=4, target_modules=["v_proj"]))
    theirs.base_model.set_adapter("other")
    randomize_trainables(theirs)
    theirs.save_pretrained(tmp_path / "multi")
    assert (tmp_path / "multi" / "other" / "adapter_config.json").is_file()
    ours = base()
    _, cfg = load_adapter(ours, tmp_path / "multi", adapter_name="other")
    assert cfg.r == 4
    assert (logits(ours) - logits(theirs.eval())).abs().max().item() <= TOL


def test_refuses_adapters_with_all_zero_a_or_empty_tensors(tmp_path: Path) -> None:
    cfg = LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
    model = base()
    get_adapter("lora").inject(model, cfg)
    save(model, cfg, tmp_path / "fresh")  # B = 0 before training is legitimate
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LoraLinear):
                module.lora_A["default"].weight.zero_()
    with pytest.raises(AdapterError, match="all zeros"):
        save(model, cfg, tmp_path / "zero")
    assert not (tmp_path / "zero" / "adapter_config.json").exists()
    # ZeRO-3 without gathering: parameters are empty placeholders
    sharded = base()
    get_adapter("lora").inject(sharded, cfg)
    sharded.model.layers[0].self_attn.q_proj.lora_B["default"].weight.data = torch.empty(0)
    with pytest.raises(AdapterError, match="empty tensors"):
        save(sharded, cfg, tmp_path / "empty")
    assert not (tmp_path / "empty" / "adapter_config.json").exists()


def test_loading_is_strict_about_tensor_keys_and_shapes(tmp_path: Path) -> None:
    cfg = LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
    out = save(trained("llama", cfg), cfg, tmp_path / "a")
    weights = out / "adapter_model.safetensors"
    state = load_file(str(weights))
    dropped = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"
    extra = "base_model.model.model.layers.0.mlp.up_proj.lora_A.weight"
    save_file({**{k: v for k, v in state.items() if k != dropped}, extra: torch.ones(4, 64)}, str(weights))
    with pytest.raises(AdapterError) as err:
        load_adapter(base(), out)
    assert f"missing: {dropped}" in str(err.value) and f"unexpected: {extra}" in str(err.value)
    bad_shape = dict(state)
    bad_shape[dropped] = torch.ones(32, 3)
    save_file(bad_shape, str(weights))
    with pytest.raises(AdapterError, match=r"(?s)shapes.*file \(32, 3\), model \(32, 4\)"):
        load_adapter(base(), out)


def test_unsupported_peft_features_are_refused_by_name(tmp_path: Path) -> None:
    cfg = LoraConfig(r=4, target_modules=["q_proj"])
    out = save(trained("llama", cfg), cfg, tmp_path / "a")
    saved = json.loads((out / "adapter_config.json").read_text())
    for key, value in (("init_lora_weights", "pissa"), ("layers_to_transform", [0])):
        (out / "adapter_config.json").write_text(json.dumps({**saved, key: value}))
        with pytest.raises(AdapterError, match=key):
            load_adapter(base(), out)
    (out / "adapter_config.json").write_text(json.dumps({**saved, "peft_type": "PREFIX_TUNING"}))
    with pytest.raises(AdapterError, match="PREFIX_TUNING.*LORA"):
        load_adapter(base(), out)


def test_missing_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(AdapterError, match="adapter_config.json"):
        load_adapter(base(), tmp_path)
    cfg = LoraConfig(r=4, target_modules=["q_proj"])
    out = save(trained("llama", cfg), cfg, tmp_path / "a")
    (out / "adapter_model.safetensors").unlink()
    (out / "adapter_model.bin").write_bytes(b"not loaded")
    with pytest.raises(AdapterError, match="never loaded"):
        load_adapter(base(), out)


def test_resave_keeps_other_files_and_never_pickles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args, **kwargs):
        raise AssertionError("pickle used")

    monkeypatch.setattr(torch, "save", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "dump", forbidden)
    monkeypatch.setattr(pickle, "dumps", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    cfg = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], modules_to_save=["lm_head"])
    out_dir = tmp_path / "run"
    out_dir.mkdir()
    (out_dir / "manifest.json").write_text("{}")
    first = trained("llama", cfg)
    save(first, cfg, out_dir)
    second = base()
    get_adapter("lora").inject(second, cfg)
    randomize_trainables(second, seed=5)
    save(second, cfg, out_dir)  # overwrite in place
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "manifest.json",
    ]
    fresh = base()
    load_adapter(fresh, out_dir)
    assert torch.equal(logits(fresh), logits(second))
    pickles = [
        p for p in tmp_path.rglob("*") if p.suffix in {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}
    ]
    assert pickles == []


def test_sequence_classification_head_is_trained_and_saved_like_peft(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg_hf = LlamaConfig(
        vocab_size=100,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_labels=3,
        pad_token_id=0,
    )
    classifier = LlamaForSequenceClassification(cfg_hf).eval()
    model = copy.deepcopy(classifier)
    cfg = LoraConfig(r=4, target_modules="all-linear")
    get_adapter("lora").inject(model, cfg)
    assert model.score.modules_to_save["default"].weight.requires_grad  # the new head trains, as in peft
    assert not any(
        ".score." in n and "modules_to_save" not in n for n, p in model.named_parameters() if p.requires_grad
    )
    randomize_trainables(model)
    out = save(model, cfg, tmp_path / "cls", task_type="sequence_classification")
    saved = json.loads((out / "adapter_config.json").read_text())
    assert saved["task_type"] == "SEQ_CLS" and saved["modules_to_save"] == ["score"]
    assert "q_proj" in saved["target_modules"] and "score" not in saved["target_modules"]
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(classifier), out).eval()
    assert (logits(theirs) - logits(model)).abs().max().item() <= TOL
    assert (logits(model) - logits(classifier)).abs().max().item() > 1e-3


def test_several_saved_adapters_load_side_by_side_and_combine(tmp_path: Path) -> None:
    from peft_framework.adapters.lora import combine_adapters

    method = get_adapter("lora")
    cfg_a = LoraConfig(r=4, alpha=8, target_modules="all-linear", modules_to_save=["lm_head"])
    cfg_b = LoraConfig(r=2, alpha=4, target_modules=["q_proj", "v_proj"], bias="none")
    single_a, single_b = trained("llama", cfg_a), trained("llama", cfg_b)
    save(single_a, cfg_a, tmp_path / "a")
    save(single_b, cfg_b, tmp_path / "b")
    model = base()
    load_adapter(model, tmp_path / "a", adapter_name="a")
    load_adapter(model, tmp_path / "b", adapter_name="b")  # targets found through the existing LoRA layers
    assert method.adapter_names(model) == ["a", "b"]
    assert torch.equal(logits(model), logits(single_b))
    method.set_active(model, "a")
    assert torch.equal(logits(model), logits(single_a))
    # a combination saves like any adapter, and peft reads it
    mix_cfg = combine_adapters(model, {"a": 0.5, "b": 0.5}, "mix")
    mixed = logits(model)
    assert not torch.equal(mixed, logits(single_a))
    out = save(model, mix_cfg, tmp_path, name="mix")
    assert out == tmp_path / "mix"
    theirs = peft.PeftModel.from_pretrained(base(), out).eval()
    assert (logits(theirs) - mixed).abs().max().item() <= TOL
