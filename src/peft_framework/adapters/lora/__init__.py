"""LoRA (Hu et al. 2021): our own layers, checkpoints in HuggingFace peft's format.

from peft_framework.adapters.lora import LoraConfig, LoraMethod
method = LoraMethod()
method.inject(model, LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from peft_framework._lazy import lazy_exports

if TYPE_CHECKING:
    from peft_framework.adapters.lora.combine import combine_adapters
    from peft_framework.adapters.lora.config import LoraConfig
    from peft_framework.adapters.lora.layer import LoraLinear
    from peft_framework.adapters.lora.method import LoraMethod
    from peft_framework.adapters.modules_to_save import ModulesToSave

__all__ = ["LoraConfig", "LoraLinear", "LoraMethod", "ModulesToSave", "combine_adapters"]

# Imported on first use: the config module alone (config validation) must not load torch.
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "LoraConfig": "peft_framework.adapters.lora.config",
        "LoraLinear": "peft_framework.adapters.lora.layer",
        "LoraMethod": "peft_framework.adapters.lora.method",
        "ModulesToSave": "peft_framework.adapters.modules_to_save",
        "combine_adapters": "peft_framework.adapters.lora.combine",
    },
)
