"""Training on a quantized (bitsandbytes 4-/8-bit) base: what peft's `prepare_model_for_kbit_training` does.

    prepare_kbit_training(model, gradient_checkpointing=True)   # before the adapter is injected

1. every base parameter is frozen (the quantized weights cannot be trained; the adapter is added after);
2. the parameters that are not quantized and are stored in fp16/bf16 (norms, embeddings, the output head)
   are cast to fp32: the small norm weights and the logits then keep full precision, which QLoRA training
   needs to stay stable (the 4-bit layers compute in their own `compute_dtype` regardless);
3. with gradient checkpointing, the input embeddings' output requires grad, so that gradients reach the
   adapter through checkpointed blocks whose inputs would otherwise be frozen tensors. Checkpointing itself
   is non-reentrant (`use_reentrant=False`, set in training/arguments.py), as peft recommends.

A model that is not quantized is left untouched. `allow_quantized_training` lets transformers' Trainer
accept the model: it refuses quantized models unless they are HuggingFace peft models.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch
from torch import nn

from peft_framework.models.quantization import is_quantized_model

log = logging.getLogger(__name__)

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def prepare_kbit_training(model: nn.Module, gradient_checkpointing: bool) -> bool:
    """Prepare a quantized base for adapter training in place; returns whether it was quantized."""
    if not is_quantized_model(model):
        return False
    cast = 0
    for param in model.parameters():
        param.requires_grad = False
        # Params4bit hold packed 4-bit data in a float-typed container on some versions: never cast them
        if param.dtype in _LOW_PRECISION and type(param).__name__ != "Params4bit":
            param.data = param.data.to(torch.float32)
            cast += param.numel()
    if gradient_checkpointing and hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()
    log.info(
        "quantized base: frozen, %d unquantized fp16/bf16 parameters cast to fp32%s",
        cast,
        ", input embeddings' output requires grad (gradient checkpointing)" if gradient_checkpointing else "",
    )
    return True


@contextlib.contextmanager
def allow_quantized_training(model: nn.Module) -> Iterator[None]:
    """transformers' Trainer accepts a quantized model only with adapters it knows (peft's). Ours are
    attached (the caller checked that something is trainable), so it is told so for its check only."""
    flag = "_hf_peft_config_loaded"
    if not is_quantized_model(model) or getattr(model, flag, False):
        yield
        return
    setattr(model, flag, True)
    try:
        yield
    finally:
        delattr(model, flag)
