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


class PackCollator:
    """Batches of packs (rows with position_ids, from training/packing.py) as `(batch, longest)` tensors.

    A shorter pack is filled up by a padding segment that is a sequence of its own (pad tokens,
    position_ids restarting at 0, labels -100), so no attention mask is needed and no real token attends
    to padding. Plain rows (the validation split stays unpacked) are flattened as `FlatteningCollator`."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id
        self._flatten = FlatteningCollator()

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        if "position_ids" not in features[0]:
            return self._flatten(features)
        length = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), length), IGNORE_INDEX, dtype=torch.long)
        pos = torch.zeros((len(features), length), dtype=torch.long)
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            ids[i, :n] = torch.as_tensor(f["input_ids"], dtype=torch.long)
            labels[i, :n] = torch.as_tensor(f["labels"], dtype=torch.long)
            pos[i, :n] = torch.as_tensor(f["position_ids"], dtype=torch.long)
            pos[i, n:] = torch.arange(length - n)
        return {"input_ids": ids, "labels": labels, "position_ids": pos, "use_cache": False}


def make_collator(packing: bool, task: str, pad_token_id: int) -> PadCollator | PackCollator:
    """The training collator: padded batches, or with `train.packing` batches of packs (the train split
    is packed across the epoch by training/packing.py; plain rows, as in validation, are flattened).

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
    return PackCollator(pad_token_id)
