"""`adapter:` keys of AdaLoRA (Zhang et al. 2023). Names follow peft's AdaLoraConfig, except the LoRA keys
shared with our LoraConfig (`alpha`, `dropout`); `saved_config` maps them to peft's names."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from peft_framework.config.schema import AdapterConfigBase


class AdaLoraConfig(AdapterConfigBase):
    type: Literal["adalora"] = "adalora"
    init_r: int = Field(
        12, ge=1, description="initial rank of every adapted matrix (P: r x in, Λ: r, Q: out x r)"
    )
    target_r: int = Field(
        8,
        ge=0,
        description="average rank left after pruning: the final budget is target_r x number of modules",
    )
    alpha: float = Field(
        8.0, gt=0, description="scaling numerator: the update is scaled by alpha / init_r (peft)"
    )
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on the adapter branch input only")
    tinit: int = Field(0, ge=0, description="warm-up optimizer steps before any rank is pruned")
    tfinal: int = Field(0, ge=0, description="final optimizer steps with the rank pattern frozen")
    deltaT: int = Field(1, ge=1, description="re-allocate the ranks every deltaT optimizer steps")
    beta1: float = Field(0.85, gt=0.0, lt=1.0, description="EMA coefficient of the sensitivity |p * grad|")
    beta2: float = Field(0.85, gt=0.0, lt=1.0, description="EMA coefficient of the uncertainty")
    orth_reg_weight: float = Field(
        0.5,
        ge=0.0,
        description="weight of the orthogonality penalty ||PPᵀ - I|| + ||QᵀQ - I|| added to the loss",
    )
    total_step: int | None = Field(
        None, ge=1, description="optimizer steps of the budget schedule; null: the training run's total steps"
    )
    rank_pattern: dict[str, list[bool]] | None = Field(
        None,
        description="kept ranks per module ('<module path>.lora_E' -> init_r booleans); written by training, "
        "read when loading a pruned checkpoint. Leave null to train a fresh adapter.",
    )

    @model_validator(mode="after")
    def _schedule_is_possible(self) -> AdaLoraConfig:
        problems = []
        if self.target_r > self.init_r:
            problems.append(
                f"adapter.target_r: {self.target_r} is larger than adapter.init_r ({self.init_r}); "
                f"allowed: 0 <= target_r <= init_r"
            )
        if self.total_step is not None and self.tinit >= self.total_step - self.tfinal:
            problems.append(
                f"adapter.tinit + adapter.tfinal ({self.tinit} + {self.tfinal}) leaves no budgeting phase within "
                f"adapter.total_step ({self.total_step}); allowed: tinit + tfinal < total_step"
            )
        if self.rank_pattern is not None:
            for key, mask in self.rank_pattern.items():
                if len(mask) != self.init_r:
                    problems.append(
                        f"adapter.rank_pattern.{key}: {len(mask)} entries; allowed: exactly init_r ({self.init_r})"
                    )
        if problems:
            raise ValueError("; ".join(problems))
        return self
