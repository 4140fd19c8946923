"""DoRA on a quantized base (bitsandbytes 4- and 8-bit, on CPU), with HuggingFace peft as the oracle.

peft supports DoRA on `Linear4bit` and `Linear8bitLt`: the magnitude starts at the row norm of the
DEQUANTIZED weight plus s·BA, and the forward rescales the quantized layer's own output. Here: the same
magnitudes at injection and the same logits and gradients as peft's DoRA on the same quantized tiny Llama;
the train stage with `adapter.use_dora: true` and `model.quantization.bits: 4` lowers the held-out loss;
peft loads the saved adapter on the 4-bit base with our logits; export merges it into the UNQUANTIZED base
and matches peft's merge of the same adapter there.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

pytest.importorskip("bitsandbytes")
peft = pytest.importorskip("peft")

from tests.integration.test_qlora import IDS, _is_bnb, _randomize
from tests.integration.test_train import _pairs, base_eval_loss, write_prepared

from peft_framework.adapters import get_adapter, load_adapter
from peft_framework.adapters.lora import LoraConfig
from peft_framework.config.schema import Config, EvalConfig, ExportConfig, ModelConfig, TrainConfig
from peft_framework.export import export
from peft_framework.models.loading import load_base_model
from peft_framework.training import train

TARGETS = ["q_proj", "v_proj", "down_proj"]


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Gradients of the trainable tensors, by module path and tensor kind (peft's and our names differ in
    the 'base_model.model.' prefix and the magnitude's '.weight')."""
    out = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            key = name.removeprefix("base_model.model.").replace(".default", "").removesuffix(".weight")
            out[key] = param.grad
    return out


def _magnitudes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if "lora_magnitude_vector" in k}


@pytest.mark.parametrize("bits", [4, 8])
def test_dora_equals_peft_on_the_same_quantized_base(bits: int) -> None:
    model_config = ModelConfig(quantization={"bits": bits})
    ours = load_base_model(model_config)
    method = get_adapter("lora")
    method.inject(ours, LoraConfig(r=4, alpha=8, target_modules=TARGETS, use_dora=True))
    assert _is_bnb(ours.model.layers[0].self_attn.v_proj.base_layer, bits)
    reference = peft.get_peft_model(
        load_base_model(model_config),
        peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, use_dora=True),
    )
    # magnitudes start at ‖dequantized W + s·BA‖ (B = 0): the same as peft's, before anything is copied over
    mine0 = _magnitudes(method.adapter_state_dict(ours))
    theirs0 = _magnitudes(peft.get_peft_model_state_dict(reference))
    assert mine0.keys() == theirs0.keys() and len(mine0) == 3 * 2  # 3 targets x 2 layers
    for key in mine0:
        assert torch.allclose(mine0[key], theirs0[key], atol=1e-5, rtol=1e-6), key

    _randomize(ours)
    result = peft.set_peft_model_state_dict(reference, method.adapter_state_dict(ours))
    assert not result.unexpected_keys
    labels = IDS.clone()
    mine, theirs = ours(IDS, labels=labels), reference(IDS, labels=labels)
    assert torch.allclose(mine.logits, theirs.logits, atol=1e-5, rtol=0), float(
        (mine.logits - theirs.logits).abs().max()
    )
    with torch.no_grad():  # the trained magnitudes really act (not just the base's 4-/8-bit output)
        assert float((mine.logits - load_base_model(model_config)(IDS).logits).abs().max()) > 0.05
    # gradients of every adapter tensor, magnitudes included (the norm detached, as peft)
    mine.loss.backward()
    theirs.loss.backward()
    grads, ref_grads = _grads(ours), _grads(reference)
    assert grads.keys() == ref_grads.keys() and any("magnitude" in k for k in grads)
    for key, grad in grads.items():
        assert torch.allclose(grad, ref_grads[key], atol=1e-5, rtol=1e-4), key


# ------------------------------------------------------------------------------------- stages, peft load
@pytest.fixture(scope="module")
def dora_4bit_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Config, dict]:
    """The real train stage from config alone: `use_dora: true` on a 4-bit nf4 base."""
    root = tmp_path_factory.mktemp("dora_4bit")
    write_prepared(
        root / "data/prepared", {"train": _pairs(32, 1), "validation": _pairs(16, 2), "test": _pairs(8, 3)}
    )
    config = Config(
        model=ModelConfig(quantization={"bits": 4}),
        adapter=LoraConfig(r=4, alpha=8, target_modules=TARGETS, use_dora=True),
        train=TrainConfig(
            max_steps=6, batch_size=8, learning_rate=2e-2, logging_steps=2, save_steps=100, report_to="none"
        ),
        eval=EvalConfig(generate=False),
        export=ExportConfig(),
    )
    return root, config, train(config, root)


@pytest.mark.slow
def test_dora_trains_on_a_4bit_base_and_peft_loads_it(dora_4bit_run) -> None:
    root, config, summary = dora_4bit_run
    out = root / config.train.output_dir
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["model"]["quantization"]["bits"] == 4 and manifest["adapter"]["use_dora"]
    assert json.loads((out / "adapter_config.json").read_text())["use_dora"] is True
    assert summary["eval_loss"] < base_eval_loss(root) - 0.5, (summary["eval_loss"], base_eval_loss(root))

    four_bit = ModelConfig(quantization={"bits": 4})
    reference = peft.PeftModel.from_pretrained(load_base_model(four_bit), str(out))
    ours = load_base_model(four_bit)
    load_adapter(ours, out)
    with torch.no_grad():
        mine, theirs = ours(IDS).logits, reference(IDS).logits
    assert torch.allclose(mine, theirs, atol=1e-5, rtol=0), float((mine - theirs).abs().max())


@pytest.mark.slow
def test_dora_from_a_4bit_base_exports_into_the_unquantized_base(dora_4bit_run) -> None:
    from transformers import AutoModelForCausalLM

    root, config, _ = dora_4bit_run
    summary = export(config, root)
    assert summary["merged"] and summary["parity_passed"]
    assert summary["trained_on_quantized_base"]["bits"] == 4
    exported = AutoModelForCausalLM.from_pretrained(str(root / config.export.output_dir))
    assert not getattr(exported, "is_loaded_in_4bit", False)
    # peft's own DoRA merge of the same adapter into the unquantized base gives the same model
    merged = peft.PeftModel.from_pretrained(
        load_base_model(ModelConfig()), str(root / config.train.output_dir)
    ).merge_and_unload()
    with torch.no_grad():
        mine, theirs = exported(IDS).logits, merged(IDS).logits
    assert torch.allclose(mine, theirs, atol=1e-4, rtol=0), float((mine - theirs).abs().max())
