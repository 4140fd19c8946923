"""`model.add_tokens`: tokens the tokenizer gains (e.g. a chat template's `<|im_start|>`), rows the model's
embeddings gain for them, and the adapter setting that trains exactly those rows.

    tokenizer = load_tokenizer(config.model)        # the tokens added (as special tokens: never split)
    model = load_base_model(config.model, tokenizer=tokenizer)   # embeddings grown to len(tokenizer)
    adapter = with_token_rows(config.adapter, model, tokenizer, config.model.add_tokens)

New rows start as the mean of the existing ones (Hewitt, "Initializing new word embeddings", 2021: the
new token then does not dominate the output distribution), in both the input embedding and an untied output
projection; the adapter trains them in full as peft's trainable tokens (`adapter.trainable_token_indices`)
and saves only those rows, so `peft.PeftModel.from_pretrained` loads the adapter onto a base resized to the
saved tokenizer (`base.resize_token_embeddings(len(tokenizer))`), whatever the new rows were initialised to.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from peft_framework.adapters.trainable_tokens import path_of, tied_output_path
from peft_framework.config.schema import AdapterConfigBase


def add_tokens(tokenizer: Any, tokens: list[str]) -> None:
    """Add `tokens` the tokenizer lacks, as special tokens (kept whole, never normalised or split)."""
    vocab = tokenizer.get_vocab()
    new = [t for t in tokens if t not in vocab]
    if new:
        tokenizer.add_tokens(new, special_tokens=True)


def mean_row(weight: torch.Tensor) -> torch.Tensor:
    """The mean of `weight`'s rows (computed in fp32), in its dtype: what a new token's row starts as."""
    return weight.to(torch.float32).mean(dim=0, keepdim=True).to(weight.dtype)


@torch.no_grad()
def grow_rows(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """`weight` with rows appended up to `rows`, each `mean_row` of the existing ones (unchanged if enough)."""
    have = weight.shape[0]
    if rows <= have:
        return weight
    return torch.cat([weight, mean_row(weight).expand(rows - have, *weight.shape[1:])], dim=0)


@torch.no_grad()
def grow_embeddings(model: nn.Module, rows: int) -> None:
    """Resize the input embedding (and an untied output projection) of `model` to `rows` rows, the new
    ones initialised by `grow_rows`. Nothing happens when the model already has that many rows (a padded
    vocabulary)."""
    have = model.get_input_embeddings().weight.shape[0]
    if rows <= have:
        return
    model.resize_token_embeddings(rows, mean_resizing=False)  # keeps the old rows; the new ones are set here
    layers = [model.get_input_embeddings()]
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if output is not None and output.weight is not layers[0].weight:
        layers.append(output)
    for layer in layers:
        layer.weight[have:] = mean_row(layer.weight[:have])


def token_rows_setting(model: nn.Module, ids: list[int]) -> list[int] | dict[str, list[int]]:
    """`adapter.trainable_token_indices` for `ids`: a list when the output projection shares the input
    embedding's weight (or there is none), else the rows of both layers by their module paths."""
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if output is None or tied_output_path(model) is not None:
        return list(ids)
    return {path_of(model, model.get_input_embeddings()): list(ids), path_of(model, output): list(ids)}


def with_token_rows(
    adapter: AdapterConfigBase, model: nn.Module, tokenizer: Any, tokens: list[str]
) -> AdapterConfigBase:
    """`adapter` with `trainable_token_indices` set to the rows of `tokens` (unchanged when there are none)."""
    if not tokens:
        return adapter
    vocab = tokenizer.get_vocab()  # the tokens are in it: load_tokenizer added them
    setting = token_rows_setting(model, [vocab[t] for t in tokens])
    return adapter.model_copy(update={"trainable_token_indices": setting})
