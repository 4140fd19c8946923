"""AdaLoRA (Zhang et al. 2023): SVD-form low-rank updates whose ranks are pruned during training by
importance, with checkpoints in HuggingFace peft's format (peft_type ADALORA).

    method = AdaLoraMethod()
    method.inject(model, AdaLoraConfig(init_r=12, target_r=4, target_modules=["q_proj", "v_proj"]))
    # training: the Trainer gets method.training_callbacks(...) (rank allocator) and adds
    # method.extra_loss(model) (orthogonal regulariser) to the loss; peft users call these by hand.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from peft_framework._lazy import lazy_exports

if TYPE_CHECKING:
    from peft_framework.adapters.adalora.config import AdaLoraConfig
    from peft_framework.adapters.adalora.layer import SVDLinear
    from peft_framework.adapters.adalora.method import AdaLoraMethod

__all__ = ["AdaLoraConfig", "AdaLoraMethod", "SVDLinear"]

# Imported on first use: the config module alone (config validation) must not load torch.
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "AdaLoraConfig": "peft_framework.adapters.adalora.config",
        "AdaLoraMethod": "peft_framework.adapters.adalora.method",
        "SVDLinear": "peft_framework.adapters.adalora.layer",
    },
)
