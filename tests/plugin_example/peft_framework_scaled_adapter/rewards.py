"""`train.rewards: [{name: starts_with_answer, column: answer}]` — a third-party reward function.

Registered under the `peft_framework.rewards` entry-point group (pyproject.toml). A class: the entry's options
are its keyword arguments, `columns` tells data preparation which data columns every row must have, and an
instance is called like a TRL reward function.
"""

from __future__ import annotations

from typing import Any


class StartsWithAnswer:
    """1.0 when the completion (stripped, case-folded) starts with the row's answer, else 0.0."""

    def __init__(self, column: str = "answer") -> None:
        self.column = column
        self.columns = (column,)

    def __call__(self, prompts: list[str], completions: list[str], **columns: Any) -> list[float]:
        answers = columns[self.column]
        return [
            float(c.strip().casefold().startswith(str(a).strip().casefold()))
            for c, a in zip(completions, answers)
        ]
