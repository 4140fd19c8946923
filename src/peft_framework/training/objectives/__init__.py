"""Training objectives: `train.objective` -> one module, the way `adapter.type` picks an adapter method.

The table (`config/objectives.py`) is light: config validation reads which `data.kind`s each objective
accepts from it. `get(name, train_config)` imports the objective's module and returns its `Objective` (see
`base.py` for the contract). A new objective (e.g. an online one such as GRPO, with a generation step) is one
module and one row in the table; the Trainer subclass and the stages stay as they are.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from peft_framework.config.objectives import OBJECTIVES, ObjectiveSpec, names, spec

if TYPE_CHECKING:
    from peft_framework.training.objectives.base import Objective

__all__ = ["OBJECTIVES", "ObjectiveSpec", "get", "names", "spec"]


def get(name: str, train_config: Any) -> Objective:
    """The objective `name` built from the `train` section (its settings: beta, ...)."""
    module, _, attr = OBJECTIVES[name].target.partition(":")
    return getattr(import_module(module), attr).from_config(train_config)
