"""`train.grpo`: the settings of the online objective GRPO (`train.objective: grpo`).

Names and defaults are TRL 1.16's GRPOConfig (trl/trainer/grpo_config.py), so a TRL recipe carries over:
num_generations 8, max_completion_length 512, temperature 1.0, top_p 1.0, beta 0.0 (no reference pass),
epsilon 0.2 (epsilon_high: same as epsilon), loss_type dapo, scale_rewards group, num_iterations 1.
One difference in meaning: `train.batch_size` counts prompts here; each step trains on
batch_size x num_generations completions (TRL's per_device_train_batch_size counts completions).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from peft_framework.config.section import Section

LOSS_TYPES = ("grpo", "dr_grpo", "bnpo", "dapo")
SCALE_REWARDS = ("group", "batch", "none")


class GrpoConfig(Section):
    num_generations: int = Field(
        8, ge=2, description="Completions sampled per prompt (the group whose rewards are normalised)."
    )
    max_completion_length: int = Field(512, ge=1, description="Tokens generated at most per completion.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling; 1.0: all tokens.")
    beta: float = Field(
        0.0,
        ge=0,
        description="KL coefficient against the reference (the adapter switched off); 0: no reference pass.",
    )
    epsilon: float = Field(
        0.2, gt=0, description="Clipping of the importance ratio: lower bound 1 - epsilon."
    )
    epsilon_high: float | None = Field(
        None, gt=0, description="Upper bound 1 + epsilon_high (DAPO suggests 0.28); null: same as epsilon."
    )
    loss_type: Literal["grpo", "dr_grpo", "bnpo", "dapo"] = Field(
        "dapo",
        description="How token losses are averaged (TRL's names): grpo (per sequence, then over sequences), "
        "bnpo (over the batch's tokens), dr_grpo (over batch x max_completion_length), dapo (over the tokens "
        "of the whole accumulated batch).",
    )
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group",
        description="Advantages divided by the reward std of the group, of the batch, or not at all (Dr. GRPO).",
    )
    num_iterations: int = Field(
        1,
        ge=1,
        description="Policy updates per generation batch (TRL's mu): each batch of prompts is reused.",
    )
    mask_truncated_completions: bool = Field(
        False, description="Completions cut at max_completion_length (no EOS) are left out of the loss."
    )
    log_completions: int = Field(
        4,
        ge=0,
        description="Sampled completions (with their rewards) kept per logging step for the UI table.",
    )

    @field_validator("scale_rewards", mode="before")
    @classmethod
    def _bool_scale(cls, value: object) -> object:
        return {True: "group", False: "none"}.get(value, value) if isinstance(value, bool) else value
