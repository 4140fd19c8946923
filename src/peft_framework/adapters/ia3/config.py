"""`adapter:` keys of (IA)³ (Liu et al. 2022). Names are peft's IA3Config's."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from peft_framework.config.schema import AdapterConfigBase


class IA3Config(AdapterConfigBase):
    type: Literal["ia3"] = "ia3"
    feedforward_modules: str | list[str] | None = Field(
        None,
        description="Targets scaled on their input (feed-forward down projections) instead of their output: "
        "names (suffix match, as peft) or a regex; a subset of target_modules. null: the architecture's default "
        "(peft's table), e.g. ['down_proj'] for Llama.",
    )
    init_ia3_weights: bool = Field(
        True,
        description="vectors start at ones (the adapted model equals the base); false: random (tests only)",
    )

    @model_validator(mode="after")
    def _feedforward_subset_of_targets(self) -> IA3Config:
        ff, targets = self.feedforward_modules, self.target_modules
        if isinstance(ff, list) and isinstance(targets, list):
            extra = sorted(set(ff) - set(targets))
            if extra:
                raise ValueError(
                    f"adapter.feedforward_modules: {extra} are not in adapter.target_modules {targets}; "
                    f"allowed: a subset of target_modules"
                )
        return self
