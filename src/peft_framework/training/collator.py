"""Batches of prepared rows: pad `input_ids` / `attention_mask` / `labels` to the longest row.

Token labels (causal LM) are padded with -100 so padding never counts in the loss; class labels
(sequence classification) become a 1-D tensor. Any other column (the raw text kept for evaluation) is
dropped here, so the model only ever sees the three tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

IGNORE_INDEX = -100
MODEL_COLUMNS = ("input_ids", "attention_mask", "labels")


@dataclass(frozen=True)
class PadCollator:
    pad_token_id: int
    padding_side: str = "right"
    pad_to_multiple_of: int | None = None

    def _length(self, longest: int) -> int:
        m = self.pad_to_multiple_of
        return longest if not m else -(-longest // m) * m

    def _pad(self, rows: Sequence[Sequence[int]], value: int, length: int) -> torch.Tensor:
        out = torch.full((len(rows), length), value, dtype=torch.long)
        for i, row in enumerate(rows):
            row_t = torch.as_tensor(row, dtype=torch.long)
            if self.padding_side == "left":
                out[i, length - len(row_t) :] = row_t
            else:
                out[i, : len(row_t)] = row_t
        return out

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        ids = [f["input_ids"] for f in features]
        length = self._length(max(len(row) for row in ids))
        masks = [
            f["attention_mask"] if f.get("attention_mask") is not None else [1] * len(f["input_ids"])
            for f in features
        ]
        batch = {
            "input_ids": self._pad(ids, self.pad_token_id, length),
            "attention_mask": self._pad(masks, 0, length),
        }
        if "labels" in features[0]:
            labels = [f["labels"] for f in features]
            if isinstance(labels[0], (list, tuple)) or (torch.is_tensor(labels[0]) and labels[0].dim() > 0):
                batch["labels"] = self._pad(labels, IGNORE_INDEX, length)
            else:
                batch["labels"] = torch.as_tensor([int(x) for x in labels], dtype=torch.long)
        return batch


class FlatteningCollator:
    """transformers' DataCollatorWithFlattening, plus `use_cache=False` for the forward pass: transformers
    only reads restarting position_ids as separate rows when the model builds no KV cache, and models
    such as Llama build one in training too when `config.use_cache` is on (the default)."""

    def __init__(self) -> None:
        from transformers import DataCollatorWithFlattening

        self._flatten = DataCollatorWithFlattening(return_position_ids=True, separator_id=IGNORE_INDEX)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        return {**self._flatten(features), "use_cache": False}


def make_collator(packing: bool, task: str, pad_token_id: int) -> PadCollator | FlatteningCollator:
    """The training collator: padded batches, or with `train.packing` one flattened sequence per batch.

    Flattened: the rows are concatenated, position_ids restart at each row and each row's first label is
    -100. With no attention mask, transformers' masking turns restarting position_ids into a
    block-diagonal causal mask (sdpa, eager and flash attention), so no row sees another, and the shifted
    loss covers the same tokens as in a padded batch."""
    if not packing:
        return PadCollator(pad_token_id, padding_side="right")
    if task != "causal_lm":
        from peft_framework.errors import ConfigError

        raise ConfigError(
            f"train.packing: true does not fit model.task {task!r}",
            ["train.packing: allowed only with causal_lm"],
        )
    return FlatteningCollator()
