"""Sampling completions from the model as it is (adapter active): the generation step of online objectives
(GRPO) and of reward evaluation.

    out = generate_completions(model, tokenizer, prompt_ids, max_new_tokens=32, do_sample=True,
                               temperature=1.0, top_p=1.0, num_return_sequences=4, seed=train_seed + step)

transformers' `generate` with its KV cache, prompts LEFT-padded in one batch. The completions of prompt i are
rows i*n .. i*n+n-1 (n = num_return_sequences). EOS handling is TRL's (GRPOTrainer._generate_single_turn):
every EOS id the model or tokenizer declares ends a completion; the mask keeps the first EOS and masks
everything after it. Sampling is seeded with `seed` inside a forked RNG, so the same seed gives the same
completions whatever the global RNG has done, and a resumed run (seed from the global step) replays them.
Dropout is off while generating (the model is put back in its mode after).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class TokenIds:
    """The special ids generation needs, when no tokenizer is at hand (texts are then not decoded)."""

    pad_token_id: int
    eos_token_ids: tuple[int, ...]


@dataclass(frozen=True)
class Completions:
    prompt_index: list[int]  # completion row -> index of its prompt in `prompt_ids`
    completion_ids: torch.Tensor  # (N, T) long, right-padded with the pad id after the mask
    completion_mask: torch.Tensor  # (N, T) long: 1 up to and including the first EOS
    truncated: torch.Tensor  # (N,) bool: no EOS within max_new_tokens
    texts: list[str] | None  # decoded (special tokens skipped); None without a tokenizer

    @property
    def lengths(self) -> torch.Tensor:
        return self.completion_mask.sum(-1)

    def ids(self) -> list[list[int]]:
        """Each completion's ids up to and including its first EOS."""
        return [row[mask.bool()].tolist() for row, mask in zip(self.completion_ids, self.completion_mask)]


def eos_token_ids(model: torch.nn.Module, tokenizer_or_ids: Any) -> tuple[int, ...]:
    """The tokenizer's EOS and every EOS id the model's generation config declares (as TRL)."""
    if isinstance(tokenizer_or_ids, TokenIds):
        return tokenizer_or_ids.eos_token_ids
    declared = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = [] if declared is None else [declared] if isinstance(declared, int) else list(declared)
    eos = tokenizer_or_ids.eos_token_id
    if eos is not None and eos not in ids:
        ids = [eos, *ids]
    if not ids:
        raise ValueError("generation: neither the tokenizer nor the model declares an EOS token")
    return tuple(ids)


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), left-padded to the longest row."""
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        if len(row):
            ids[i, length - len(row) :] = torch.as_tensor(list(row), dtype=torch.long)
            mask[i, length - len(row) :] = 1
    return ids, mask


def mask_after_eos(completion_ids: torch.Tensor, eos_ids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask, truncated): 1 up to and including the first EOS of each row, 0 after; rows with no EOS keep all."""
    is_eos = torch.isin(completion_ids, torch.tensor(list(eos_ids), device=completion_ids.device))
    has_eos = is_eos.any(dim=1)
    eos_idx = torch.full((is_eos.size(0),), is_eos.size(1), dtype=torch.long, device=completion_ids.device)
    eos_idx[has_eos] = is_eos.int().argmax(dim=1)[has_eos]
    positions = torch.arange(is_eos.size(1), device=completion_ids.device).expand(is_eos.size(0), -1)
    return (positions <= eos_idx.unsqueeze(1)).long(), ~has_eos


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module under DDP (`.module`); generate is not a method of the wrapper."""
    return model.module if hasattr(model, "module") and not hasattr(model, "generate") else model


@torch.no_grad()
def generate_completions(
    model: torch.nn.Module,
    tokenizer_or_ids: Any,
    prompt_ids: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    do_sample: bool = True,
    temperature: float = 1.0,
    top_p: float = 1.0,
    num_return_sequences: int = 1,
    seed: int = 0,
) -> Completions:
    """`num_return_sequences` completions of each prompt (token ids, already formatted). See the module doc."""
    from transformers import GenerationConfig

    model = _unwrap(model)
    tokenizer = None if isinstance(tokenizer_or_ids, TokenIds) else tokenizer_or_ids
    eos = eos_token_ids(model, tokenizer_or_ids)
    pad_id = tokenizer_or_ids.pad_token_id
    if pad_id is None:
        pad_id = eos[0]
    device = next(model.parameters()).device
    input_ids, attention_mask = left_pad(prompt_ids, pad_id)
    sampling = (
        {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}
        if do_sample
        else {"do_sample": False}
    )
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        num_return_sequences=num_return_sequences,
        pad_token_id=pad_id,
        eos_token_id=list(eos),
        use_cache=True,
        disable_compile=True,
        **sampling,
    )
    training = model.training
    model.eval()
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            out = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                generation_config=config,
            )
    finally:
        model.train(training)
    completion_ids = out[:, input_ids.size(1) :].cpu()
    mask, truncated = mask_after_eos(completion_ids, eos)
    completion_ids = completion_ids.masked_fill(mask == 0, pad_id)
    index = [i for i in range(len(prompt_ids)) for _ in range(num_return_sequences)]
    texts = None
    if tokenizer is not None:
        kept = [row[m.bool()].tolist() for row, m in zip(completion_ids, mask)]
        texts = tokenizer.batch_decode(kept, skip_special_tokens=True)
    return Completions(index, completion_ids, mask, truncated, texts)
