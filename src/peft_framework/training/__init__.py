"""Training stage: transformers' Trainer around an injected adapter (see `train`).

`train` is imported lazily, so importing this package does not import torch or transformers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from peft_framework.training.stage import train

__all__ = ["train"]


def __getattr__(name: str) -> Any:
    if name == "train":
        from peft_framework.training.stage import train

        return train
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
