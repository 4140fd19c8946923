"""Several adapters on one base model: each gives its own outputs, switching back restores them exactly,
the base is never reloaded; weighted LoRA combination; the `generate` CLI entry point."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from peft_framework.adapters import get_adapter, load_adapter, save_adapter
from peft_framework.adapters.lora import LoraConfig, LoraLinear
from peft_framework.errors import AdapterError, UserError
from peft_framework.inference import MultiAdapterModel, generate_cli
from peft_framework.models.tiny import tiny_llama, tiny_tokenizer

X = torch.tensor([[1, 72, 101, 108, 108, 111, 32, 119, 111, 114, 108, 100]])


def _save(root: Path, name: str, config, seed: int) -> Path:
    model = tiny_llama()
    method = get_adapter(config.type)
    method.inject(model, config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, param in model.named_parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=gen) * (0.5 if "lora_B" in pname else 0.2))
    out = root / name
    save_adapter(
        model, method, config, out, base_model_name_or_path="builtin:tiny-llama", task_type="causal_lm"
    )
    return out


@pytest.fixture(scope="module")
def adapter_dirs(tmp_path_factory):
    from peft_framework.adapters.ia3 import IA3Config

    root = tmp_path_factory.mktemp("adapters")
    return {
        "a": _save(root, "a", LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"]), seed=1),
        "b": _save(root, "b", LoraConfig(r=2, alpha=4, target_modules=["q_proj", "o_proj"]), seed=2),
        # IA3 on modules no LoRA adapter wraps (one module cannot carry adapters of two types)
        "c": _save(
            root,
            "c",
            IA3Config(target_modules=["k_proj", "up_proj"], feedforward_modules=["up_proj"]),
            seed=3,
        ),
    }


@torch.no_grad()
def single_adapter_logits(adapter_dir: Path | None) -> torch.Tensor:
    model = tiny_llama()
    if adapter_dir is not None:
        load_adapter(model, adapter_dir)
    return model(input_ids=X).logits


@pytest.fixture(scope="module")
def multi(adapter_dirs):
    model = MultiAdapterModel.from_base("builtin:tiny-llama")
    for name, directory in adapter_dirs.items():
        model.load_adapter(name, directory)
    return model


def test_each_adapter_gives_its_own_outputs_and_switching_back_is_exact(multi, adapter_dirs):
    base_weights = {id(p) for p in multi.model.parameters()}
    first = {name: multi.logits(X, adapter=name) for name in ("a", "b", "c")}
    base = multi.logits(X, adapter=None)
    for name, directory in adapter_dirs.items():  # the same as that adapter alone on a fresh base
        torch.testing.assert_close(first[name], single_adapter_logits(directory), atol=1e-5, rtol=0)
    torch.testing.assert_close(base, single_adapter_logits(None), atol=0, rtol=0)
    assert all(not torch.allclose(first[n], base, atol=1e-3) for n in first)
    assert not torch.allclose(first["a"], first["b"], atol=1e-3)
    # switch around in another order: bit-identical results, nothing reloaded or merged
    for name in ("c", "a", None, "b", "a", "c", None):
        again = multi.logits(X, adapter=name)
        assert torch.equal(again, base if name is None else first[name]), name
    assert {id(p) for p in multi.model.parameters()} == base_weights
    assert multi.adapters == ["a", "b", "c"]


def test_generate_per_call_adapter(multi):
    model = tiny_llama()
    tokenizer = tiny_tokenizer()
    a = multi.generate("Hello", adapter="a", max_new_tokens=5)
    base = multi.generate("Hello", max_new_tokens=5)
    assert multi.generate(["Hello"], adapter="a", max_new_tokens=5) == [a]
    ids = tokenizer("Hello", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=5, do_sample=False, eos_token_id=2, pad_token_id=0)[
            0, ids.shape[1] :
        ]
    expected = out.tolist()[: out.tolist().index(2)] if 2 in out.tolist() else out.tolist()
    assert base == tokenizer.decode(expected, skip_special_tokens=True).strip()
    assert multi.generate("Hello", adapter="base", max_new_tokens=5) == base
    chat = multi.generate("Hello", adapter="a", max_new_tokens=5, chat=True)
    assert isinstance(chat, str)


def test_unknown_and_duplicate_names_are_user_errors(multi, adapter_dirs):
    with pytest.raises(UserError, match="no adapter named 'zzz'.*a, b, c"):
        multi.logits(X, adapter="zzz")
    with pytest.raises(UserError, match="already used"):
        multi.load_adapter("a", adapter_dirs["a"])
    with pytest.raises(UserError, match="reserved"):
        multi.load_adapter("base", adapter_dirs["a"])


def test_weighted_lora_combination(adapter_dirs, tmp_path):
    multi = MultiAdapterModel.from_base("builtin:tiny-llama")
    for name in ("a", "b"):
        multi.load_adapter(name, adapter_dirs[name])
    multi.combine({"a": 0.25, "b": 0.75}, "mix")
    multi.combine({"a": 1.0}, "only_a")
    torch.testing.assert_close(
        multi.logits(X, adapter="only_a"), multi.logits(X, adapter="a"), atol=1e-5, rtol=0
    )
    # the combined update of every layer is exactly the weighted sum of the two updates
    for module in multi.model.modules():
        if isinstance(module, LoraLinear) and "mix" in module.lora_A:
            parts = [w * module.delta_weight(n) for n, w in (("a", 0.25), ("b", 0.75)) if n in module.lora_A]
            torch.testing.assert_close(module.delta_weight("mix"), sum(parts), atol=1e-6, rtol=0)
    assert not any(p.requires_grad for p in multi.model.parameters())
    multi.load_adapter("c", adapter_dirs["c"])
    with pytest.raises(AdapterError, match=r"only LoRA adapters can be combined; \['c'\] are \['ia3'\]"):
        multi.combine({"a": 0.5, "c": 0.5}, "bad")
    # a combination saves as an ordinary adapter and loads back with the same outputs
    saved = multi.save_adapter("mix", tmp_path / "combined")
    torch.testing.assert_close(
        single_adapter_logits(saved), multi.logits(X, adapter="mix"), atol=1e-5, rtol=0
    )


def test_generate_cli(adapter_dirs):
    dirs = {n: str(adapter_dirs[n]) for n in ("a", "b")}
    with_a = generate_cli("builtin:tiny-llama", dirs, "a", ["Hello", "x"], 4)
    multi = MultiAdapterModel.from_base("builtin:tiny-llama")
    multi.load_adapter("a", adapter_dirs["a"])
    assert with_a == multi.generate(["Hello", "x"], adapter="a", max_new_tokens=4)
    assert (
        generate_cli("builtin:tiny-llama", {"a": dirs["a"]}, None, ["Hello"], 4) == with_a[:1]
    )  # the only one
    assert generate_cli("builtin:tiny-llama", {}, None, ["Hello"], 4) == [
        multi.generate("Hello", max_new_tokens=4)
    ]
    with pytest.raises(UserError, match="choose one with --use"):
        generate_cli("builtin:tiny-llama", dirs, None, ["Hello"], 4)
    with pytest.raises(UserError, match="allowed: a, b, base"):
        generate_cli("builtin:tiny-llama", dirs, "zzz", ["Hello"], 4)
