"""Vision-language bases: tiny LLaVA and Gemma3 built offline, their parts, LoRA targeting scoped to the
language model, the projector through modules_to_save, peft interop, and a vision tower without autograd."""

from __future__ import annotations

import peft
import pytest
import torch
from PIL import Image

from peft_framework.adapters import get_adapter
from peft_framework.adapters.checkpoint import save_adapter
from peft_framework.adapters.lora import LoraConfig
from peft_framework.errors import AdapterError
from peft_framework.models.parts import LANGUAGE, OTHER, PROJECTOR, VISION, model_parts
from peft_framework.models.tiny_vlm import FAMILIES, save_tiny_vlm, tiny_vlm
from peft_framework.models.vlm import freeze_vision_graph
from tiny_models import randomize_trainables

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def inputs(processor, colour=(255, 0, 0)):
    image = Image.new("RGB", (40, 30), colour)
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
    ]
    text = processor.apply_chat_template(messages, tokenize=False)
    return processor(images=[[image]], text=[text], return_tensors="pt")


@pytest.fixture(scope="module", params=FAMILIES)
def built(request):
    return request.param, *tiny_vlm(request.param)


def test_saved_tiny_vlm_loads_with_auto_classes(tmp_path, built):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    family, model, processor = built
    save_tiny_vlm(family, tmp_path)
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    loaded_proc = AutoProcessor.from_pretrained(tmp_path)
    batch = inputs(processor)
    assert torch.equal(inputs(loaded_proc)["input_ids"], batch["input_ids"])
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits)


def test_parts(built):
    family, model, _ = built
    parts = model_parts(model)
    assert parts.multimodal
    assert parts.part_of("model.language_model.layers.0.self_attn.q_proj") == LANGUAGE
    assert parts.part_of("model.vision_tower.encoder.layers.0.self_attn.q_proj") == VISION
    assert parts.part_of("model.multi_modal_projector") == PROJECTOR
    assert parts.part_of("lm_head") == OTHER


def _lora(model, **kwargs):
    method = get_adapter("lora")
    method.inject(model, LoraConfig(r=4, alpha=8, **kwargs))
    return method, method.record(model, "default")


@pytest.mark.parametrize("targets", [None, "all-linear", ["q_proj", "v_proj"], ".*q_proj"])
def test_targets_language_model_only_by_default(targets):
    model, _ = tiny_vlm("llava")
    _, record = _lora(model, target_modules=targets)
    counts = model_parts(model).count(record.targets)
    assert counts[LANGUAGE] > 0
    assert counts[VISION] == counts[PROJECTOR] == counts[OTHER] == 0


def test_target_vision_adds_the_vision_tower():
    model, _ = tiny_vlm("gemma3")
    _, record = _lora(model, target_modules=["q_proj"], target_vision=True)
    counts = model_parts(model).count(record.targets)
    assert counts[LANGUAGE] == 2 and counts[VISION] == 2


def test_only_vision_names_is_an_error():
    model, _ = tiny_vlm("llava")
    with pytest.raises(AdapterError, match="target_vision"):
        _lora(model, target_modules=["fc1"])


def test_projector_trains_whole_through_modules_to_save():
    model, _ = tiny_vlm("llava")
    _lora(model, modules_to_save=["multi_modal_projector"])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("multi_modal_projector" in n for n in trainable)
    assert not any("vision_tower" in n for n in trainable)


def test_wrong_projector_name_lists_the_parts():
    model, _ = tiny_vlm("llava")
    with pytest.raises(AdapterError, match="multi_modal_projector"):
        _lora(model, modules_to_save=["mm_projector"])


@pytest.mark.parametrize("vision", [False, True])
def test_peft_loads_our_adapter_with_the_same_logits(tmp_path, built, vision):
    family, _, processor = built
    model, _ = tiny_vlm(family)
    projector = ["multi_modal_projector"]
    method, record = _lora(
        model, target_modules="all-linear", target_vision=vision, modules_to_save=projector
    )
    with torch.no_grad():
        randomize_trainables(model, seed=1, std=0.02)
    save_adapter(
        model, method, record.config, tmp_path, base_model_name_or_path=None, task_type="image_text_to_text"
    )
    # float64: the same maths in another order differs by ~1e-5 in float32 through two towers
    batch = inputs(processor)
    batch["pixel_values"] = batch["pixel_values"].double()
    with torch.no_grad():
        ours = model.double()(**batch).logits
        theirs = peft.PeftModel.from_pretrained(tiny_vlm(family)[0].double(), tmp_path).eval()(**batch).logits
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)


def test_frozen_vision_tower_keeps_no_graph():
    model, processor = tiny_vlm("llava")
    _lora(model, modules_to_save=["multi_modal_projector"])
    seen = {}
    tower = model.model.vision_tower
    tower.register_forward_hook(lambda m, a, out: seen.update(grad=out.last_hidden_state.requires_grad))
    assert freeze_vision_graph(model)
    model.train()
    model.gradient_checkpointing_enable({"use_reentrant": False})
    batch = inputs(processor)
    out = model(**batch, labels=batch["input_ids"])
    out.loss.backward()
    assert seen["grad"] is False
    projector_grads = [
        p.grad for n, p in model.named_parameters() if "multi_modal_projector" in n and p.requires_grad
    ]
    assert projector_grads and all(g is not None and g.abs().sum() > 0 for g in projector_grads)


def test_adapted_vision_tower_keeps_its_graph():
    model, _ = tiny_vlm("llava")
    _lora(model, target_modules=["q_proj"], target_vision=True)
    assert not freeze_vision_graph(model)
