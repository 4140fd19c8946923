"""Paired preference objectives on `data.kind: preference`: DPO (cDPO), IPO, ORPO, SimPO.

One policy forward per batch: the chosen and rejected sequences are padded together into one batch of
2 x batch rows, chosen first. DPO and IPO add one reference forward of the same batch under `reference`
(adapter off, no grad), unless the reference log-probs came precomputed in the batch (`ref_chosen_logps`,
`ref_rejected_logps`). The formulas and metric names are TRL 1.16's: DPOTrainer._compute_loss
(loss_type sigmoid / ipo), ORPOTrainer.odds_ratio_loss, CPOTrainer.cpo_loss (loss_type simpo); the
tests compare against them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from peft_framework.training.objectives.base import (
    Objective,
    Reference,
    forward_logits,
    full_sequence_nll,
    padded_batch,
    sequence_logps,
    token_counts,
)

REF_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")


@dataclass(frozen=True)
class PairCollator:
    pad_token_id: int

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        ids = [f["chosen_input_ids"] for f in features] + [f["rejected_input_ids"] for f in features]
        labels = [f["chosen_labels"] for f in features] + [f["rejected_labels"] for f in features]
        batch = padded_batch(ids, labels, self.pad_token_id)
        for name in REF_COLUMNS:
            if name in features[0]:
                batch[name] = torch.tensor([f[name] for f in features], dtype=torch.float32)
        return batch


def reward_metrics(chosen: torch.Tensor, rejected: torch.Tensor) -> dict[str, torch.Tensor]:
    chosen, rejected = chosen.detach(), rejected.detach()
    return {
        "rewards/chosen": chosen.mean(),
        "rewards/rejected": rejected.mean(),
        "rewards/accuracies": (chosen > rejected).float().mean(),
        "rewards/margins": (chosen - rejected).mean(),
    }


class Pairwise(Objective):
    columns = ("chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels")
    average_logps = False  # ORPO, SimPO: mean log-prob per answer token

    def collator(self, pad_token_id: int) -> PairCollator:
        return PairCollator(pad_token_id)

    def policy(self, model: torch.nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, per-sequence log-probs) of the 2B sequences, with grad."""
        logits = forward_logits(model, batch["input_ids"], batch["attention_mask"])
        return logits, sequence_logps(logits, batch["labels"], self.average_logps)

    def reference_logps(
        self, model: torch.nn.Module, batch: dict[str, Any], reference: Reference | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if REF_COLUMNS[0] in batch:
            return batch[REF_COLUMNS[0]], batch[REF_COLUMNS[1]]
        assert reference is not None, f"{self.name} needs a reference"
        with torch.no_grad(), reference():
            logits = forward_logits(model, batch["input_ids"], batch["attention_mask"])
            logps = sequence_logps(logits, batch["labels"], self.average_logps)
        return logps.chunk(2)

    def compute_loss(
        self, model: torch.nn.Module, batch: dict[str, Any], reference: Reference | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits, logps = self.policy(model, batch)
        chosen, rejected = logps.chunk(2)
        loss, chosen_rewards, rejected_rewards, extra = self.pair_loss(
            model, batch, logits, chosen, rejected, reference
        )
        metrics = reward_metrics(chosen_rewards, rejected_rewards)
        metrics["logps/chosen"] = chosen.detach().mean()
        metrics["logps/rejected"] = rejected.detach().mean()
        metrics.update(extra)
        return loss, metrics

    def pair_loss(self, model, batch, logits, chosen, rejected, reference):  # noqa: ANN001
        raise NotImplementedError


class _WithReference(Pairwise):
    needs_reference = True

    def __init__(self, beta: float = 0.1, label_smoothing: float = 0.0) -> None:
        self.beta, self.label_smoothing = beta, label_smoothing

    @classmethod
    def from_config(cls, tc: Any) -> Objective:
        return cls(beta=tc.beta, label_smoothing=tc.label_smoothing)

    def pair_loss(self, model, batch, logits, chosen, rejected, reference):  # noqa: ANN001
        ref_chosen, ref_rejected = self.reference_logps(model, batch, reference)
        chosen_logratios = chosen - ref_chosen
        rejected_logratios = rejected - ref_rejected
        losses = self.losses(chosen_logratios, rejected_logratios, batch)
        return (
            losses.mean(),
            self.beta * chosen_logratios.detach(),
            self.beta * rejected_logratios.detach(),
            {},
        )


class DPO(_WithReference):
    """DPO; with label_smoothing > 0 the conservative cDPO loss (TRL's sigmoid loss with label smoothing,
    as CPOTrainer still computes it)."""

    name = "dpo"

    def losses(self, chosen_logratios, rejected_logratios, batch):  # noqa: ANN001
        z = self.beta * (chosen_logratios - rejected_logratios)
        eps = self.label_smoothing
        return -F.logsigmoid(z) * (1 - eps) - F.logsigmoid(-z) * eps


class IPO(_WithReference):
    """IPO with the log-ratios averaged per answer token (TRL's normalisation, confirmed by the IPO authors)."""

    name = "ipo"

    def losses(self, chosen_logratios, rejected_logratios, batch):  # noqa: ANN001
        counts_chosen, counts_rejected = token_counts(batch["labels"]).chunk(2)
        delta = chosen_logratios / counts_chosen.clamp(min=1) - rejected_logratios / counts_rejected.clamp(
            min=1
        )
        return (delta - 1 / (2 * self.beta)) ** 2


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, numerically stable (as TRL's ORPO)."""
    return torch.where(x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


class ORPO(Pairwise):
    """ORPO: NLL of the chosen sequence (prompt and answer, as TRL) minus lambda * log sigmoid(log odds ratio)."""

    name = "orpo"
    average_logps = True

    def __init__(self, orpo_lambda: float = 0.1) -> None:
        self.beta = orpo_lambda

    @classmethod
    def from_config(cls, tc: Any) -> Objective:
        return cls(orpo_lambda=tc.orpo_lambda)

    def pair_loss(self, model, batch, logits, chosen, rejected, reference):  # noqa: ANN001
        n = chosen.size(0)
        nll = full_sequence_nll(logits[:n], batch["input_ids"][:n], batch["attention_mask"][:n])
        chosen, rejected = chosen.float(), rejected.float()
        log_odds = (chosen - rejected) - (_log1mexp(chosen) - _log1mexp(rejected))
        ratio = F.logsigmoid(log_odds)
        loss = nll - (self.beta * ratio).mean()
        extra = {
            "nll_loss": nll.detach(),
            "log_odds_ratio": ratio.detach().mean(),
            "log_odds_chosen": log_odds.detach().mean(),
        }
        return loss, self.beta * chosen.detach(), self.beta * rejected.detach(), extra


class SimPO(Pairwise):
    """SimPO (TRL CPOTrainer, loss_type simpo, cpo_alpha 0): length-normalised log-probs, margin gamma."""

    name = "simpo"
    average_logps = True

    def __init__(self, beta: float = 0.1, gamma: float = 0.5, label_smoothing: float = 0.0) -> None:
        self.beta, self.gamma, self.label_smoothing = beta, gamma, label_smoothing

    @classmethod
    def from_config(cls, tc: Any) -> Objective:
        return cls(beta=tc.beta, gamma=tc.simpo_gamma, label_smoothing=tc.label_smoothing)

    def pair_loss(self, model, batch, logits, chosen, rejected, reference):  # noqa: ANN001
        z = (chosen - rejected) - self.gamma / self.beta
        eps = self.label_smoothing
        losses = -F.logsigmoid(self.beta * z) * (1 - eps) - F.logsigmoid(-self.beta * z) * eps
        return losses.mean(), self.beta * chosen.detach(), self.beta * rejected.detach(), {}
