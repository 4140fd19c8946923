"""The objective contract, and the log-prob helpers the preference objectives share.

An `Objective` says
- which prepared columns it reads (`columns`) and how a batch is built from them (`collator`);
- how the loss and its metrics come from the policy (the model with the adapter on) and, when
  `needs_reference`, the reference: `reference` is a context manager under which the same model runs as the
  reference (adapter off, or a frozen second adapter; dropout off; no grad);
- what evaluation reports (`evaluate_batch`: per-row numbers summed by the evaluate stage).

`compute_loss` returns None for objectives that keep transformers' own loss (SFT). Metrics are 0-d tensors
named as TRL names them, so dashboards carry over. An online objective (GRPO) adds a generation step before
`compute_loss`; nothing here assumes the batch came from disk.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
Reference = Callable[[], AbstractContextManager[Any]]


class Objective:
    name: str = ""
    needs_reference: bool = False
    columns: tuple[str, ...] = ()
    #: the loss is a mean over the batch (not over tokens): Trainer divides it by the accumulation steps
    mean_over_batch: bool = True

    @classmethod
    def from_config(cls, train_config: Any) -> Objective:
        return cls()

    def use_tokenizer(self, tokenizer: Any) -> None:
        """The run's tokenizer, for objectives that decode (online ones); most need none."""

    def collator(self, pad_token_id: int) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
        raise NotImplementedError

    def compute_loss(
        self, model: torch.nn.Module, batch: dict[str, Any], reference: Reference | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]] | None:
        return None


@contextlib.contextmanager
def as_reference(model: torch.nn.Module, method: Any, adapter_name: str | None = None) -> Iterator[None]:
    """`model` (adapters injected by `method`) as the reference: adapter `adapter_name` active (None: all
    off, the base model), dropout off; the active adapter and train mode put back after."""
    active = method.active_adapter(model)
    training = model.training
    method.set_active(model, adapter_name)
    model.eval()
    try:
        yield
    finally:
        method.set_active(model, active)
        model.train(training)


# -------------------------------------------------------------------------------------------- helpers
def pad(rows: Sequence[Sequence[int]], value: int, length: int) -> torch.Tensor:
    out = torch.full((len(rows), length), value, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.as_tensor(list(row), dtype=torch.long)
    return out


def padded_batch(ids: list[Sequence[int]], labels: list[Sequence[int]], pad_token_id: int) -> dict[str, Any]:
    """Right-padded input_ids / attention_mask / labels (-100 on prompt and padding)."""
    length = max(len(r) for r in ids)
    return {
        "input_ids": pad(ids, pad_token_id, length),
        "attention_mask": pad([[1] * len(r) for r in ids], 0, length),
        "labels": pad(labels, IGNORE_INDEX, length),
    }


def forward_logits(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    return model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor, average: bool = False) -> torch.Tensor:
    """Sum (or mean) over the labelled tokens of log p(token | tokens before it); as TRL's get_batch_logps."""
    labels = labels[:, 1:]
    logits = logits[:, :-1, :]
    mask = labels != IGNORE_INDEX
    safe = labels.masked_fill(~mask, 0)
    per_token = torch.gather(logits.float().log_softmax(-1), 2, safe.unsqueeze(-1)).squeeze(-1)
    total = (per_token * mask).sum(-1)
    return total / mask.sum(-1) if average else total


def token_counts(labels: torch.Tensor) -> torch.Tensor:
    return (labels[:, 1:] != IGNORE_INDEX).sum(-1)


def full_sequence_nll(
    logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """Mean next-token cross-entropy over every real token (prompt and answer), as TRL's ORPO/CPO NLL term."""
    labels = input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)[:, 1:]
    return F.cross_entropy(logits[:, :-1, :].reshape(-1, logits.size(-1)).float(), labels.reshape(-1))
