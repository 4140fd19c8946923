"""Evaluate on preference data: how each model ranks the test split's answers.

Per model (base, then base + adapter), from the summed log-probs of each answer given its prompt:
- `preference_accuracy` (pairs): the share of pairs whose chosen answer the model finds more likely than the
  rejected one (its implicit reward with a uniform reference), so the base model sits near chance on data
  it has no preference for;
- `logps_chosen` / `logps_rejected` (pairs) or `logps_desirable` / `logps_undesirable` (unpaired): means;
- `reward_margin`: the mean DPO reward margin train.beta x [(log pi - log pi_base)(chosen) - (same)(rejected)]
  against the base model (the adapter-off reference): 0 for the base by definition; for unpaired data the
  mean reward of desirable rows minus that of undesirable ones;
- `reward_accuracy` (pairs): the share of pairs with a positive margin (TRL's rewards/accuracies).
"""

from __future__ import annotations

import statistics
from typing import Any

import torch

from peft_framework.training.objectives.base import forward_logits, sequence_logps
from peft_framework.training.objectives.kto import UnpairedCollator
from peft_framework.training.objectives.pairwise import PairCollator


@torch.no_grad()
def answer_logps(
    model, test, kind: str, pad_token_id: int, batch_size: int, device
) -> list[dict[str, float]]:
    """Per row: {"chosen": .., "rejected": ..} or {"completion": .., "label": ..} summed log-probs."""
    rows: list[dict[str, float]] = []
    collate = (PairCollator if kind == "preference" else UnpairedCollator)(pad_token_id)
    for start in range(0, len(test), batch_size):
        features = [test[i] for i in range(start, min(start + batch_size, len(test)))]
        batch = collate(features)
        logits = forward_logits(model, batch["input_ids"].to(device), batch["attention_mask"].to(device))
        logps = sequence_logps(logits, batch["labels"].to(device)).cpu().tolist()
        n = len(features)
        if kind == "preference":
            rows += [{"chosen": c, "rejected": r} for c, r in zip(logps[:n], logps[n:])]
        else:
            rows += [{"completion": lp, "label": bool(f["label"])} for lp, f in zip(logps, features)]
    return rows


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def score_preference(model, test, config, device, pad_token_id: int) -> tuple[dict[str, float], list[dict]]:
    model.eval()
    rows = answer_logps(model, test, config.data.kind, pad_token_id, config.eval.batch_size, device)
    if config.data.kind == "preference":
        metrics = {
            "preference_accuracy": _mean([float(r["chosen"] > r["rejected"]) for r in rows]),
            "logps_chosen": _mean([r["chosen"] for r in rows]),
            "logps_rejected": _mean([r["rejected"] for r in rows]),
        }
        out = [{"logps_chosen": r["chosen"], "logps_rejected": r["rejected"]} for r in rows]
    else:
        metrics = {
            "logps_desirable": _mean([r["completion"] for r in rows if r["label"]]),
            "logps_undesirable": _mean([r["completion"] for r in rows if not r["label"]]),
        }
        out = [{"logps": r["completion"], "label": r["label"]} for r in rows]
    return metrics, out


def add_reward_margins(
    results: dict[str, dict[str, float]], per_model: dict[str, list[dict[str, Any]]], kind: str, beta: float
) -> None:
    """reward_margin (and reward_accuracy for pairs) of each model against the base model, in place."""
    base = per_model["base"]
    for name, rows in per_model.items():
        if kind == "preference":
            margins = [
                beta * ((r["logps_chosen"] - b["logps_chosen"]) - (r["logps_rejected"] - b["logps_rejected"]))
                for r, b in zip(rows, base)
            ]
            results[name]["reward_margin"] = _mean(margins)
            results[name]["reward_accuracy"] = _mean([float(m > 0) for m in margins])
            for row, margin in zip(rows, margins):
                row["reward_margin"] = margin
        else:
            rewards = [beta * (r["logps"] - b["logps"]) for r, b in zip(rows, base)]
            good = [x for x, r in zip(rewards, rows) if r["label"]]
            bad = [x for x, r in zip(rewards, rows) if not r["label"]]
            results[name]["reward_margin"] = _mean(good) - _mean(bad)
