"""Bottleneck adapter layers (Houlsby / Pfeiffer placements, sequential or parallel) for Llama-, GPT-2- and
BERT-style models. peft has no such type, so checkpoints use this framework's own format (same two files,
`peft_framework_type: bottleneck`; see docs/bottleneck_format.md). The adapter is non-linear and cannot be
merged into the base weights.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pydantic
import torch
from torch import nn

from peft_framework.adapters.base import DEFAULT_ADAPTER_NAME, AdapterMethod
from peft_framework.adapters.bottleneck import model as bn_model
from peft_framework.adapters.bottleneck.config import BottleneckConfig
from peft_framework.adapters.bottleneck.layer import BottleneckAdapter, BottleneckSublayer
from peft_framework.adapters.lora.model import effective_modules_to_save
from peft_framework.config.schema import AdapterConfigBase
from peft_framework.errors import AdapterError

__all__ = ["BottleneckAdapter", "BottleneckConfig", "BottleneckMethod", "BottleneckSublayer"]

FORMAT_VERSION = 1
_CONFIG_KEYS = ("variant", "mode", "reduction_factor", "non_linearity", "scaling", "residual", "layers")


def _config(config: AdapterConfigBase) -> BottleneckConfig:
    if not isinstance(config, BottleneckConfig):
        raise AdapterError(
            f"adapter.type: bottleneck needs a BottleneckConfig, got {type(config).__name__} ({config.type!r})"
        )
    return config


class BottleneckMethod(AdapterMethod):
    name: ClassVar[str] = "bottleneck"
    config_class: ClassVar[type[AdapterConfigBase]] = BottleneckConfig
    peft_type: ClassVar[str | None] = None
    mergeable: ClassVar[bool] = False
    description: ClassVar[str] = (
        "Bottleneck adapter layers (Houlsby/Pfeiffer, sequential or parallel); own checkpoint format, not mergeable"
    )

    # --- building -------------------------------------------------------------------------------
    def inject(
        self, model: nn.Module, config: AdapterConfigBase, adapter_name: str = DEFAULT_ADAPTER_NAME
    ) -> None:
        bn_model.inject(model, _config(config), adapter_name)

    # --- checkpoints ----------------------------------------------------------------------------
    def adapter_state_dict(
        self, model: nn.Module, adapter_name: str = DEFAULT_ADAPTER_NAME
    ) -> dict[str, torch.Tensor]:
        return {k: t.detach() for k, t in bn_model.adapter_tensors(model, adapter_name).items()}

    @torch.no_grad()
    def load_adapter_state_dict(
        self, model: nn.Module, state_dict: dict[str, torch.Tensor], adapter_name: str = DEFAULT_ADAPTER_NAME
    ) -> None:
        params = bn_model.adapter_tensors(model, adapter_name)
        missing = sorted(set(params) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(params))
        if missing or unexpected:
            raise AdapterError(
                f"bottleneck checkpoint does not fit adapter {adapter_name!r} (saved for another model or variant?)",
                [f"missing: {k}" for k in missing[:10]] + [f"unexpected: {k}" for k in unexpected[:10]],
            )
        wrong = [
            f"{k}: checkpoint {tuple(state_dict[k].shape)}, model {tuple(p.shape)}"
            for k, p in params.items()
            if state_dict[k].shape != p.shape
        ]
        if wrong:
            raise AdapterError("bottleneck checkpoint tensor shapes do not fit the model", wrong[:10])
        for key, param in params.items():
            param.copy_(state_dict[key])

    def validate_for_save(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Refuse adapters whose down projections are all zero (never true after init: ZeRO-3 not gathered)."""
        downs = [k for k in state_dict if k.endswith(".bottleneck.down.weight")]
        if downs and all(not bool(state_dict[k].any()) for k in downs):
            raise AdapterError(
                "refusing to save bottleneck adapter: every down projection is all zeros (sharded parameters, "
                "e.g. DeepSpeed ZeRO-3, must be gathered before saving)"
            )

    def _find_record(self, model: nn.Module, config: BottleneckConfig) -> bn_model.BottleneckRecord:
        adapters = bn_model.records(model)
        active = bn_model.active_adapter(model)
        matches = [n for n, rec in adapters.items() if rec.config == config]
        if not matches:
            raise AdapterError(
                "saved_config: this bottleneck config belongs to no adapter injected into the model"
            )
        return adapters[active if active in matches else matches[0]]

    def saved_config(
        self,
        config: AdapterConfigBase,
        *,
        base_model_name_or_path: str | None,
        task_type: str | None,
        model: nn.Module,
    ) -> dict[str, Any]:
        config = _config(config)
        rec = self._find_record(model, config)
        return {
            "peft_framework_type": self.name,
            "format_version": FORMAT_VERSION,
            "task_type": task_type,
            "base_model_name_or_path": base_model_name_or_path,
            "variant": config.variant,
            "mode": config.mode,
            "reduction_factor": config.reduction_factor,
            "non_linearity": config.resolved_non_linearity,
            "scaling": config.resolved_scaling,
            "residual": config.residual,
            "layers": config.layers,
            "modules_to_save": effective_modules_to_save(model, config),
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
        fields["modules_to_save"] = saved.get("modules_to_save")
        try:
            return BottleneckConfig(**fields)
        except pydantic.ValidationError as exc:
            raise AdapterError(
                "adapter_config.json has invalid bottleneck values",
                [
                    f"{'.'.join(map(str, e['loc'])) or 'config'}={e.get('input')!r}: {e['msg']}"
                    for e in exc.errors()
                ],
            ) from exc

    # --- merge ----------------------------------------------------------------------------------
    def merge(self, model: nn.Module, adapter_name: str = DEFAULT_ADAPTER_NAME) -> None:
        raise AdapterError(
            "adapter type 'bottleneck' cannot be merged into the base weights: its down -> activation -> up layers "
            "are non-linear. Export without merging (export.merge: false) and load the base model plus the adapter"
        )

    def unmerge(self, model: nn.Module, adapter_name: str = DEFAULT_ADAPTER_NAME) -> None:
        self.merge(model, adapter_name)

    def unload(self, model: nn.Module) -> nn.Module:
        return bn_model.unload(model)

    # --- multi-adapter --------------------------------------------------------------------------
    def set_active(self, model: nn.Module, adapter_name: str | None) -> None:
        bn_model.set_active(model, adapter_name)

    def adapter_names(self, model: nn.Module) -> list[str]:
        return list(bn_model.records(model))

    def active_adapter(self, model: nn.Module) -> str | None:
        return bn_model.active_adapter(model)
