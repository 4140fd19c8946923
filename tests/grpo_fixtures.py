"""Shared pieces of the GRPO tests: tiny reward functions and a scorer with the interface of
`peft_framework.rewards.RewardScorer` (per_function / total / failures), small enough to read at a glance."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch


@dataclass(frozen=True)
class ToyReward:
    name: str
    weight: float
    fn: Any

    def __call__(self, prompts, completions, **columns):
        return self.fn(prompts, completions, **columns)


def share_of_letter(letter: str):
    def reward(prompts, completions, **columns):
        return [c.count(letter) / max(len(c), 1) for c in completions]

    return reward


def short(prompts, completions, **columns):
    return [None if i % 5 == 0 else -len(c) / 10 for i, c in enumerate(completions)]  # None: not applicable


class ToyScorer:
    def __init__(self, rewards) -> None:
        self.rewards = list(rewards)
        self.failures = 0
        self.calls: list[dict[str, Any]] = []

    def score(self, prompts, completions, columns=None, row_ids=None):
        self.calls.append(
            {"prompts": prompts, "completions": completions, "columns": columns, "row_ids": row_ids}
        )
        per = {
            r.name: torch.tensor(
                [float("nan") if v is None else float(v) for v in r(prompts, completions, **(columns or {}))]
            )
            for r in self.rewards
        }
        weights = torch.tensor([r.weight for r in self.rewards])
        total = (torch.stack(list(per.values()), 1) * weights).nansum(1)
        return SimpleNamespace(per_function=per, total=total, failures=self.failures)
