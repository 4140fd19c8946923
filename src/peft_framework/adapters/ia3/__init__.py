"""(IA)³ (Liu et al. 2022): learned vectors that rescale keys, values and feed-forward activations, with
checkpoints in HuggingFace peft's format (peft_type IA3).

    method = IA3Method()
    method.inject(model, IA3Config())   # Llama: k_proj, v_proj (output side), down_proj (input side)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from peft_framework._lazy import lazy_exports

if TYPE_CHECKING:
    from peft_framework.adapters.ia3.config import IA3Config
    from peft_framework.adapters.ia3.layer import IA3Linear
    from peft_framework.adapters.ia3.method import IA3Method

__all__ = ["IA3Config", "IA3Linear", "IA3Method"]

# Imported on first use: the config module alone (config validation) must not load torch.
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "IA3Config": "peft_framework.adapters.ia3.config",
        "IA3Linear": "peft_framework.adapters.ia3.layer",
        "IA3Method": "peft_framework.adapters.ia3.method",
    },
)
