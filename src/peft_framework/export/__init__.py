"""Export stage: merge the adapter into the base weights shard by shard and write a model directory
that plain transformers loads (see `peft_framework.export.stage`).

    from peft_framework.export import export
    summary = export(config, root=".")

Imported lazily, so `import peft_framework.export` does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from peft_framework.export.stage import export

__all__ = ["export"]


def __getattr__(name: str) -> Any:
    if name == "export":
        from peft_framework.export.stage import export

        return export
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
