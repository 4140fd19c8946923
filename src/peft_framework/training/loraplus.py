"""LoRA+ (Hayou et al. 2024): B learns `ratio` times faster than A.

The parameter groups are peft's `create_loraplus_optimizer` (peft/optimizers/loraplus.py), built for the
Trainer's own optimizer class and kwargs (`AdapterTrainer.create_optimizer`), so nothing else about the
optimizer changes:

| group          | which trainable tensors                                      | lr              | weight decay |
|----------------|--------------------------------------------------------------|-----------------|--------------|
| A              | everything else (lora_A, 2-d module copies, ...)             | lr              | weight_decay |
| embedding      | LoRA tensors of embedding layers (none here: LoRA adapts linears only) | lr_embedding | weight_decay |
| B              | names with `lora_B`, or 1-d (DoRA magnitudes, biases, norms), in decay names | lr · ratio | weight_decay |
| B, no decay    | the same, not in decay names (biases, layer norms)           | lr · ratio      | 0            |

"decay names" are transformers' `get_parameter_names(model, ALL_LAYERNORM_LAYERS)` without biases, as peft.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn
from transformers.pytorch_utils import ALL_LAYERNORM_LAYERS
from transformers.trainer_pt_utils import get_parameter_names

GROUP_NAMES = ("A", "embedding", "B", "B_no_decay")


@dataclass(frozen=True)
class LoraPlus:
    """`train.loraplus_lr_ratio` and `train.loraplus_lr_embedding`."""

    lr_ratio: float
    lr_embedding: float = 1e-6


def _is_embedding_adapter(model: nn.Module, name: str) -> bool:
    # peft puts the tensors of its LoRA Embedding layers here; our LoRA wraps linear layers only, so this
    # stays empty unless a plug-in wraps embeddings under peft's attribute names
    parts = name.split(".")
    return len(parts) > 2 and parts[-3] in {"lora_embedding_A", "lora_embedding_B"}


def param_groups(model: nn.Module, *, lr: float, plus: LoraPlus, weight_decay: float) -> list[dict[str, Any]]:
    """The four optimizer parameter groups (peft's order), each with a `name` for logs and the manifest."""
    decay = {n for n in get_parameter_names(model, ALL_LAYERNORM_LAYERS) if "bias" not in n}
    groups: dict[str, list[nn.Parameter]] = {g: [] for g in GROUP_NAMES}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if _is_embedding_adapter(model, name):
            groups["embedding"].append(param)
        elif "lora_B" in name or param.ndim == 1:
            groups["B" if name in decay else "B_no_decay"].append(param)
        else:
            groups["A"].append(param)
    settings = {
        "A": (lr, weight_decay),
        "embedding": (plus.lr_embedding, weight_decay),
        "B": (lr * plus.lr_ratio, weight_decay),
        "B_no_decay": (lr * plus.lr_ratio, 0.0),
    }
    return [
        {"params": groups[g], "lr": settings[g][0], "weight_decay": settings[g][1], "name": g}
        for g in GROUP_NAMES
    ]


def describe(groups: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """{group: {tensors, parameters, lr, weight_decay}} for the manifest."""
    return {
        g["name"]: {
            "tensors": len(g["params"]),
            "parameters": sum(p.numel() for p in g["params"]),
            "lr": g["lr"],
            "weight_decay": g["weight_decay"],
        }
        for g in groups
    }


def loraplus_setting(train: Any) -> LoraPlus | None:
    """LoraPlus from the `train:` section, None when `loraplus_lr_ratio` is null."""
    if train.loraplus_lr_ratio is None:
        return None
    return LoraPlus(lr_ratio=train.loraplus_lr_ratio, lr_embedding=train.loraplus_lr_embedding)
