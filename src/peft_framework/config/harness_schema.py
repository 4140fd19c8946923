"""`eval.harness`: EleutherAI's lm-evaluation-harness on the base model and on base + adapter."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from peft_framework.config.section import Section

#: the harness stage's outputs (fixed, like the promote gate's, so dvc.yaml names them for every preset)
REPORT_PATH = "reports/harness.json"
"""Flat numbers: base.<task>.<metric>, adapter.<task>.<metric>, delta.<task>.<metric>, num_samples.<task>."""
SAMPLES_DIR = "reports/harness"
"""Per-sample logs (<model>/<task>.jsonl), lm-eval's results.json and a manifest; replaced as a whole."""


class HarnessConfig(Section):
    """Benchmarks scored by lm-evaluation-harness (pip install 'peft-framework[eval]'). Empty `tasks`: off."""

    tasks: list[str] = Field(
        default_factory=list,
        description="lm-eval task, group or tag names (e.g. arc_easy, hellaswag, or a task of include_path); "
        "empty: the harness stage writes an empty report and loads nothing.",
    )
    num_fewshot: int | None = Field(
        None,
        ge=0,
        description="Few-shot examples per prompt; null: each task's own default (0 if it has none).",
    )
    limit: int | float | None = Field(
        None,
        gt=0,
        description="Score at most this many documents per task (a number < 1: that fraction); null: all.",
    )
    batch_size: int = Field(8, ge=1, description="Requests per forward pass.")
    include_path: str | None = Field(
        None,
        description="A directory of local task YAMLs (lm-eval's --include_path), relative to the project "
        "root; its tasks take precedence over built-in ones of the same name. The project ships harness/tasks.",
    )
    cache_dir: str = Field(
        ".cache/harness",
        description="Results kept by the adapter weights' hash, the model section and the task config: an "
        "unchanged combination is not scored again.",
    )

    @field_validator("tasks")
    @classmethod
    def _task_names(cls, value: list[str]) -> list[str]:
        bad = [i for i, name in enumerate(value) if not name.strip() or name != name.strip()]
        if bad:
            raise ValueError(
                f"eval.harness.tasks[{bad[0]}]: {value[bad[0]]!r}; allowed: a task name without surrounding spaces"
            )
        if len(set(value)) != len(value):
            twice = sorted({n for n in value if value.count(n) > 1})
            raise ValueError(f"eval.harness.tasks: {twice} listed twice; allowed: each task once")
        return value

    @field_validator("limit")
    @classmethod
    def _limit(cls, value: int | float | None) -> int | float | None:
        if isinstance(value, float) and value >= 1:
            if not value.is_integer():
                raise ValueError(
                    f"eval.harness.limit: {value}; allowed: a whole number of documents, or a fraction below 1"
                )
            return int(value)
        return value


def harness_problems(config: Any) -> list[str]:
    """Cross-section checks: lm-eval scores causal language models only."""
    harness = config.eval.harness
    if harness.tasks and config.model.task != "causal_lm":
        return [
            f"eval.harness.tasks: {harness.tasks} set, but model.task is {config.model.task!r}; lm-evaluation-"
            "harness scores causal language models; allowed: model.task causal_lm, or eval.harness.tasks: []"
        ]
    return []
