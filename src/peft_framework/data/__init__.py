"""Data stage: load, clean, validate, split, format and tokenize (see `prepare`).

`prepare` and `write_samples` are imported lazily: importing this package does not import datasets or
transformers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from peft_framework.data.samples import write_samples
    from peft_framework.data.stage import prepare

__all__ = ["prepare", "write_samples"]


def __getattr__(name: str) -> Any:
    if name == "prepare":
        from peft_framework.data.stage import prepare

        return prepare
    if name == "write_samples":
        from peft_framework.data.samples import write_samples

        return write_samples
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
