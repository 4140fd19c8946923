"""`adapter:` keys of LoRA (Hu et al. 2021). Names follow the YAML; `saved_config` maps them to peft's."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from peft_framework.config.schema import AdapterConfigBase


class LoraConfig(AdapterConfigBase):
    type: Literal["lora"] = "lora"
    r: int = Field(8, ge=1, description="rank of the update B @ A")
    alpha: float = Field(
        16.0, gt=0, description="scaling numerator: s = alpha / r (alpha / sqrt(r) with rsLoRA)"
    )
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on the LoRA branch input only")
    use_rslora: bool = False
    bias: Literal["none", "all", "lora_only"] = "none"
    init: Literal["kaiming", "gaussian"] = Field(
        "kaiming",
        description="A's init: kaiming-uniform(a=sqrt(5)) as peft's default, or N(0, 1/r); B starts at 0",
    )
