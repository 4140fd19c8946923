"""Bottleneck adapter layers (Houlsby / Pfeiffer placements, sequential or parallel) for Llama-, GPT-2- and
BERT-style models. peft has no such type, so checkpoints use this framework's own format (same two files,
`peft_framework_type: bottleneck`; see docs/bottleneck_format.md). The adapter is non-linear and cannot be
merged into the base weights.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from peft_framework._lazy import lazy_exports

if TYPE_CHECKING:
    from peft_framework.adapters.bottleneck.config import BottleneckConfig
    from peft_framework.adapters.bottleneck.layer import BottleneckAdapter, BottleneckSublayer
    from peft_framework.adapters.bottleneck.method import BottleneckMethod

__all__ = ["BottleneckAdapter", "BottleneckConfig", "BottleneckMethod", "BottleneckSublayer"]

# Imported on first use: the config module alone (config validation) must not load torch.
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "BottleneckAdapter": "peft_framework.adapters.bottleneck.layer",
        "BottleneckConfig": "peft_framework.adapters.bottleneck.config",
        "BottleneckMethod": "peft_framework.adapters.bottleneck.method",
        "BottleneckSublayer": "peft_framework.adapters.bottleneck.layer",
    },
)
