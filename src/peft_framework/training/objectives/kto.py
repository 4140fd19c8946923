"""KTO on `data.kind: unpaired_preference` (TRL 1.16 KTOTrainer, loss_type kto).

The KL estimate pairs each prompt with the batch's completion one place before it (TRL's rotation by one),
scored by the policy and the reference without grad: kl = clamp(mean(policy - reference), 0).
Forwards per batch: the policy with grad; the policy on the KL pairs without grad; and one reference
forward of the batch and the KL pairs together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from peft_framework.training.objectives.base import (
    IGNORE_INDEX,
    Objective,
    Reference,
    forward_logits,
    padded_batch,
    sequence_logps,
)


def _split(ids: list[int], labels: list[int]) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids) of a prepared row."""
    cut = next((i for i, t in enumerate(labels) if t != IGNORE_INDEX), len(labels))
    return list(ids[:cut]), list(ids[cut:])


@dataclass(frozen=True)
class UnpairedCollator:
    pad_token_id: int

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        ids = [f["input_ids"] for f in features]
        labels = [f["labels"] for f in features]
        batch = padded_batch(ids, labels, self.pad_token_id)
        batch["label"] = torch.tensor([bool(f["label"]) for f in features])
        parts = [_split(i, lab) for i, lab in zip(ids, labels)]
        completions = [c for _, c in parts]
        completions = completions[-1:] + completions[:-1]  # prompt i with completion i - 1
        kl_ids = [p + c for (p, _), c in zip(parts, completions)]
        kl_labels = [[IGNORE_INDEX] * len(p) + c for (p, _), c in zip(parts, completions)]
        kl = padded_batch(kl_ids, kl_labels, self.pad_token_id)
        batch.update({f"KL_{k}": v for k, v in kl.items()})
        return batch


def _concat(a: torch.Tensor, b: torch.Tensor, value: int) -> torch.Tensor:
    length = max(a.size(1), b.size(1))
    pad = [torch.nn.functional.pad(t, (0, length - t.size(1)), value=value) for t in (a, b)]
    return torch.cat(pad)


class KTO(Objective):
    name = "kto"
    needs_reference = True
    columns = ("input_ids", "labels", "label")

    def __init__(
        self, beta: float = 0.1, desirable_weight: float = 1.0, undesirable_weight: float = 1.0
    ) -> None:
        self.beta, self.desirable_weight, self.undesirable_weight = beta, desirable_weight, undesirable_weight

    @classmethod
    def from_config(cls, tc: Any) -> Objective:
        return cls(tc.beta, tc.kto_desirable_weight, tc.kto_undesirable_weight)

    def collator(self, pad_token_id: int) -> UnpairedCollator:
        return UnpairedCollator(pad_token_id)

    def compute_loss(
        self, model: torch.nn.Module, batch: dict[str, Any], reference: Reference | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logps = sequence_logps(
            forward_logits(model, batch["input_ids"], batch["attention_mask"]), batch["labels"]
        )
        with torch.no_grad():
            kl_logps = sequence_logps(
                forward_logits(model, batch["KL_input_ids"], batch["KL_attention_mask"]), batch["KL_labels"]
            )
            assert reference is not None, "kto needs a reference"
            with reference():
                both = forward_logits(
                    model,
                    _concat(batch["input_ids"], batch["KL_input_ids"], 0),
                    _concat(batch["attention_mask"], batch["KL_attention_mask"], 0),
                )
                ref_all = sequence_logps(both, _concat(batch["labels"], batch["KL_labels"], IGNORE_INDEX))
        n = logps.size(0)
        ref_logps, ref_kl_logps = ref_all[:n], ref_all[n:]
        kl = (kl_logps - ref_kl_logps).mean().clamp(min=0)
        desirable = batch["label"].to(logps.device).bool()
        logratios = logps - ref_logps
        chosen_lr, rejected_lr = logratios[desirable], logratios[~desirable]
        chosen_losses = 1 - torch.sigmoid(self.beta * (chosen_lr - kl))
        rejected_losses = 1 - torch.sigmoid(self.beta * (kl - rejected_lr))
        losses = torch.cat((self.desirable_weight * chosen_losses, self.undesirable_weight * rejected_losses))
        metrics: dict[str, torch.Tensor] = {"kl": kl.detach()}
        if chosen_lr.numel():
            metrics["rewards/chosen"] = self.beta * chosen_lr.detach().mean()
            metrics["logps/chosen"] = logps[desirable].detach().mean()
        if rejected_lr.numel():
            metrics["rewards/rejected"] = self.beta * rejected_lr.detach().mean()
            metrics["logps/rejected"] = logps[~desirable].detach().mean()
        if chosen_lr.numel() and rejected_lr.numel():
            metrics["rewards/margins"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
        return losses.nanmean(), metrics
