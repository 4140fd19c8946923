"""The bottleneck type's `AdapterMethod`: placement per transformer block, checkpoint names and json (this
framework's own format, `peft_framework_type: bottleneck`; see docs/bottleneck_format.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from peft_framework.adapters.base import DEFAULT_ADAPTER_NAME
from peft_framework.adapters.bottleneck.config import BottleneckConfig
from peft_framework.adapters.bottleneck.layer import BottleneckSublayer
from peft_framework.adapters.bottleneck.placement import (
    Placement,
    bottleneck_size,
    hidden_size_of,
    placements,
)
from peft_framework.adapters.method import AdapterRecord, WrapperMethod
from peft_framework.config.schema import AdapterConfigBase
from peft_framework.errors import AdapterError

FORMAT_VERSION = 1
_CONFIG_KEYS = ("variant", "mode", "reduction_factor", "non_linearity", "scaling", "residual", "layers")


@dataclass
class BottleneckRecord(AdapterRecord):
    placements: list[Placement] = field(default_factory=list)
    hidden_size: int = 0
    bottleneck_size: int = 0


class BottleneckMethod(WrapperMethod):
    name = label = "bottleneck"
    config_class, layer_class = BottleneckConfig, BottleneckSublayer
    disk_prefix = ""  # keys are '<sublayer path>.bottleneck.{down,up}.{weight,bias}'
    never_all_zero = ".bottleneck.down.weight"  # up starts at zero, down random
    description = "Bottleneck adapter layers (Houlsby/Pfeiffer, sequential or parallel); own checkpoint format, not mergeable"

    def plan(self, model: nn.Module, config: BottleneckConfig) -> BottleneckRecord:
        places = placements(model, config)
        hidden = hidden_size_of(model)
        return BottleneckRecord(
            config=config,
            targets=[p.path for p in places],
            placements=places,
            hidden_size=hidden,
            bottleneck_size=bottleneck_size(hidden, config.reduction_factor),
        )

    def wrap(self, module: nn.Module, path: str, record: BottleneckRecord) -> BottleneckSublayer:
        kind = next(p.kind for p in record.placements if p.path == path)
        return BottleneckSublayer(module, kind, record.hidden_size)

    def add_to_layer(
        self, layer: BottleneckSublayer, adapter_name: str, record: BottleneckRecord, path: str
    ) -> None:
        c: BottleneckConfig = record.config
        layer.add_adapter(
            adapter_name,
            record.bottleneck_size,
            c.resolved_non_linearity,
            c.resolved_scaling,
            c.mode,
            c.residual,
        )

    def layer_tensors(
        self, layer: BottleneckSublayer, adapter_name: str, record: BottleneckRecord
    ) -> dict[str, nn.Parameter]:
        return {f"bottleneck.{n}": p for n, p in layer.bottleneck[adapter_name].named_parameters()}

    def saved_fields(
        self, model: nn.Module, config: BottleneckConfig, rec: BottleneckRecord
    ) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "variant": config.variant,
            "mode": config.mode,
            "reduction_factor": config.reduction_factor,
            "non_linearity": config.resolved_non_linearity,
            "scaling": config.resolved_scaling,
            "residual": config.residual,
            "layers": config.layers,
            "hidden_size": rec.hidden_size,
            "bottleneck_size": rec.bottleneck_size,
            "placements": {p.path: p.position for p in rec.placements},
        }

    def config_from_saved(self, saved: dict[str, Any]) -> AdapterConfigBase:
        version = saved.get("format_version")
        if version != FORMAT_VERSION:
            raise AdapterError(
                f"adapter_config.json: bottleneck format_version {version!r} is not supported; allowed: {FORMAT_VERSION}"
            )
        fields = {key: saved[key] for key in _CONFIG_KEYS if key in saved}
        return self.config_from_fields({**fields, "modules_to_save": saved.get("modules_to_save")})

    def merge(
        self, model: nn.Module, adapter_name: str = DEFAULT_ADAPTER_NAME, *, exact: bool = False
    ) -> None:
        raise AdapterError(
            "adapter type 'bottleneck' cannot be merged into the base weights: its down -> activation -> up layers "
            "are non-linear. Export without merging (export.merge: false) and load the base model plus the adapter"
        )

    def unmerge(self, model: nn.Module, adapter_name: str = DEFAULT_ADAPTER_NAME) -> None:
        self.merge(model, adapter_name)
