"""`adapter:` keys of LoRA (Hu et al. 2021). Names follow the YAML; `saved_config` maps them to peft's."""

from __future__ import annotations

import re
from typing import ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from peft_framework.adapters.lora import init_names as lora_init
from peft_framework.adapters.lora import patterns
from peft_framework.config.schema import AdapterConfigBase


class LoraConfig(AdapterConfigBase):
    adapts_parameters: ClassVar[bool] = True
    type: Literal["lora"] = "lora"
    r: int = Field(8, ge=1, description="rank of the update B @ A")
    alpha: float = Field(
        16.0, gt=0, description="scaling numerator: s = alpha / r (alpha / sqrt(r) with rsLoRA)"
    )
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on the LoRA branch input only")
    use_rslora: bool = False
    bias: Literal["none", "all", "lora_only"] = "none"
    init: str = Field(
        "kaiming",
        description="kaiming: A kaiming-uniform(a=sqrt(5)) as peft's default, B = 0; gaussian: A ~ N(0, 1/r), B = 0; "
        "pissa / pissa_niter_N: A, B from the top-r singular vectors of the base weight (exact SVD, or randomised "
        "with N iterations); olora: from its QR decomposition. pissa/olora leave the residual in the base weight "
        "while training and save a plain LoRA of rank 2r relative to the ORIGINAL base weights.",
    )
    use_dora: bool = Field(
        False, description="DoRA: a trained magnitude per output feature over the normalised W + s·BA"
    )
    trainable_token_indices: list[int] | dict[str, list[int]] | None = Field(
        None,
        description="Token embedding rows trained in full beside the LoRA (peft's trainable tokens): a list of "
        "token ids for the input embedding (a tied lm_head follows it), or {layer name: ids}, e.g. {embed_tokens: "
        "[...], lm_head: [...]} for an untied lm_head. Filled in for the tokens of model.add_tokens.",
    )

    rank_pattern: dict[str, int] | None = Field(
        None,
        description="Per-target ranks (peft's rank_pattern): {regex: r}, matched at the end of a module path, or of "
        "'<module path>.<parameter>' for target_parameters (e.g. {mlp.experts.down_proj: 4, layers.0.self_attn.q_proj: "
        "32}); the first matching key wins; other targets use r",
    )
    alpha_pattern: dict[str, float] | None = Field(
        None, description="Per-target alphas (peft's alpha_pattern), keys as rank_pattern's; others use alpha"
    )

    @field_validator("rank_pattern", "alpha_pattern")
    @classmethod
    def _patterns(cls, value: dict[str, float] | None, info: ValidationInfo) -> dict[str, float] | None:
        if not value:
            return None
        for key, number in value.items():
            try:
                re.compile(key)
            except re.error as exc:
                raise ValueError(
                    f"adapter.{info.field_name}.{key}: not a valid regex ({exc}); allowed: a Python regex"
                ) from None
            if number <= 0 or (info.field_name == "rank_pattern" and number < 1):
                raise ValueError(
                    f"adapter.{info.field_name}.{key}: {number}; allowed: "
                    + ("an integer rank >= 1" if info.field_name == "rank_pattern" else "a number > 0")
                )
        return value

    def rank_alpha(self, target: str) -> tuple[int, float]:
        """(r, alpha) of one adapted module path or '<module path>.<parameter>' (patterns.py)."""
        return patterns.rank_alpha(self.rank_pattern, self.alpha_pattern, target, self.r, self.alpha)

    @field_validator("trainable_token_indices")
    @classmethod
    def _token_ids(
        cls, value: list[int] | dict[str, list[int]] | None
    ) -> list[int] | dict[str, list[int]] | None:
        if not value:
            return None
        for ids in value.values() if isinstance(value, dict) else [value]:
            if not ids or min(ids) < 0 or len(set(ids)) != len(ids):
                raise ValueError(
                    f"adapter.trainable_token_indices: {ids!r}; allowed: a non-empty list of distinct token ids >= 0"
                )
        return value

    @field_validator("init")
    @classmethod
    def _known_init(cls, value: str) -> str:
        if not lora_init.is_valid(value):
            raise ValueError(
                f"adapter.init: {value!r} is not an initialisation; allowed: kaiming, gaussian, pissa, "
                "pissa_niter_N (N >= 1, e.g. pissa_niter_4), olora"
            )
        return value

    @model_validator(mode="after")
    def _parameters_without_variants(self) -> LoraConfig:
        if self.target_parameters and (self.use_dora or lora_init.mutates_base(self.init)):
            raise ValueError(
                f"adapter.target_parameters with adapter.use_dora: {self.use_dora}, adapter.init: {self.init!r} is "
                "not supported (peft's ParamWrapper has no DoRA/PiSSA/OLoRA either); allowed with target_parameters: "
                "use_dora false, init kaiming or gaussian"
            )
        return self

    @model_validator(mode="after")
    def _dora_with_plain_init(self) -> LoraConfig:
        if self.use_dora and lora_init.mutates_base(self.init):
            raise ValueError(
                f"adapter.init: {self.init!r} with adapter.use_dora: true is not supported (the saved adapter is "
                "converted to a plain LoRA on the original weights, which DoRA's magnitudes do not survive); "
                "allowed with use_dora: kaiming, gaussian"
            )
        return self
