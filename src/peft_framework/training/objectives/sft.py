"""SFT: the model's own loss (next-token or class cross-entropy) through transformers' Trainer."""

from __future__ import annotations

from typing import Any

from peft_framework.training.objectives.base import Objective


class SFT(Objective):
    name = "sft"
    needs_reference = False
    columns = ("input_ids", "attention_mask", "labels")
    mean_over_batch = False  # Trainer normalises by the tokens of the accumulated batch

    def collator(self, pad_token_id: int) -> Any:  # the stage builds it (packing, task): see make_collator
        raise NotImplementedError("sft uses training.collator.make_collator")
