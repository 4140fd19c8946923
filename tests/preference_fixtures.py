"""Shared pieces of the preference-objective tests: our tiny LoRA model with random weights and pair rows."""

from __future__ import annotations

import copy

import peft
import torch
from peft import set_peft_model_state_dict

import tiny_models as tiny
from peft_framework.adapters import get_adapter
from peft_framework.adapters.lora.config import LoraConfig

PEFT_LORA = dict(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])


def _models(seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module, dict[str, torch.Tensor]]:
    """(ours: base + our LoRA with random weights, a copy of the base, our adapter's state in peft format)."""
    torch.manual_seed(seed)
    base = tiny.tiny_llama()
    ours = copy.deepcopy(base)
    get_adapter("lora").inject(
        ours, LoraConfig(type="lora", r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])
    )
    with torch.no_grad():
        tiny.randomize_trainables(ours, seed, std=0.3)
    state = {k: v.clone() for k, v in get_adapter("lora").adapter_state_dict(ours).items()}
    return ours, base, state


def _load(model: peft.PeftModel, state: dict[str, torch.Tensor]) -> None:
    result = set_peft_model_state_dict(model, {k: v.clone() for k, v in state.items()})
    assert not result.unexpected_keys


def _rows(n: int, seed: int) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, answer ids) of varied lengths (so padding and masks matter)."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        p, a = (int(torch.randint(2, 7, (1,), generator=gen)) for _ in range(2))
        rows.append(
            (
                [1, *torch.randint(3, tiny.VOCAB, (p,), generator=gen).tolist()],
                torch.randint(3, tiny.VOCAB, (a,), generator=gen).tolist(),
            )
        )
    return rows


def _pair_features(n: int = 3) -> list[dict]:
    chosen, rejected = _rows(n, 1), _rows(n, 2)
    features = []
    for (prompt, c), (_, r) in zip(chosen, rejected):
        features.append(
            {
                "chosen_input_ids": prompt + c,
                "chosen_labels": [-100] * len(prompt) + c,
                "rejected_input_ids": prompt + r,
                "rejected_labels": [-100] * len(prompt) + r,
            }
        )
    return features
