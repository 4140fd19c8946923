"""`adapter:` keys of bottleneck adapter layers (Houlsby et al. 2019; Pfeiffer et al. 2021; parallel: He et
al. 2022). Names follow AdapterHub's `adapters` library where it has one."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from peft_framework.config.schema import AdapterConfigBase

NonLinearity = Literal["relu", "swish", "silu", "gelu", "gelu_new", "tanh", "sigmoid", "identity"]

#: AdapterHub's defaults: Houlsby uses swish, Pfeiffer relu; parallel adapters scale by 4
DEFAULT_NON_LINEARITY = {"houlsby": "swish", "pfeiffer": "relu"}
DEFAULT_SCALING = {"sequential": 1.0, "parallel": 4.0}


class BottleneckConfig(AdapterConfigBase):
    type: Literal["bottleneck"] = "bottleneck"
    # placed per block by `variant`: a file's target_modules/exclude_modules (e.g. the LoRA demo's) are the
    # other types' keys to this type, so `-S adapter.type=bottleneck` works on the same file
    unused_base_keys: ClassVar[frozenset[str]] = frozenset({"target_modules", "exclude_modules"})
    variant: Literal["houlsby", "pfeiffer"] = Field(
        "pfeiffer",
        description="where adapters go in every transformer block: 'houlsby' after the attention and after the "
        "feed-forward sublayer, 'pfeiffer' after the feed-forward sublayer only",
    )
    mode: Literal["sequential", "parallel"] = Field(
        "sequential",
        description="'sequential': the adapter transforms the sublayer's output, h + s*f(h); 'parallel': it runs "
        "beside the sublayer on the sublayer's input x, output + s*f(x)",
    )
    reduction_factor: float = Field(
        16.0, ge=1.0, description="bottleneck width = hidden_size // reduction_factor (at least 1)"
    )
    non_linearity: NonLinearity | None = Field(
        None,
        description="activation between the down and up projection; null: swish (houlsby) or relu (pfeiffer)",
    )
    scaling: float | None = Field(
        None, description="multiplies the adapter's output; null: 1.0 (sequential) or 4.0 (parallel)"
    )
    residual: bool = Field(
        True,
        description="sequential mode: add the adapter's input back (h + s*f(h)). false: the adapter's output "
        "replaces the sublayer output (s*f(h)), so the model changes at initialisation (ablations only)",
    )
    layers: list[int] | None = Field(
        None,
        description="indices of the transformer blocks to adapt (negative counts from the end); null: all",
    )

    @model_validator(mode="after")
    def _placement_keys(self) -> BottleneckConfig:
        problems = []
        for key in ("target_modules", "exclude_modules"):
            if getattr(self, key) is not None:
                problems.append(
                    f"adapter.{key}: bottleneck adapters are placed per transformer block by adapter.variant, "
                    f"not by module name; allowed: null (choose blocks with adapter.layers)"
                )
        if not self.residual and self.mode == "parallel":
            problems.append(
                "adapter.residual: false only applies to mode 'sequential' (a parallel adapter always keeps the "
                "sublayer output); allowed: true"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def resolved_non_linearity(self) -> str:
        return self.non_linearity or DEFAULT_NON_LINEARITY[self.variant]

    @property
    def resolved_scaling(self) -> float:
        return self.scaling if self.scaling is not None else DEFAULT_SCALING[self.mode]
