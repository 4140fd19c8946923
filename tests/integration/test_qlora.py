"""Quantized bases (QLoRA) on CPU: bitsandbytes 0.50 runs 4- and 8-bit layers without a GPU.

HuggingFace peft is the oracle: the same 4-bit tiny Llama with peft's LoRA gives the same logits as ours;
an adapter trained here on a 4-bit base loads in peft on that base and on the unquantized one; the train
stage lowers the loss on a 4-bit base and export merges into the unquantized base with a passing parity
check. Tests that need CUDA run only where one exists.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

pytest.importorskip("bitsandbytes")
peft = pytest.importorskip("peft")

from tests.integration.test_train import _pairs, base_eval_loss, write_prepared

from peft_framework.adapters import get_adapter, load_adapter
from peft_framework.adapters.lora import LoraConfig
from peft_framework.config.schema import Config, ModelConfig, TrainConfig
from peft_framework.errors import AdapterError
from peft_framework.export import export
from peft_framework.models.loading import load_base_model
from peft_framework.training import train

FOUR_BIT = ModelConfig(quantization={"bits": 4})
IDS = torch.tensor(
    [[1, 72, 101, 108, 108, 111, 44, 32, 119, 111], [1, 84, 104, 101, 32, 99, 97, 116, 115, 33]]
)


def _randomize(model: torch.nn.Module, seed: int = 3) -> None:
    """As if trained: every trainable tensor moved off its initialisation (LoRA B is zero at init)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad:
                param.add_(
                    torch.randn(param.shape, generator=gen).to(param.device)
                    * (0.3 if "lora_B" in name else 0.05)
                )


def _is_bnb(module: torch.nn.Module, bits: int) -> bool:
    import bitsandbytes as bnb

    return isinstance(module, bnb.nn.Linear4bit if bits == 4 else bnb.nn.Linear8bitLt)


# ------------------------------------------------------------------------------------ layers vs peft
PEFT_CONFIGS = {
    "lora": (
        {"type": "lora", "r": 4, "alpha": 8, "target_modules": "all-linear"},
        lambda: peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"),
    ),
    "ia3": (
        {
            "type": "ia3",
            "target_modules": ["k_proj", "v_proj", "down_proj"],
            "feedforward_modules": ["down_proj"],
        },
        lambda: peft.IA3Config(
            target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"]
        ),
    ),
}


@pytest.mark.parametrize(("bits", "adapter_type"), [(4, "lora"), (8, "lora"), (4, "ia3")])
def test_our_adapter_equals_peft_on_the_same_quantized_base(bits: int, adapter_type: str) -> None:
    ours_config, peft_config = PEFT_CONFIGS[adapter_type]
    model_config = ModelConfig(quantization={"bits": bits})
    ours = load_base_model(model_config)
    assert _is_bnb(ours.model.layers[0].self_attn.v_proj, bits)
    method = get_adapter(adapter_type)
    config = method.config_class(**ours_config)
    method.inject(ours, config)
    _randomize(ours)
    wrapped = ours.model.layers[0].self_attn.v_proj
    assert _is_bnb(wrapped.base_layer, bits) and wrapped.in_features == 64
    reference = peft.get_peft_model(load_base_model(model_config), peft_config())
    result = peft.set_peft_model_state_dict(reference, method.adapter_state_dict(ours))
    assert not result.unexpected_keys
    with torch.no_grad():
        mine, theirs = ours(IDS).logits, reference(IDS).logits
    assert torch.allclose(mine, theirs, atol=1e-5, rtol=0), float((mine - theirs).abs().max())
    # the adapter changed the output, and the adapter's tensors stay fp32 over the packed weights
    assert all(p.dtype == torch.float32 for p in ours.parameters() if p.requires_grad)


def test_the_fused_path_steps_aside_on_a_quantized_base_and_says_why_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import logging

    from peft_framework.adapters.lora import fast

    model = load_base_model(FOUR_BIT)
    get_adapter("lora").inject(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    fast._REPORTED.clear()
    with caplog.at_level(logging.DEBUG, logger=fast.__name__), torch.no_grad():
        for _ in range(2):
            model(IDS)
    lines = [r.getMessage() for r in caplog.records if r.name == fast.__name__]
    # four wrapped layers, two forwards: one line, naming the base's type
    assert len(lines) == 1 and "Linear4bit" in lines[0], lines


def test_nothing_merges_into_a_quantized_weight() -> None:
    model = load_base_model(FOUR_BIT)
    method = get_adapter("lora")
    method.inject(model, LoraConfig(r=4, target_modules=["q_proj"]))
    with pytest.raises(AdapterError, match="quantized .*merge into the unquantized base|unquantized base"):
        method.merge(model)


def test_kbit_preparation_freezes_the_base_and_keeps_norms_in_fp32() -> None:
    from peft_framework.training.kbit import prepare_kbit_training

    model = load_base_model(ModelConfig(dtype="bfloat16", quantization={"bits": 4}))
    assert model.model.norm.weight.dtype == torch.bfloat16
    assert prepare_kbit_training(model, gradient_checkpointing=True)
    assert model.model.norm.weight.dtype == torch.float32
    assert model.model.embed_tokens.weight.dtype == torch.float32
    assert model.lm_head.weight.dtype == torch.float32
    assert not any(p.requires_grad for p in model.parameters())
    assert model.model.layers[0].self_attn.q_proj.weight.dtype == torch.uint8  # packed 4-bit, untouched
    embedded = model.get_input_embeddings()(IDS)
    assert embedded.requires_grad  # gradients reach adapters through checkpointed blocks
    assert not prepare_kbit_training(load_base_model(ModelConfig()), gradient_checkpointing=True)


# ------------------------------------------------------------------------------------- stages, peft load
@pytest.fixture(scope="module")
def qlora_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Config, dict]:
    """One QLoRA run of the real train stage: 4-bit nf4 base, LoRA, gradient checkpointing."""
    root = tmp_path_factory.mktemp("qlora")
    write_prepared(
        root / "data/prepared", {"train": _pairs(64, 1), "validation": _pairs(16, 2), "test": _pairs(8, 3)}
    )
    config = Config(
        model=FOUR_BIT,
        adapter=LoraConfig(r=8, alpha=16, target_modules="all-linear"),
        train=TrainConfig(
            max_steps=16,
            batch_size=8,
            learning_rate=1e-2,
            logging_steps=4,
            save_steps=100,
            report_to="none",
            gradient_checkpointing=True,
        ),
    )
    return root, config, train(config, root)


@pytest.mark.slow
def test_training_on_a_4bit_base_lowers_the_held_out_loss(qlora_run) -> None:
    root, config, summary = qlora_run
    manifest = json.loads((root / config.train.output_dir / "manifest.json").read_text())
    assert manifest["config"]["model"]["quantization"]["bits"] == 4
    assert summary["global_step"] == 16
    # the unquantized tiny Llama's held-out loss is ~ln(259); the 4-bit base + trained LoRA is far below it
    assert summary["eval_loss"] < 0.6 * base_eval_loss(root), (summary["eval_loss"], base_eval_loss(root))


@pytest.mark.slow
@pytest.mark.parametrize("bits", [4, None], ids=["on-the-4bit-base", "on-the-unquantized-base"])
def test_peft_loads_the_qlora_adapter(qlora_run, bits: int | None) -> None:
    root, config, _ = qlora_run
    model_config = ModelConfig(quantization={"bits": bits})
    reference = peft.PeftModel.from_pretrained(
        load_base_model(model_config), str(root / config.train.output_dir)
    )
    ours = load_base_model(model_config)
    load_adapter(ours, root / config.train.output_dir)
    with torch.no_grad():
        theirs, mine = reference(IDS).logits, ours(IDS).logits
        base = load_base_model(model_config)(IDS).logits
    assert torch.allclose(mine, theirs, atol=1e-5, rtol=0), float((mine - theirs).abs().max())
    assert float((mine - base).abs().max()) > 0.1  # the trained adapter is really applied


@pytest.mark.slow
def test_qlora_export_merges_into_the_unquantized_base(qlora_run) -> None:
    from transformers import AutoModelForCausalLM

    root, config, _ = qlora_run
    summary = export(config, root)
    assert summary["merged"] and summary["parity_passed"]
    assert summary["trained_on_quantized_base"]["bits"] == 4
    assert summary["trained_on_quantized_base"]["quant_type"] == "nf4"
    assert "unquantized base" in summary["quantization_note"]
    exported = AutoModelForCausalLM.from_pretrained(str(root / config.export.output_dir))
    assert not getattr(exported, "is_loaded_in_4bit", False)
    assert exported.model.layers[0].self_attn.q_proj.weight.dtype == torch.float32
    # parity is measured against the unquantized base + adapter, in float32: tight
    assert summary["parity_max_abs_diff"] < 1e-3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_our_lora_equals_peft_on_a_4bit_base_on_cuda() -> None:
    model_config = ModelConfig(quantization={"bits": 4, "compute_dtype": "bfloat16"}, dtype="bfloat16")
    ours = load_base_model(model_config)
    assert ours.model.layers[0].self_attn.q_proj.weight.device.type == "cuda"
    method = get_adapter("lora")
    method.inject(ours, LoraConfig(r=4, alpha=8, target_modules="all-linear"))
    _randomize(ours)
    reference = peft.get_peft_model(
        load_base_model(model_config), peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear")
    )
    peft.set_peft_model_state_dict(reference, {k: v for k, v in method.adapter_state_dict(ours).items()})
    ids = IDS.cuda()
    with torch.no_grad():
        mine, theirs = ours(ids).logits.float(), reference(ids).logits.float()
    assert torch.allclose(mine, theirs, atol=1e-2, rtol=0), float((mine - theirs).abs().max())


def test_missing_bitsandbytes_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from peft_framework.errors import ConfigError
    from peft_framework.models.quantization import bnb_config

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # `import bitsandbytes` raises ImportError
    with pytest.raises(
        ConfigError, match=r"model.quantization.bits: 4 needs bitsandbytes.*peft-framework\[quant\]"
    ):
        bnb_config(FOUR_BIT)
