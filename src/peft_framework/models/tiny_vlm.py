"""Tiny random vision-language models with their processors, built offline from configs.

As transformers' own tests build them: a small vision config and a small text config joined by the
family's config class, and a processor assembled from an image processor and our byte-level tokenizer
(plus the family's image tokens), with a chat template that renders `{"type": "image"}` parts.

- `llava`: CLIP vision tower + Llama language model (`builtin:tiny-vlm`);
- `gemma3`: SigLIP vision tower + Gemma3 language model (`builtin:tiny-vlm-gemma3`);
- `qwen2_vl`: Qwen2-VL (dynamic resolution, `image_grid_thw`), in memory only: its processor cannot be
  saved or loaded by AutoProcessor without a video processor, which needs torchvision (see
  `_image_only_qwen2_vl_processor`); not a built-in, not in FAMILIES.
`save_tiny_vlm(family, directory)` writes a model directory that the Auto classes load.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerFast

from peft_framework.config.schema import BUILTIN_TINY_VLMS
from peft_framework.models.tiny import TINY_SHARED, seeded_build, tiny_tokenizer

TINY_VLM_SEED = 4321
FAMILIES = tuple(BUILTIN_TINY_VLMS.values())
IMAGE_SIZE = 32


def vlm_chat_template(image_text: str) -> str:
    """Role-tagged turns; a content list renders text parts as is and image parts as `image_text`.
    `{% generation %}` marks the assistant's tokens (what the model learns)."""
    content = (
        "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
        "{% for part in message['content'] %}"
        "{% if part['type'] == 'image' %}{{ '" + image_text + "' }}"
        "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
        "{% endfor %}{% endif %}"
    )
    return (
        "{{ bos_token }}"
        "{% for message in messages %}"
        "{% if message['role'] == 'assistant' %}"
        "{{ '<|assistant|>\n' }}{% generation %}" + content + "{{ eos_token }}{% endgeneration %}{{ '\n' }}"
        "{% else %}"
        "{{ '<|' + message['role'] + '|>\n' }}" + content + "{{ '\n' }}"
        "{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
    )


def _tokenizer(extra: dict[str, str]) -> PreTrainedTokenizerFast:
    """The byte-level tokenizer with the family's image tokens as special tokens (named attributes too)."""
    base = tiny_tokenizer()
    base.add_special_tokens({"additional_special_tokens": list(extra.values())})
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=base.backend_tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        model_max_length=1024,
        extra_special_tokens=extra,
    )
    return tokenizer


def _text_params(vocab_size: int) -> dict[str, Any]:
    """The language model: the shared tiny decoder values (models/tiny.py), 64 wide."""
    return {**TINY_SHARED, "vocab_size": vocab_size, "hidden_size": 64, "intermediate_size": 128}


_VISION = dict(
    image_size=IMAGE_SIZE,
    patch_size=8,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
)


def _llava() -> tuple[Any, Any]:
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tokenizer = _tokenizer({"image_token": "<image>"})
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(**_VISION, projection_dim=32),
        text_config=LlamaConfig(**_text_params(len(tokenizer))),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        projector_hidden_act="gelu",
    )
    model = LlavaForConditionalGeneration(config)
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
        ),
        tokenizer=tokenizer,
        patch_size=_VISION["patch_size"],
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=vlm_chat_template("<image>"),
    )
    return model, processor


def _gemma3() -> tuple[Any, Any]:
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3Processor,
        Gemma3TextConfig,
        SiglipVisionConfig,
    )
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    tokens = {
        "boi_token": "<start_of_image>",
        "eoi_token": "<end_of_image>",
        "image_token": "<image_soft_token>",
    }
    tokenizer = _tokenizer(tokens)
    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in tokens.items()}
    config = Gemma3Config(
        text_config=Gemma3TextConfig(**_text_params(len(tokenizer)), head_dim=16, sliding_window=64),
        vision_config=SiglipVisionConfig(**_VISION),
        mm_tokens_per_image=4,
        boi_token_index=ids["boi_token"],
        eoi_token_index=ids["eoi_token"],
        image_token_index=ids["image_token"],
    )
    model = Gemma3ForConditionalGeneration(config)
    processor = Gemma3Processor(
        image_processor=Gemma3ImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}),
        tokenizer=tokenizer,
        image_seq_length=4,
        chat_template=vlm_chat_template("<start_of_image>"),
    )
    return model, processor


def _qwen2_vl() -> tuple[Any, Any]:
    """Qwen2-VL: dynamic resolution (an image is as many patches as its size gives, `image_grid_thw`), the
    projector (`visual.merger`) inside the vision tower, M-RoPE positions in the language model."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tokens = {
        "image_token": "<|image_pad|>",
        "video_token": "<|video_pad|>",
        "vision_start_token": "<|vision_start|>",
        "vision_end_token": "<|vision_end|>",
    }
    tokenizer = _tokenizer(tokens)
    ids = {f"{name}_id": tokenizer.convert_tokens_to_ids(tok) for name, tok in tokens.items()}
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 2, 4]}  # head_dim 16 / 2
    config = Qwen2VLConfig(
        text_config={**_text_params(len(tokenizer)), "rope_parameters": rope},
        vision_config=dict(
            depth=2,
            embed_dim=32,
            hidden_size=64,  # the merger's output: the language model's width
            num_heads=4,
            mlp_ratio=2,
            patch_size=8,
            spatial_merge_size=2,
            temporal_patch_size=2,
        ),
        **ids,
    )
    model = Qwen2VLForConditionalGeneration(config)
    unit = 8 * 2  # patch_size x spatial_merge_size: the side of one image token
    processor = _image_only_qwen2_vl_processor()(
        image_processor=Qwen2VLImageProcessorPil(
            patch_size=8,
            merge_size=2,
            temporal_patch_size=2,
            min_pixels=unit * unit,
            max_pixels=4 * unit * unit,
        ),
        tokenizer=tokenizer,
        video_processor=None,
        chat_template=vlm_chat_template("<|vision_start|><|image_pad|><|vision_end|>"),
    )
    return model, processor


def _image_only_qwen2_vl_processor() -> type:
    from transformers import Qwen2VLProcessor

    class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
        """Qwen2VLProcessor without its video processor. transformers checks every processor attribute's
        class, and the video processor's base class (`VideoProcessorMixin`) is only exported with
        torchvision, which cannot be installed next to this torch: a `None` video processor is let through.
        Images are processed exactly as Qwen2VLProcessor does; saving it (and so AutoProcessor) needs the
        video processor, so this family is built in memory only (not in FAMILIES)."""

        def check_argument_for_proper_class(self, argument_name: str, argument: Any) -> Any:
            if argument_name == "video_processor" and argument is None:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    return ImageOnlyQwen2VLProcessor


_BUILDERS = {"llava": _llava, "gemma3": _gemma3, "qwen2_vl": _qwen2_vl}


def tiny_vlm(family: str = "llava", seed: int = TINY_VLM_SEED) -> tuple[Any, Any]:
    """(model in eval mode, processor). Same seed -> same weights, on any machine (built on CPU in fp32)."""
    model, processor = seeded_build(seed, _BUILDERS[family])
    builtin = [name for name, f in BUILTIN_TINY_VLMS.items() if f == family]
    model.config.name_or_path = builtin[0] if builtin else f"tiny-vlm-{family}"
    return model.eval(), processor


def save_tiny_vlm(family: str, directory: str | os.PathLike[str]) -> Path:
    """Write a tiny VLM (safetensors) and its processor to `directory`; returns it."""
    if family not in FAMILIES:  # qwen2_vl: its processor cannot be saved without a video processor
        raise ValueError(f"family {family!r} cannot be saved here; allowed: {', '.join(FAMILIES)}")
    directory = Path(directory)
    model, processor = tiny_vlm(family)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory
