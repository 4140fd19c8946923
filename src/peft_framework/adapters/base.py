"""The contract every adapter type implements (built-in or plug-in).

The registry maps `adapter.type` to an `AdapterMethod` subclass (usually of `adapters.method.WrapperMethod`,
which implements all but a type's own maths and names). The framework only talks to adapters
through this class: injection into a base model, the tensors and json that make up a checkpoint,
merge/unmerge where the maths allows it, and training hooks (callbacks, extra loss terms).

Several adapters can live on one model side by side under different `adapter_name`s; exactly one
(or none) is active at a time.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from torch import nn

from peft_framework.config.schema import AdapterConfigBase
from peft_framework.errors import AdapterError

DEFAULT_ADAPTER_NAME = "default"


class AdapterMethod(ABC):
    """One adapter type. Stateless: all state lives in the modules it injects into the model."""

    #: the `adapter.type` value
    name: ClassVar[str]
    #: pydantic model of this type's `adapter:` section (subclass of AdapterConfigBase, `type: Literal[name]`)
    config_class: ClassVar[type[AdapterConfigBase]]
    #: peft's `peft_type` ("LORA", "ADALORA", "IA3") when checkpoints are in HF peft format, else None
    peft_type: ClassVar[str | None] = None
    #: whether `merge` folds the adapter into the base weights
    mergeable: ClassVar[bool] = False
    #: one line for `peft-framework adapters`
    description: ClassVar[str] = ""
    #: whether some saved tensors may legitimately have a zero-size dimension (AdaLoRA modules pruned to rank 0)
    may_save_empty_tensors: ClassVar[bool] = False
    #: whether its layers wrap bitsandbytes 4-/8-bit linears (a quantized base: `model.quantization`)
    quantized_bases: ClassVar[bool] = False

    # --- building -------------------------------------------------------------------------------
    @abstractmethod
    def inject(
        self, model: nn.Module, config: AdapterConfigBase, adapter_name: str = DEFAULT_ADAPTER_NAME
    ) -> None:
        """Add the adapter to `model` in place, make it active, and freeze everything else.

        Raises AdapterError (listing the model's candidate module names) when targets match nothing.
        """

    # --- checkpoints ----------------------------------------------------------------------------
    @abstractmethod
    def adapter_state_dict(
        self, model: nn.Module, adapter_name: str = DEFAULT_ADAPTER_NAME
    ) -> dict[str, torch.Tensor]:
        """The adapter's tensors under their on-disk names (peft's keys for peft types)."""

    def validate_for_save(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Raise AdapterError when tensors cannot be a real adapter (e.g. LoRA A all zero after ZeRO-3)."""

    @abstractmethod
    def load_adapter_state_dict(
        self, model: nn.Module, state_dict: dict[str, torch.Tensor], adapter_name: str = DEFAULT_ADAPTER_NAME
    ) -> None:
        """Copy on-disk tensors into an adapter previously injected with the same config."""

    @abstractmethod
    def saved_config(
        self, config: AdapterConfigBase, *, model: nn.Module, adapter_name: str = DEFAULT_ADAPTER_NAME
    ) -> dict[str, Any]:
        """The type's keys of `adapter_config.json` for adapter `adapter_name` (peft's keys only, for peft
        types); `save_adapter` adds the common ones (peft_type or peft_framework_type, task_type,
        base_model_name_or_path, ...)."""

    @abstractmethod
    def config_from_saved(self, saved: dict[str, Any]) -> AdapterConfigBase:
        """Inverse of `saved_config`; also accepts configs written by HuggingFace peft for peft types."""

    # --- merge ----------------------------------------------------------------------------------
    def merge(
        self, model: nn.Module, adapter_name: str = DEFAULT_ADAPTER_NAME, *, exact: bool = False
    ) -> None:
        """Fold `adapter_name` into the base weights (it becomes the active adapter). With exact=True the
        pre-merge weights are kept so that unmerge restores them bit for bit (costs their memory)."""
        raise AdapterError(f"adapter type {self.name!r} cannot be merged into the base weights")

    def unmerge(self, model: nn.Module, adapter_name: str = DEFAULT_ADAPTER_NAME) -> None:
        raise AdapterError(f"adapter type {self.name!r} cannot be merged into the base weights")

    def unload(self, model: nn.Module) -> nn.Module:
        """Remove every adapter layer, returning the base modules (merged ones keep merged weights)."""
        raise AdapterError(f"adapter type {self.name!r} does not support unloading")

    # --- multi-adapter --------------------------------------------------------------------------
    @abstractmethod
    def set_active(self, model: nn.Module, adapter_name: str | None) -> None:
        """Route forward passes through `adapter_name` (None: no adapter, plain base model)."""

    @abstractmethod
    def adapter_names(self, model: nn.Module) -> list[str]:
        """The names of this type's adapters on `model`, in the order they were added."""

    @abstractmethod
    def active_adapter(self, model: nn.Module) -> str | None:
        """The adapter forward passes go through, or None (plain base model)."""

    # --- training hooks -------------------------------------------------------------------------
    def manifest_extra(self, config: AdapterConfigBase) -> dict[str, Any]:
        """What the train manifest records about this adapter beyond its type (e.g. a LoRA variant)."""
        return {}

    def training_callbacks(self, model: nn.Module, config: AdapterConfigBase, total_steps: int) -> list[Any]:
        """transformers TrainerCallbacks this type needs (e.g. AdaLoRA's rank allocator)."""
        return []

    def extra_loss(self, model: nn.Module) -> torch.Tensor | None:
        """A term added to the training loss (e.g. AdaLoRA's orthogonal regulariser), or None."""
        return None
