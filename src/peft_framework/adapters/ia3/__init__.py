"""(IA)³ (Liu et al. 2022): learned vectors that rescale keys, values and feed-forward activations, with
checkpoints in HuggingFace peft's format (peft_type IA3).

    method = IA3Method()
    method.inject(model, IA3Config())   # Llama: k_proj, v_proj (output side), down_proj (input side)
"""

from __future__ import annotations

from typing import Any, ClassVar

import pydantic
import torch
from torch import nn

from peft_framework.adapters.base import DEFAULT_ADAPTER_NAME, AdapterMethod
from peft_framework.adapters.ia3 import model as ia3_model
from peft_framework.adapters.ia3.config import IA3Config
from peft_framework.adapters.ia3.layer import IA3Linear
from peft_framework.adapters.lora.model import effective_modules_to_save
from peft_framework.config.schema import AdapterConfigBase
from peft_framework.errors import AdapterError

__all__ = ["IA3Config", "IA3Linear", "IA3Method"]

_UNSUPPORTED_UNLESS: dict[str, tuple[Any, ...]] = {
    "layers_to_transform": (None, []),
}


def _config(config: AdapterConfigBase) -> IA3Config:
    if not isinstance(config, IA3Config):
        raise AdapterError(
            f"adapter.type: IA3 needs an IA3Config, got {type(config).__name__} ({config.type!r})"
        )
    return config


def _listify(value: Any) -> Any:
    return sorted(value) if isinstance(value, (list, tuple, set)) else value


class IA3Method(AdapterMethod):
    name: ClassVar[str] = "ia3"
    config_class: ClassVar[type[AdapterConfigBase]] = IA3Config
    peft_type: ClassVar[str | None] = "IA3"
    mergeable: ClassVar[bool] = True
    quantized_bases: ClassVar[bool] = True  # wraps bitsandbytes 4-/8-bit linears (adapters/base_layers.py)
    description: ClassVar[str] = (
        "IA3: learned scaling of keys, values and feed-forward inputs (peft-compatible)"
    )

    # --- building -------------------------------------------------------------------------------
    def inject(
        self, model: nn.Module, config: AdapterConfigBase, adapter_name: str = DEFAULT_ADAPTER_NAME
    ) -> None:
        ia3_model.inject(model, _config(config), adapter_name)

    # --- checkpoints ----------------------------------------------------------------------------
    def adapter_state_dict(
        self, model: nn.Module, adapter_name: str = DEFAULT_ADAPTER_NAME
    ) -> dict[str, torch.Tensor]:
        return {
            ia3_model.DISK_PREFIX + k: t.detach()
            for k, t in ia3_model.adapter_tensors(model, adapter_name).items()
        }

    @torch.no_grad()
    def load_adapter_state_dict(
        self, model: nn.Module, state_dict: dict[str, torch.Tensor], adapter_name: str = DEFAULT_ADAPTER_NAME
    ) -> None:
        params = {
            ia3_model.DISK_PREFIX + k: p for k, p in ia3_model.adapter_tensors(model, adapter_name).items()
        }
        missing = sorted(set(params) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(params))
        if missing or unexpected:
            raise AdapterError(
                f"IA3 checkpoint does not fit adapter {adapter_name!r}",
                [f"missing: {k}" for k in missing[:10]] + [f"unexpected: {k}" for k in unexpected[:10]],
            )
        wrong = [
            f"{k}: checkpoint {tuple(state_dict[k].shape)}, model {tuple(p.shape)}"
            for k, p in params.items()
            if state_dict[k].shape != p.shape
        ]
        if wrong:
            raise AdapterError(
                "IA3 checkpoint tensor shapes do not fit the model (feed-forward vectors are (1, in), others "
                "(out, 1): check feedforward_modules)",
                wrong[:10],
            )
        for key, param in params.items():
            param.copy_(state_dict[key])

    def _find_record(self, model: nn.Module, config: IA3Config) -> ia3_model.IA3Record:
        adapters = ia3_model.records(model)
        active = ia3_model.active_adapter(model)
        matches = [n for n, rec in adapters.items() if rec.config == config]
        if not matches:
            raise AdapterError("saved_config: this IA3 config belongs to no adapter injected into the model")
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
        targets = ia3_model.saved_target_modules(model, rec)
        saved: dict[str, Any] = {
            "peft_type": self.peft_type,
            "task_type": task_type,
            "base_model_name_or_path": base_model_name_or_path,
            "revision": None,
            "inference_mode": True,
            "target_modules": targets,
            "feedforward_modules": ia3_model.saved_feedforward_modules(rec, targets),
            "fan_in_fan_out": any(model.get_submodule(p).fan_in_fan_out for p in rec.targets),
            "modules_to_save": effective_modules_to_save(model, config),
            "init_ia3_weights": config.init_ia3_weights,
        }
        if config.exclude_modules is not None:
            saved["exclude_modules"] = config.exclude_modules
        return saved

    def config_from_saved(self, saved: dict[str, Any]) -> AdapterConfigBase:
        problems = [
            f"{key}={saved[key]!r} (allowed: {allowed[0]!r})"
            for key, allowed in _UNSUPPORTED_UNLESS.items()
            if key in saved and saved[key] not in allowed
        ]
        for key in ("target_modules", "feedforward_modules"):
            if saved.get(key) is None:
                problems.append(f"{key}=None (allowed: a list of module names or a regex)")
        if problems:
            raise AdapterError(
                "adapter_config.json uses IA3 features this framework does not support", problems
            )
        fields = {
            "target_modules": _listify(saved["target_modules"]),
            "feedforward_modules": _listify(saved["feedforward_modules"]),
            "exclude_modules": _listify(saved.get("exclude_modules")),
            "modules_to_save": saved.get("modules_to_save"),
            "init_ia3_weights": saved.get("init_ia3_weights", True),
        }
        try:
            return IA3Config(**fields)
        except pydantic.ValidationError as exc:
            raise AdapterError(
                "adapter_config.json has invalid IA3 values",
                [
                    f"{'.'.join(map(str, e['loc'])) or 'config'}={e.get('input')!r}: {e['msg']}"
                    for e in exc.errors()
                ],
            ) from exc

    # --- merge ----------------------------------------------------------------------------------
    def merge(
        self, model: nn.Module, adapter_name: str = DEFAULT_ADAPTER_NAME, *, exact: bool = False
    ) -> None:
        """W ⊙ l into the base weights. exact=True keeps the old weights so unmerge restores them bit for bit
        (plain unmerge divides by l, as peft, which is inexact where l is near 0)."""
        ia3_model.merge(model, adapter_name, exact=exact)

    def unmerge(self, model: nn.Module, adapter_name: str = DEFAULT_ADAPTER_NAME) -> None:
        ia3_model.unmerge(model, adapter_name)

    def unload(self, model: nn.Module) -> nn.Module:
        return ia3_model.unload(model)

    # --- multi-adapter --------------------------------------------------------------------------
    def set_active(self, model: nn.Module, adapter_name: str | None) -> None:
        ia3_model.set_active(model, adapter_name)

    def adapter_names(self, model: nn.Module) -> list[str]:
        return list(ia3_model.records(model))

    def active_adapter(self, model: nn.Module) -> str | None:
        return ia3_model.active_adapter(model)
