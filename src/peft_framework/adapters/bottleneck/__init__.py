"""Bottleneck adapter layers (Houlsby / Pfeiffer placements, sequential or parallel) for Llama-, GPT-2- and
BERT-style models. peft has no such type, so checkpoints use this framework's own format (same two files,
`peft_framework_type: bottleneck`; see docs/bottleneck_format.md). The adapter is non-linear and cannot be
merged into the base weights.
"""

from peft_framework.adapters.bottleneck.config import BottleneckConfig
from peft_framework.adapters.bottleneck.layer import BottleneckAdapter, BottleneckSublayer
from peft_framework.adapters.bottleneck.method import BottleneckMethod

__all__ = ["BottleneckAdapter", "BottleneckConfig", "BottleneckMethod", "BottleneckSublayer"]
