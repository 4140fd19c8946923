"""The vision-language model kind (`model.task: image_text_to_text`): its processor, and a frozen vision
tower that runs without autograd.

    processor = load_processor(config.model)      # AutoProcessor, or the built-in tiny VLM's
    freeze_vision_graph(model)                     # after the adapter is injected
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from peft_framework.config.schema import BUILTIN_TINY_VLMS, ModelConfig
from peft_framework.errors import ConfigError
from peft_framework.models.parts import model_parts


def load_processor(model_config: ModelConfig) -> Any:
    """The model's processor (tokenizer + image processor + chat template): AutoProcessor from the hub id
    or local directory, or the built-in tiny VLM's. A tokenizer without a pad token pads with EOS."""
    name = model_config.name_or_path
    if name in BUILTIN_TINY_VLMS:
        from peft_framework.models.tiny_vlm import tiny_vlm

        processor = tiny_vlm(BUILTIN_TINY_VLMS[name])[1]
    else:
        from transformers import AutoProcessor

        from peft_framework.models.loading import _BAD_LOCAL_FILES, _load_problem

        try:
            processor = AutoProcessor.from_pretrained(
                name, revision=model_config.revision, trust_remote_code=model_config.trust_remote_code
            )
        except _BAD_LOCAL_FILES as exc:
            if not isinstance(exc, (OSError, ValueError)) and not Path(name).is_dir():
                raise
            raise ConfigError("invalid config", [_load_problem(name, "processor", exc)]) from exc
        if not hasattr(processor, "image_processor") or not hasattr(processor, "tokenizer"):
            raise ConfigError(
                "invalid config",
                [
                    f"model.name_or_path: {name!r} has no multimodal processor (got {type(processor).__name__}); "
                    "model.task image_text_to_text needs a processor with an image processor and a tokenizer"
                ],
            )
    tokenizer = processor.tokenizer
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return processor


def _vision_is_frozen(module: nn.Module) -> bool:
    return not any(p.requires_grad for p in module.parameters())


class _NoGrad:
    """Forward pre-hook + hook pair: the module's forward runs under `torch.no_grad()`."""

    def __init__(self) -> None:
        self.saved: list[bool] = []

    def before(self, module: nn.Module, args: Any) -> None:
        self.saved.append(torch.is_grad_enabled())
        torch.set_grad_enabled(False)

    def after(self, module: nn.Module, args: Any, output: Any) -> None:
        torch.set_grad_enabled(self.saved.pop())


def freeze_vision_graph(model: nn.Module) -> bool:
    """When no parameter of the vision tower trains (not adapted, not in modules_to_save), run it without
    autograd: it keeps no activations for a backward pass that would not use them. Returns whether it did.

    Gradients still reach what follows (the projector, the language model's adapter): they need none from
    the tower. A tower that trains keeps its graph."""
    parts = model_parts(model)
    if not parts.multimodal:
        return False
    tower = model.get_submodule(parts.vision_tower[0])
    if not _vision_is_frozen(tower):
        return False
    hook = _NoGrad()
    tower.register_forward_pre_hook(hook.before)
    tower.register_forward_hook(hook.after, always_call=True)
    return True
