"""Call the reward functions on a batch of completions, as TRL's GRPOTrainer does, without hiding failures.

Per function: one call on the whole batch. A value that is not a finite number (or a call that raises, or
returns the wrong number of values) is a failure: NaN in `per_function`, a warning naming the function, the
prompt's row and the value or exception, and one more in the run's failure count. A batch call that raises
is retried row by row, so the failing rows are named and the others still scored. None is TRL's "this
reward does not apply to this row": NaN too, but not a failure. `total` is the weighted sum over functions
ignoring NaN (TRL's nansum). Once the count passes `max_failures` the run stops with StageFailed.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from peft_framework.errors import StageFailed
from peft_framework.rewards.loading import Reward

log = logging.getLogger(__name__)

_MAX_VALUE_CHARS = 200


@dataclass
class RewardResult:
    per_function: dict[str, torch.Tensor]  # name -> [n], NaN where failed or not applicable
    total: torch.Tensor  # [n]
    failures: int  # cumulative over the scorer's life (the run)
    new_failures: list[str] = field(default_factory=list)  # this call's failure messages


def _show(value: Any) -> str:
    text = repr(value)
    if len(text) > _MAX_VALUE_CHARS:
        text = text[: _MAX_VALUE_CHARS - 3] + "..."
    return f"{text} ({type(value).__name__})"


def _as_list(values: Any) -> Any:
    """A tensor or numpy array of values as a list (other values unchanged)."""
    if isinstance(values, torch.Tensor) or type(values).__module__ == "numpy":
        return values.tolist()
    return values


def _as_float(value: Any) -> float | None:
    """The value as a float, None for None; ValueError (with a description) for anything else."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, numbers.Real):
        number = float(value)
        if math.isfinite(number):
            return number
        raise ValueError(f"returned {_show(value)}, not a finite number")
    raise ValueError(f"returned {_show(value)}, not a number")


class RewardScorer:
    def __init__(self, rewards: Sequence[Reward], max_failures: int = 0) -> None:
        self.rewards = list(rewards)
        self.max_failures = max_failures
        self.failures = 0
        self.weights = torch.tensor([r.weight for r in self.rewards], dtype=torch.float32)

    def _call(
        self,
        reward: Reward,
        prompts: list,
        completions: list,
        columns: dict[str, list],
        extra: dict[str, Any],
    ) -> tuple[list[Any], list[str | None]]:
        """(values, per-row error or None): the batch call, or row by row if the batch call raises."""
        n = len(completions)
        try:
            values = reward(prompts, completions, **columns, **extra)
        except Exception as exc:  # noqa: BLE001 - a user function's error is reported per row below
            log.debug("reward %r raised on the batch (%r); calling it row by row", reward.name, exc)
        else:
            values = _as_list(values)
            if isinstance(values, (list, tuple)) and len(values) == n:
                return list(values), [None] * n
            got = f"{len(values)} values" if isinstance(values, (list, tuple)) else _show(values)
            return [None] * n, [f"returned {got} for a batch of {n} completions"] * n
        out: list[Any] = []
        errors: list[str | None] = []
        for i in range(n):
            row_columns = {k: [v[i]] for k, v in columns.items()}
            try:
                one = reward(prompts[i : i + 1], completions[i : i + 1], **row_columns, **extra)
                one = _as_list(one)
                if not isinstance(one, (list, tuple)) or len(one) != 1:
                    raise ValueError(f"returned {_show(one)} for 1 completion")
                out.append(one[0])
                errors.append(None)
            except Exception as exc:  # noqa: BLE001
                out.append(None)
                errors.append(f"raised {type(exc).__name__}: {exc}")
        return out, errors

    def score(
        self,
        prompts: list,
        completions: list,
        columns: dict[str, list] | None = None,
        row_ids: Sequence[Any] | None = None,
        **extra: Any,
    ) -> RewardResult:
        """Rewards of `completions` (completion i answers prompts[i]; row_ids[i] names its data row).
        `columns` are the rows' data columns (one value per completion); `extra` keywords go to every
        function unchanged (e.g. completion_ids)."""
        n = len(completions)
        columns = columns or {}
        row_ids = list(row_ids) if row_ids is not None else list(range(n))
        per_function: dict[str, torch.Tensor] = {}
        messages: list[str] = []
        for reward in self.rewards:
            values, errors = self._call(reward, prompts, completions, columns, extra)
            scores = torch.full((n,), float("nan"))
            for i, (value, error) in enumerate(zip(values, errors)):
                if error is None:
                    try:
                        number = _as_float(value)
                    except ValueError as exc:
                        error = str(exc)
                    else:
                        if number is not None:
                            scores[i] = number
                        continue
                message = f"reward {reward.name!r} failed on row {row_ids[i]}: {error}"
                log.warning("%s", message)
                messages.append(message)
            per_function[reward.name] = scores
        self.failures += len(messages)
        if per_function:
            stacked = torch.stack(list(per_function.values()), dim=1)
            total = (stacked * self.weights.unsqueeze(0)).nansum(dim=1)
        else:
            total = torch.zeros(n)
        if self.failures > self.max_failures:
            shown = messages[-5:] or ["(earlier failures are in the log)"]
            raise StageFailed(
                f"train.max_reward_failures: {self.failures} reward values failed, more than the "
                f"{self.max_failures} allowed; raise train.max_reward_failures or fix the reward function. "
                "Last failures:",
                shown,
            )
        return RewardResult(per_function, total, self.failures, messages)
