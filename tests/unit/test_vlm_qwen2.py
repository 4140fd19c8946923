"""Qwen2-VL, the third family (in memory only: its processor cannot be saved without torchvision, see
models/tiny_vlm.py): dynamic resolution through `image_grid_thw`, the projector (`visual.merger`) inside the
vision tower counted as the projector, LoRA on the language model only unless `target_vision`, and peft
loading our adapter with the same logits."""

from __future__ import annotations

import peft
import pytest
import torch
from PIL import Image

from peft_framework.adapters import get_adapter
from peft_framework.adapters.checkpoint import save_adapter
from peft_framework.adapters.lora import LoraConfig
from peft_framework.models.parts import LANGUAGE, OTHER, PROJECTOR, VISION, model_parts
from peft_framework.models.tiny_vlm import FAMILIES, save_tiny_vlm, tiny_vlm
from peft_framework.models.vlm import freeze_vision_graph
from tiny_models import randomize_trainables

pytestmark = pytest.mark.usefixtures("one_torch_thread")
MERGE = 2  # spatial_merge_size: one image token per 2x2 patches


def inputs(processor, sizes=((40, 30),)):
    images = [Image.new("RGB", size, (255, 0, 0)) for size in sizes]
    content = [{"type": "image"} for _ in sizes] + [{"type": "text", "text": "What colour?"}]
    messages = [
        {"role": "user", "content": content},
        {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
    ]
    text = processor.apply_chat_template(messages, tokenize=False)
    return processor(images=[images], text=[text], return_tensors="pt")


def _lora(model, **kwargs):
    method = get_adapter("lora")
    method.inject(model, LoraConfig(r=4, alpha=8, **kwargs))
    return method, method.record(model, "default")


def test_not_a_saved_family(tmp_path):
    assert "qwen2_vl" not in FAMILIES
    with pytest.raises(ValueError, match="cannot be saved"):
        save_tiny_vlm("qwen2_vl", tmp_path)


def test_dynamic_resolution_gives_each_image_its_own_grid_and_tokens():
    model, processor = tiny_vlm("qwen2_vl")
    batch = inputs(processor, sizes=((20, 20), (64, 48)))
    grids = batch["image_grid_thw"].tolist()
    assert grids[0] != grids[1]
    image_tokens = int((batch["input_ids"] == model.config.image_token_id).sum())
    assert image_tokens == sum(t * h * w for t, h, w in grids) // MERGE**2
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape[:2] == batch["input_ids"].shape and torch.isfinite(logits).all()


def test_parts_put_the_merger_in_the_projector():
    model, _ = tiny_vlm("qwen2_vl")
    parts = model_parts(model)
    assert parts.part_of("model.language_model.layers.0.self_attn.q_proj") == LANGUAGE
    assert parts.part_of("model.visual.blocks.0.attn.qkv") == VISION
    assert parts.part_of("model.visual.merger.mlp.0") == PROJECTOR
    assert parts.part_of("lm_head") == OTHER


@pytest.mark.parametrize("vision", [False, True])
def test_targets_and_peft_loads_our_adapter_with_the_same_logits(tmp_path, vision):
    model, processor = tiny_vlm("qwen2_vl")
    method, record = _lora(
        model, target_modules="all-linear", target_vision=vision, modules_to_save=["merger"]
    )
    counts = model_parts(model).count(record.targets)
    assert counts[LANGUAGE] > 0 and counts[PROJECTOR] == counts[OTHER] == 0
    assert (counts[VISION] > 0) is vision
    assert any("merger" in n and p.requires_grad for n, p in model.named_parameters())
    assert not freeze_vision_graph(model)  # the merger trains inside the tower: it keeps its graph
    with torch.no_grad():
        randomize_trainables(model, seed=1, std=0.02)
    task = "image_text_to_text"  # what training writes: no peft task type
    save_adapter(model, method, record.config, tmp_path, base_model_name_or_path=None, task_type=task)
    batch = inputs(processor)
    batch["pixel_values"] = batch["pixel_values"].double()
    with torch.no_grad():
        ours = model.double()(**batch).logits
        base = tiny_vlm("qwen2_vl")[0].double()
        theirs = peft.PeftModel.from_pretrained(base, tmp_path).eval()(**batch).logits
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)


@pytest.mark.parametrize("frozen", [True, False])
def test_frozen_tower_without_the_merger_runs_without_autograd(frozen):
    model, processor = tiny_vlm("qwen2_vl")
    _lora(model)
    model.enable_input_require_grads()  # as for gradient checkpointing: the tower's inputs require grad
    seen = {}
    model.model.visual.blocks[-1].register_forward_hook(lambda m, a, out: seen.update(grad=out.requires_grad))
    if frozen:
        assert freeze_vision_graph(model)
    model.train()
    batch = inputs(processor)
    model(**batch, labels=batch["input_ids"]).loss.backward()
    assert seen["grad"] is not frozen
    assert any(p.grad is not None for n, p in model.named_parameters() if "lora_" in n)
